"""Two training workers on loopback (MultiWorkerMirroredStrategy from TF_CONFIG), as a user runs them from the
README: one is killed in the middle of an epoch, the other stops with a clear error, the relaunch resumes after the
last completed epoch and ends where an uninterrupted run ends.

Heavy: three two-worker trainings (minutes). ``.ci/run`` runs it after the quick suite: ``pytest -m heavy``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.heavy

EPOCHS = 4
TIMEOUT_S = 20


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _launch(tmp: Path, run_dir: Path, dataset_root: Path, ports: list[int], index: int) -> subprocess.Popen:
    """Worker ``index`` of the cluster, started with the README's command line."""
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, str(REPO / "stm32ai_main.py"), "operation_mode=training", f"dataset.root={dataset_root}",
            "training.model.input_shape=[64,64,3]", "training.model.dropout=0", f"training.epochs={EPOCHS}",
            "training.steps_per_epoch=12", "training.batch_size=16", "training.tensorboard=false",
            "training.lr_schedule.name=constant", "training.optimizer.learning_rate=0.004",
            "training.distribution.strategy=multi_worker", f"training.distribution.timeout_s={TIMEOUT_S}",
            "evaluation.max_images=40", f"mlflow.uri={tmp / 'mlruns'}", f"hydra.run.dir={run_dir}"]
    log = open(tmp / f"{run_dir.name}_worker{index}_{time.monotonic_ns()}.log", "w")
    return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)


def _run_cluster(tmp: Path, run_dir: Path, dataset_root: Path) -> list[int]:
    ports = _free_ports(2)
    workers = [_launch(tmp, run_dir, dataset_root, ports, i) for i in range(2)]
    return [w.wait(timeout=3600) for w in workers]


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "logs" / "training_log.csv") as handle:
        return list(csv.DictReader(handle))


def _epochs_done(run_dir: Path) -> int:
    state = run_dir / "backup" / "state.json"
    return json.loads(state.read_text())["epochs_done"] if state.exists() else 0


def test_a_killed_worker_and_the_relaunch(tmp_path, dataset_root):
    reference = tmp_path / "reference"
    assert _run_cluster(tmp_path, reference, dataset_root) == [0, 0]
    expected = json.loads((reference / "results.json").read_text())

    run_dir = tmp_path / "interrupted"
    ports = _free_ports(2)
    chief, worker = (_launch(tmp_path, run_dir, dataset_root, ports, i) for i in range(2))
    deadline = time.monotonic() + 1800
    while _epochs_done(run_dir) < 2 and time.monotonic() < deadline and chief.poll() is None:
        time.sleep(0.5)
    done_at_kill = _epochs_done(run_dir)
    assert done_at_kill == 2, "the chief never completed two epochs"
    time.sleep(3)  # into the third epoch
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    started = time.monotonic()
    assert chief.wait(timeout=TIMEOUT_S + 120) == 8  # ClusterError, within the heartbeat timeout (and some slack)
    waited = time.monotonic() - started
    log = (run_dir / "stm32ai_main.log").read_text()
    assert "a worker is gone or unreachable" in log and "Relaunch every worker with the same command" in log
    assert waited < TIMEOUT_S + 60, f"the chief took {waited:.0f} s to notice"
    lost = _epochs_done(run_dir)
    assert lost == done_at_kill  # nothing after the last completed epoch was kept, nothing before it lost
    assert not (run_dir / "results.json").exists()

    assert _run_cluster(tmp_path, run_dir, dataset_root) == [0, 0]
    log = (run_dir / "stm32ai_main.log").read_text()
    assert f"after epoch {done_at_kill} (restart state" in log
    rows = _rows(run_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(EPOCHS))  # every epoch once, the lost one trained again
    results = json.loads((run_dir / "results.json").read_text())
    assert results["training"]["epochs"] == expected["training"]["epochs"] == EPOCHS
    assert results["training"]["steps"] == expected["training"]["steps"]
    assert results["evaluation"]["miou"] == pytest.approx(expected["evaluation"]["miou"], abs=0.01)
    assert float(rows[-1]["val_miou"]) == pytest.approx(float(_rows(reference)[-1]["val_miou"]), abs=0.01)
    # The other worker wrote nothing into the run directory: every file there is one the chief writes.
    written = {p.relative_to(run_dir).parts[0].removesuffix(".sha256") for p in run_dir.rglob("*")}  # with sidecars
    assert written <= {"config.yaml", "stm32ai_main.log", "saved_models", "logs", "backup", "training_curves.png",
                       "evaluation_report.json", "evaluation_report.md", "confusion_matrix.png", "per_class_iou.png",
                       "results.json"}, written
