"""Run by tests/test_distribution.py in a fresh process: this machine's CPU split into two logical devices (which
TensorFlow allows only before it starts), then the checks that need them. Prints one JSON line of results.

    python tests/distributed_run.py <work dir> <dataset root>
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_training_config  # noqa: E402

DEVICES = ["/cpu:0", "/cpu:1"]


def split_cpu() -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def metric_over_replicas() -> dict:
    """Streaming mIoU and the loss mean updated on two replicas with different data, read across replicas."""
    from segzoo.training.metrics import StreamingMeanIoU

    strategy = tf.distribute.MirroredStrategy(DEVICES)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (2, 3, 16, 16)).astype(np.int32)
    labels[1, :, :4] = 255  # replica 1 also has ignored pixels
    logits = rng.normal(size=(2, 3, 16, 16, 4)).astype(np.float32)
    logits[0] += 4 * np.eye(4, dtype=np.float32)[labels[0]]  # replica 0 mostly right, replica 1 at chance
    with strategy.scope():
        metric = StreamingMeanIoU(4, 255)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: (tf.constant(labels[context.replica_id_in_sync_group]),
                         tf.constant(logits[context.replica_id_in_sync_group])))

    @tf.function
    def update(values):
        strategy.run(lambda y, p: metric.update_state(y, p), args=values)

    update(per_replica)
    local = [float(StreamingMeanIoU(4, 255)(labels[i], logits[i])) for i in range(2)]
    everything = StreamingMeanIoU(4, 255)
    everything.update_state(labels.reshape(6, 16, 16), logits.reshape(6, 16, 16, 4))
    return {"distributed": float(metric.result()), "single": float(everything.result()), "replica_only": local,
            "synchronization": str(metric.confusion.synchronization), "aggregation": str(metric.confusion.aggregation)}


def train(work: Path, dataset_root: Path, name: str, batch_size: int = 8, **distribution) -> dict:
    """A tiny training run under ``distribution``: its results, CSV rows and exit code."""
    from segzoo.cli import run

    cfg = tiny_training_config(work, dataset_root, epochs=2, steps_per_epoch=6, batch_size=batch_size,
                               distribution=distribution)
    cfg["training"]["model"]["dropout"] = 0.0
    # SGD: updates proportional to the gradients, so that the float rounding differences of two devices stay small
    # (Adam turns a near-zero gradient's rounding noise into a full-size step of either sign).
    cfg["training"]["optimizer"] = {"name": "sgd", "learning_rate": 0.005, "momentum": 0.9}
    cfg["mlflow"] = {"enabled": False}
    try:
        results = run(cfg, run_dir=work / name)
    except SystemExit as exc:
        return {"exit_code": exc.code}
    with open(work / name / "logs" / "training_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    return {"exit_code": 0, "training": results["training"], "rows": rows}


def main(work: str, dataset_root: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    split_cpu()
    work_dir, root = Path(work), Path(dataset_root)
    out = {"metric": metric_over_replicas(),
           "one_device": train(work_dir, root, "one_device", strategy="one_device", devices=["/cpu:0"]),
           "mirrored": train(work_dir, root, "mirrored", strategy="mirrored"),
           "indivisible": train(work_dir, root, "indivisible", batch_size=7, strategy="mirrored")}
    print("RESULTS " + json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:3])
