"""Who this process is in a training cluster, read from the environment alone (no TensorFlow).

``TF_CONFIG`` (the ``tf.distribute`` convention) or Slurm's variables (``SLURM_PROCID`` under a multi-task
``srun``) name a task; the chief is task ``chief`` 0 when the cluster has one, else ``worker`` 0 (Slurm: process 0).
Every other task is a non-chief worker: it trains, and writes nothing into the run directory. The entry point asks
this before Hydra creates any file, so that a non-chief worker's Hydra log goes to a temporary folder instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

from segzoo.errors import ConfigError


@dataclass(frozen=True)
class ClusterRole:
    """This process's place in the cluster its environment describes (one chief task without one)."""

    source: str | None
    """``TF_CONFIG``, ``SLURM`` or None (no cluster in the environment)."""
    task_type: str = "worker"
    task_index: int = 0
    num_tasks: int = 1
    is_chief: bool = True

    def describe(self) -> str:
        """``worker 1 of 2 (TF_CONFIG)``."""
        return f"{self.task_type} {self.task_index} of {self.num_tasks} ({self.source or 'no cluster'})"


def _tf_config_role(text: str) -> ClusterRole:
    try:
        spec = json.loads(text)
        cluster, task = spec.get("cluster") or {}, spec.get("task") or {}
        task_type, task_index = str(task["type"]), int(task["index"])
        jobs = {name: list(addresses) for name, addresses in cluster.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"TF_CONFIG: not a cluster description ({exc}); expected "
                          '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}') \
            from None
    if task_type not in jobs or not 0 <= task_index < len(jobs[task_type]):
        raise ConfigError(f"TF_CONFIG: task {task_type} {task_index} is not in its cluster "
                          f"({', '.join(f'{k}: {len(v)}' for k, v in jobs.items()) or 'empty'})")
    chief_type = "chief" if jobs.get("chief") else "worker"
    num_tasks = len(jobs.get("chief", [])) + len(jobs.get("worker", []))
    return ClusterRole("TF_CONFIG", task_type, task_index, num_tasks,
                       is_chief=task_type == chief_type and task_index == 0)


def _slurm_role(env: Mapping[str, str]) -> ClusterRole | None:
    tasks = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS")
    if "SLURM_PROCID" not in env or not tasks or int(tasks) < 2:
        return None
    index = int(env["SLURM_PROCID"])
    return ClusterRole("SLURM", "worker", index, int(tasks), is_chief=index == 0)


def cluster_role(env: Mapping[str, str] | None = None) -> ClusterRole:
    """This process's role from ``TF_CONFIG``, else from a multi-task Slurm step, else a lone chief."""
    env = os.environ if env is None else env
    if env.get("TF_CONFIG", "").strip():
        return _tf_config_role(env["TF_CONFIG"])
    return _slurm_role(env) or ClusterRole(None)


def check_role(role: ClusterRole, strategy: str, cluster_resolver: str) -> None:
    """A cluster in the environment needs the multi_worker strategy with the matching resolver, and back."""
    if role.num_tasks > 1 and strategy != "multi_worker":
        raise ConfigError(f"training.distribution.strategy: {role.source} describes a cluster of {role.num_tasks} "
                          f"tasks (this one: {role.describe()}) but the strategy is {strategy!r}: set "
                          "training.distribution.strategy=multi_worker, or run without "
                          f"{'TF_CONFIG' if role.source == 'TF_CONFIG' else 'a multi-task srun'}")
    wanted = {"TF_CONFIG": "tf_config", "SLURM": "slurm"}.get(role.source or "")
    if strategy == "multi_worker" and wanted and wanted != cluster_resolver and role.num_tasks > 1:
        raise ConfigError(f"training.distribution.cluster_resolver: {cluster_resolver!r}, but this process's "
                          f"cluster comes from {role.source} ({role.describe()}): set it to {wanted!r}")
