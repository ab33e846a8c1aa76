"""Cost of the final full-resolution bilinear upsampling: the same DeepLabV3 with and without it.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_upsampling.py [--size 512] [--alpha 0.5] [--aspp v1 none] [--rounds 10]
                                               [--block 5] [--threads N]

For each ASPP variant, two int8 per-tensor models (uint8 input, float output) of the same DeepLabV3 (registry,
random weights and BatchNorm statistics, calibrated on real CamVid images): ``upsample=True`` ends with the
bilinear upsampling to the input size (output ``[1,H,W,K]``), ``upsample=False`` ends at the 1/16 logits
(output ``[1,H/16,W/16,K]``; segzoo's evaluation and prediction upsample on the host with
``preprocess.restore_logits``). Printed per variant:

- host latency medians of both models, measured interleaved in this process, and their ratio;
- the host cost of the upsampling done outside the model (``restore_logits`` of the small float logits to the
  input size, OpenCV bilinear), so "model without upsampling + host restore" can be compared with "model with
  upsampling";
- the STM32MP257 estimate (``estimate_stm32mp2``) of both models: latency, the NPU/GPU shares, the time of the
  ops the upsampled model has in addition, and the board CPU time of the restore estimated with the (not
  calibrated) CPU elementwise rate of ``stm32mp2.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_host import build_random, interleaved  # noqa: E402
from bench_quantization import load_images, representative  # noqa: E402

from segzoo.benchmarking.estimate import estimate_stm32mp2, load_rules, unit_rates  # noqa: E402
from segzoo.benchmarking.host import HostModel, latency_stats  # noqa: E402


def convert_variant(size: int, alpha: float, aspp: str, upsample: bool, pixels: np.ndarray, out: Path) -> Path:
    from segzoo.quantization.converter import convert

    model = build_random(size, alpha, aspp, upsample=upsample)
    name = f"deeplab_a{alpha}_{aspp}_{size}_{'up' if upsample else 'noup'}_int8_pt.tflite"
    return convert(model, representative(pixels), out / name, granularity="per_tensor")


def host_restore_ms(logits_hw: tuple[int, int], classes: int, size: int, repeats: int = 50) -> dict:
    """Latency of ``restore_logits`` (small float logits -> input size, bilinear) on this host."""
    import time

    from segzoo.preprocess import restore_logits
    from segzoo.runners import identity_placement

    placement = identity_placement((size, size))
    logits = np.random.default_rng(0).normal(size=(*logits_hw, classes)).astype(np.float32)
    times = []
    for _ in range(repeats + 3):
        start = time.perf_counter_ns()
        restore_logits(logits, placement)
        times.append((time.perf_counter_ns() - start) / 1e6)
    return latency_stats(times[3:])


def board_restore_ms(size: int, classes: int) -> float:
    """The restore on the board's Cortex-A35 with the CPU elementwise rate of stm32mp2.json (an assumption)."""
    rate = unit_rates(load_rules())["CPU"]["elementwise_rate"]
    return 1e3 * size * size * classes / rate


def tail(estimate: dict) -> tuple[float, str]:
    """Estimated time (ops + transfers) of the ops after the logits convolution (the last CONV_2D), described."""
    last_conv = max(i for i, op in enumerate(estimate["ops"]) if op["name"] == "CONV_2D")
    ops = estimate["ops"][last_conv + 1:]
    text = ", ".join(f"{op['name']} on {op['unit']} {op['time_ms'] + op['transfer_ms']:.2f} ms" for op in ops)
    return sum(op["time_ms"] + op["transfer_ms"] for op in ops), text


def study(args: argparse.Namespace, aspp: str, pixels: np.ndarray, out: Path) -> None:
    up = convert_variant(args.size, args.alpha, aspp, True, pixels, out)
    no = convert_variant(args.size, args.alpha, aspp, False, pixels, out)
    threads = args.threads or os.cpu_count()
    models = {"with upsampling": HostModel(up, threads), "without": HostModel(no, threads)}
    stats = interleaved(models, args.rounds, args.block)
    est_up, est_no = estimate_stm32mp2(up), estimate_stm32mp2(no)
    out_hw = _output_hw(no)
    restore = host_restore_ms(out_hw, 21, args.size)
    print(f"\n== DeepLabV3 a{args.alpha} ASPP {aspp} {args.size}x{args.size}, int8 per-tensor, {threads} threads ==")
    for name, s in stats.items():
        print(f"  host {name:16s} median {s['median_ms']:8.2f} ms  p90 {s['p90_ms']:8.2f}  "
              f"spread {s['repeat_spread_pct']:5.1f}%")
    with_ms, without_ms = stats["with upsampling"]["median_ms"], stats["without"]["median_ms"]
    print(f"  host with / without: x{with_ms / without_ms:.2f} "
          f"({with_ms - without_ms:.2f} ms per image inside the model)")
    print(f"  host restore_logits {out_hw[0]}x{out_hw[1]}x21 -> {args.size}x{args.size}: median "
          f"{restore['median_ms']:.2f} ms (p90 {restore['p90_ms']:.2f}); without + restore = "
          f"{without_ms + restore['median_ms']:.2f} ms vs with {with_ms:.2f} ms")
    print(f"  STM32MP257 estimate with:    {est_up['latency_ms']:8.1f} ms  NPU {est_up['npu_pct']:.1f}% GPU "
          f"{est_up['gpu_pct']:.1f}% (transfers {est_up['transfer_ms']:.2f} ms)")
    print(f"  STM32MP257 estimate without: {est_no['latency_ms']:8.1f} ms  NPU {est_no['npu_pct']:.1f}% GPU "
          f"{est_no['gpu_pct']:.1f}% (transfers {est_no['transfer_ms']:.2f} ms)")
    print(f"  estimate with / without: x{est_up['latency_ms'] / est_no['latency_ms']:.2f}, gain "
          f"{est_up['latency_ms'] - est_no['latency_ms']:.1f} ms")
    for label, estimate in (("with", est_up), ("without", est_no)):
        ms, text = tail(estimate)
        print(f"    after the logits conv, {label}: {text} ({ms:.2f} ms)")
    board = board_restore_ms(args.size, 21)
    print(f"  restore on the board CPU (CPU elementwise rate of stm32mp2.json, not calibrated): {board:.1f} ms -> "
          f"net gain on the board {est_up['latency_ms'] - est_no['latency_ms'] - board:.1f} ms if the app needs "
          f"full-resolution logits")


def _output_hw(path: Path) -> tuple[int, int]:
    from segzoo.litert.inspect import inspect_tflite

    shape = inspect_tflite(path)["output"]["shape"]
    return int(shape[1]), int(shape[2])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--aspp", nargs="+", default=["v1", "none"])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--images", type=int, default=16, help="calibration images")
    args = parser.parse_args()
    pixels, source = load_images(args.images, args.size)
    print(f"calibration: {len(pixels)} images ({source})")
    out = Path(tempfile.mkdtemp(prefix="segzoo_bench_upsampling_"))
    for aspp in args.aspp:
        study(args, aspp, pixels, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
