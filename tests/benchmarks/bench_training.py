"""Training throughput (images/second) of segzoo's training loop: one_device against mirrored (two logical CPU
devices, or every GPU), with and without XLA, float32 against mixed precision, side by side in one process.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_training.py [--size 128] [--alpha 0.35] [--batch 16] [--steps 10] [--rounds 5]
                                              [--variants one_device,mirrored] [--xla both] [--precision float32,...]
                                              [--batch-norm fused,keras]

Every variant is the default run's network (DeepLabV3 from the registry, random weights) in a ``Trainer`` trained
by ``segzoo.training.loop.TrainingLoop`` under its strategy, on one fixed batch per replica (the input pipeline is
left out: this measures the step). Variants are built first (tracing and XLA compilation are not timed, but printed),
then timed in alternating blocks of ``--steps`` steps for ``--rounds`` rounds, so that all of them see the same
machine load; the table gives the median images/second of the rounds and the ratio to the first variant. Run it on
a quiet machine and say the load (printed) when you quote it. ``--batch-norm`` compares TensorFlow's fused
BatchNormalization kernel (what training uses, ``segzoo.training.batch_norm``) with Keras's own element-wise ops.

On a CPU, ``mixed_float16`` and ``mixed_bfloat16`` run with TensorFlow's CPU kernels: whether they help depends on
the processor (bfloat16 matrix units such as AMX); the table reports what this machine does. On CPU without GPUs,
``mirrored`` splits the CPU into two logical devices that share the same cores: it measures the cost of the
distribution machinery, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


def split_cpu() -> None:
    """Two logical CPU devices (before TensorFlow starts) when there is no GPU to mirror over."""
    if not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def distribution(name: str):
    from segzoo.config.schema import DistributionConfig
    from segzoo.training.distribution import make_distribution

    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    devices = (gpus[:1] or cpus[:1]) if name == "one_device" else (gpus or cpus)
    return make_distribution(DistributionConfig(strategy=name, devices=devices))


class Variant:
    """One configuration, built and traced, ready to run blocks of steps."""

    def __init__(self, strategy: str, xla: bool, precision: str, batch_norm: str, args: argparse.Namespace) -> None:
        import keras

        from segzoo.models.deeplab_v3.model import build_deeplabv3
        from segzoo.training.backup import build_trainer
        from segzoo.training.batch_norm import use_fused_kernel
        from segzoo.training.loop import TrainingLoop
        from segzoo.training.precision import with_precision, wrap_optimizer
        from segzoo.training.trainer import Trainer, default_loss_terms

        self.name = f"{strategy} {'XLA' if xla else 'no XLA'} {precision} {batch_norm} BN"
        self.batch = args.batch
        dist = distribution(strategy)
        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (args.batch, args.size, args.size, 3)).astype(np.float32)
        labels = rng.integers(0, 5, (args.batch, args.size, args.size)).astype(np.int32)
        with dist.strategy.scope():
            network = with_precision(build_deeplabv3((args.size, args.size, 3), 5, alpha=args.alpha, aspp="v2"),
                                     precision)
            if batch_norm == "fused":
                use_fused_kernel(network)
            trainer = Trainer(network, default_loss_terms(5, 255, None), 5, 255)
            trainer.optimizer = wrap_optimizer(keras.optimizers.Adam(1e-3), precision)
            build_trainer(trainer)
        per_replica = args.batch // dist.num_replicas
        data = tf.data.Dataset.from_tensors((images[:per_replica], labels[:per_replica])).repeat()
        self.iterator = iter(dist.strategy.distribute_datasets_from_function(lambda _: data))
        self.loop = TrainingLoop(trainer, dist, jit_compile=xla, steps_per_execution=args.steps)
        start = time.perf_counter()
        self.run(2)
        self.build_s = time.perf_counter() - start

    def run(self, steps: int) -> tuple[float, float]:
        """Wall and process CPU seconds for ``steps`` steps."""
        start, cpu = time.perf_counter(), time.process_time()
        self.loop._train_steps(self.iterator, tf.constant(steps, tf.int64))
        float(self.loop.trainer.loss_tracker.result())  # wait for the steps
        return time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.35)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default="one_device,mirrored")
    parser.add_argument("--xla", choices=("off", "on", "both"), default="both")
    parser.add_argument("--precision", default="float32,mixed_bfloat16,mixed_float16")
    parser.add_argument("--batch-norm", default="fused,keras", help="fused (what training uses), keras or both")
    args = parser.parse_args()
    split_cpu()
    xla = {"off": [False], "on": [True], "both": [False, True]}[args.xla]
    variants = []
    for strategy in args.variants.split(","):
        for jit in xla:
            for precision in args.precision.split(","):
                for batch_norm in args.batch_norm.split(","):
                    try:
                        variant = Variant(strategy, jit, precision, batch_norm, args)
                    except Exception as exc:  # noqa: BLE001 - a combination this machine or TensorFlow cannot run
                        print(f"{strategy} {'XLA' if jit else 'no XLA'} {precision} {batch_norm} BN: not available "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]})", flush=True)
                        continue
                    print(f"{variant.name}: built and traced in {variant.build_s:.1f} s", flush=True)
                    variants.append(variant)
    rates: dict[str, list[float]] = {v.name: [] for v in variants}
    cpu_rates: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(args.rounds):
        for variant in variants if r % 2 == 0 else variants[::-1]:
            wall, cpu = variant.run(args.steps)
            rates[variant.name].append(args.steps * variant.batch / wall)
            cpu_rates[variant.name].append(args.steps * variant.batch / max(cpu, 1e-9))
        print(f"round {r + 1}/{args.rounds}: load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"\n{'variant':<44} {'images/s (median)':>18} {'min..max':>16} {'vs first':>9} {'images/CPU-s':>13}")
    base = statistics.median(rates[variants[0].name]) if variants else 1.0
    for variant in variants:
        values = rates[variant.name]
        median = statistics.median(values)
        print(f"{variant.name:<44} {median:>18.1f} {min(values):>7.1f}..{max(values):<8.1f} {median / base:>8.2f}x "
              f"{statistics.median(cpu_rates[variant.name]):>13.1f}")
    print(f"\ndevices: {[d.name for d in tf.config.list_logical_devices()]}; load average {os.getloadavg()}; "
          f"{os.cpu_count()} CPUs; batch {args.batch} at {args.size}x{args.size}, alpha {args.alpha}")


if __name__ == "__main__":
    main()
