"""Training under tf.distribute: configuration, cluster roles, index sharding, the mirrored strategy on two logical
CPU devices against one device, metrics across replicas, and a cluster whose worker never comes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, tiny_training_config

CHECKS = Path(__file__).parent / "distributed_run.py"


def _config(**distribution) -> dict:
    raw = yaml.safe_load((REPO / "user_config.yaml").read_text())
    raw.pop("hydra", None)
    raw["training"]["distribution"] = distribution
    return raw


@pytest.mark.parametrize(("distribution", "message"), [
    ({"strategy": "mirored"}, "training.distribution.strategy: bad value 'mirored'.*did you mean mirrored"),
    ({"strategy": "mirrored", "devices": ["/cpu:0", "/cpu:1", "/cpu:2"]},
     "training.batch_size: 16 does not split evenly over the 3 devices"),
    ({"strategy": "multi_worker", "devices": ["/gpu:0"]}, "training.distribution.devices: only used by"),
    ({"strategy": "one_device", "devices": ["/gpu:0", "/gpu:1"]}, "one_device takes one device"),
    ({"timeout_s": 0}, "training.distribution.timeout_s: must be greater than 0"),
    ({"lr_scaling": "sqrt"}, "training.distribution.lr_scaling: bad value 'sqrt'"),
])
def test_bad_distribution_settings_are_config_errors(distribution, message):
    from segzoo.config import load_config
    from segzoo.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(_config(**distribution))


def test_cluster_roles_from_tf_config_and_slurm():
    from segzoo.errors import ConfigError
    from segzoo.training.cluster import check_role, cluster_role

    workers = {"cluster": {"worker": ["a:1", "b:2", "c:3"]}}
    assert cluster_role({"TF_CONFIG": json.dumps({**workers, "task": {"type": "worker", "index": 0}})}).is_chief
    second = cluster_role({"TF_CONFIG": json.dumps({**workers, "task": {"type": "worker", "index": 2}})})
    assert not second.is_chief and second.num_tasks == 3 and second.describe() == "worker 2 of 3 (TF_CONFIG)"
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:2"]}}
    assert not cluster_role({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "worker", "index": 0}})}).is_chief
    assert cluster_role({"TF_CONFIG": json.dumps({**with_chief, "task": {"type": "chief", "index": 0}})}).is_chief
    assert not cluster_role({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}).is_chief
    assert cluster_role({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}).source is None  # one task: no cluster
    with pytest.raises(ConfigError, match="TF_CONFIG: task worker 5 is not in its cluster"):
        cluster_role({"TF_CONFIG": json.dumps({**workers, "task": {"type": "worker", "index": 5}})})
    with pytest.raises(ConfigError, match="TF_CONFIG: not a cluster description"):
        cluster_role({"TF_CONFIG": "{not json"})
    with pytest.raises(ConfigError, match="strategy=multi_worker"):
        check_role(second, "auto", "tf_config")
    with pytest.raises(ConfigError, match="cluster_resolver: 'slurm'.*set it to 'tf_config'"):
        check_role(second, "multi_worker", "slurm")


def test_a_non_chief_worker_gets_a_temporary_hydra_run_dir(monkeypatch, tmp_path):
    from segzoo.cli import preflight

    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    args = preflight(["main.py", f"hydra.run.dir={tmp_path / 'run'}", "training.epochs=2"])
    run_dirs = [a for a in args if a.startswith("hydra.run.dir=")]
    assert len(run_dirs) == 1 and str(tmp_path) not in run_dirs[0] and "segzoo_worker1_" in run_dirs[0]
    Path(run_dirs[0].split("=", 1)[1]).rmdir()
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                "task": {"type": "worker", "index": 0}}))
    assert f"hydra.run.dir={tmp_path / 'run'}" in preflight(["main.py", f"hydra.run.dir={tmp_path / 'run'}"])


@pytest.mark.parametrize("pipelines", [1, 2, 3])
def test_index_shards_cover_each_epoch_once(pipelines):
    from segzoo.data.sharding import Shard, training_indices

    samples, global_batch, per_pass = 50, 12, 4  # 48 of 50 used per epoch (remainder dropped)
    streams = [list(training_indices(samples, global_batch, seed=3, shard=Shard(i, pipelines)).take(per_pass * 2 *
                                                                                                  global_batch // pipelines))
               for i in range(pipelines)]
    part = global_batch // pipelines
    for epoch in range(2):
        seen = []
        for step in range(per_pass):
            # tf.distribute orders replicas worker by worker: pipeline i holds part i of each global batch
            batch = [int(index) for i in range(pipelines)
                     for _, index in streams[i][(epoch * per_pass + step) * part:(epoch * per_pass + step + 1) * part]]
            assert len(batch) == global_batch
            seen += batch
        assert len(seen) == len(set(seen)) == 48, "a sample was seen twice in one epoch"
        assert {int(e) for s in streams for e, _ in s[epoch * per_pass * part:(epoch + 1) * per_pass * part]} == {epoch}
    firsts = [sorted(int(i) for s in streams for _, i in s[e * per_pass * part:(e + 1) * per_pass * part])
              for e in range(2)]
    assert firsts[0] != [int(i) for s in streams for _, i in s[per_pass * part:2 * per_pass * part]]  # reshuffled


def test_training_stream_resumes_where_it_stopped_and_shards_disjoint(dataset_root):
    from segzoo.data.augment import build_augmenter
    from segzoo.data.augment_spec import validate_augmentations
    from segzoo.data.masks import ClassMapper
    from segzoo.data.pipeline import sharded_options, training_dataset
    from segzoo.data.sharding import Shard
    from segzoo.data.synthetic import ensure_synthetic_dataset
    from segzoo.data.layouts import list_samples
    from segzoo.preprocess import Preprocessing
    import tensorflow as tf

    root = ensure_synthetic_dataset(dataset_root)
    samples = list_samples(root / "JPEGImages", root / "SegmentationClass",
                           root / "ImageSets" / "Segmentation" / "val.txt")[:20]
    augment = build_augmenter(validate_augmentations({"random_flip": None, "random_rotation": {"factor": 0.1}}), 255)
    common = {"mapper": ClassMapper(5, 255), "input_hw": (32, 32), "pp": Preprocessing(), "global_batch": 8,
              "seed": 5, "augment": augment}
    whole = [(x.numpy(), y.numpy()) for x, y in training_dataset(samples, **common).take(6)]
    resumed = [(x.numpy(), y.numpy()) for x, y in training_dataset(samples, start_batch=4, **common).take(2)]
    for (x1, y1), (x2, y2) in zip(whole[4:], resumed):  # the same samples, the same augmentations
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    halves = [[(x.numpy(), y.numpy()) for x, y in training_dataset(samples, shard=Shard(i, 2), replica_batch=4,
                                                                   **common).take(2)] for i in range(2)]
    for step in range(2):  # worker 0's part then worker 1's part make the global batch
        np.testing.assert_array_equal(np.concatenate([halves[0][step][0], halves[1][step][0]]), whole[step][0])
    options = training_dataset(samples, **common).options()
    assert options.experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF
    assert sharded_options().experimental_distribute.auto_shard_policy == tf.data.experimental.AutoShardPolicy.OFF


@pytest.mark.heavy
def test_mirrored_over_two_cpu_devices_matches_one_device(tmp_path, dataset_root):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(CHECKS), str(tmp_path), str(dataset_root)], capture_output=True,
                          text=True, env=env, timeout=1200)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    out = json.loads(lines[-1].removeprefix("RESULTS "))
    metric = out["metric"]  # the confusion matrix is summed over replicas when read
    assert metric["distributed"] == pytest.approx(metric["single"], abs=1e-6)
    assert all(abs(local - metric["single"]) > 1e-3 for local in metric["replica_only"])
    assert "ON_READ" in metric["synchronization"].upper() and "SUM" in metric["aggregation"].upper()
    one, mirrored = out["one_device"], out["mirrored"]
    assert one["exit_code"] == 0 and mirrored["exit_code"] == 0
    assert one["training"]["steps"] == mirrored["training"]["steps"] == 12
    assert len(one["rows"]) == len(mirrored["rows"]) == 2
    loss_one, loss_mirrored = float(one["rows"][-1]["loss"]), float(mirrored["rows"][-1]["loss"])
    assert loss_mirrored == pytest.approx(loss_one, rel=0.02)
    assert "mirrored strategy: 2 replica(s); global batch 8, 4 per replica" in done.stderr
    assert out["indivisible"]["exit_code"] == 2
    assert "training.batch_size: 7 does not split evenly over the 2 replicas" in done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.heavy
def test_a_worker_that_never_comes_is_a_clear_error_within_a_minute(tmp_path, dataset_root):
    ports = [_free_port(), _free_port()]
    tf_config = {"cluster": {"worker": [f"localhost:{p}" for p in ports]}, "task": {"type": "worker", "index": 0}}
    env = {**os.environ, "TF_CONFIG": json.dumps(tf_config),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    run_dir = tmp_path / "run"
    args = [sys.executable, str(REPO / "stm32ai_main.py"), "operation_mode=training", f"dataset.root={dataset_root}",
            "training.model.input_shape=[64,64,3]", "training.distribution.strategy=multi_worker",
            f"mlflow.uri={tmp_path / 'mlruns'}", f"hydra.run.dir={run_dir}"]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    log = (run_dir / "stm32ai_main.log").read_text()
    assert done.returncode == 8, done.stderr[-3000:]
    assert "the training cluster did not form within training.distribution.connect_timeout_s (30 s)" in log
    assert f"localhost:{ports[1]}" in log and "worker 0 of 2 (TF_CONFIG)" in log
    # Timed from the moment the worker starts joining (the start of Python and TensorFlow excluded: on a busy
    # machine they alone can take a minute).
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in log.splitlines()
              if line.startswith("[20") and ("Joining the training cluster" in line or "ERROR" in line)]
    assert len(stamps) == 2 and (stamps[1] - stamps[0]).total_seconds() < 60, log


def test_xla_over_several_cpu_replicas_is_a_clear_error_and_one_replica_or_gpus_pass():
    from types import SimpleNamespace

    from segzoo.errors import ConfigError
    from segzoo.training.distribution import check_jit_compile

    two_cpu = SimpleNamespace(num_replicas=2, name="mirrored")
    with pytest.raises(ConfigError, match=r"training.jit_compile: true cannot train 2 replicas on CPU devices"):
        check_jit_compile(two_cpu, True, gpus=[])
    check_jit_compile(two_cpu, False, gpus=[])
    check_jit_compile(two_cpu, True, gpus=["/device:GPU:0", "/device:GPU:1"])
    check_jit_compile(SimpleNamespace(num_replicas=1, name="one_device"), True, gpus=[])
