"""``training.distribution``: the ``tf.distribute`` strategy a run trains under, and what follows from it
(replicas, per-replica batch, learning-rate scaling, which process is the chief).

Strategies are built by name from :data:`STRATEGIES`; ``auto`` picks ``mirrored`` over every local GPU when there
are several, else ``one_device``. ``multi_worker`` is TensorFlow's ``MultiWorkerMirroredStrategy``: its cluster
comes from ``TF_CONFIG`` or Slurm. TensorFlow's coordination service watches the workers' heartbeats: when one
stops for ``training.distribution.timeout_s``, every other worker's collectives fail, so that a worker whose peers
are gone stops with an error instead of waiting forever; a slow worker (the chief writing checkpoints) is not an
error. ``connect_timeout_s`` bounds how long workers wait for each other at startup.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import tensorflow as tf

from segzoo.config.schema import DistributionConfig
from segzoo.errors import ClusterError, ConfigError
from segzoo.training.cluster import ClusterRole, check_role, cluster_role

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distribution:
    """A built strategy and the facts the training loop needs about it."""

    strategy: tf.distribute.Strategy
    name: str
    num_workers: int = 1
    worker_index: int = 0
    is_chief: bool = True

    @property
    def num_replicas(self) -> int:
        """Replicas in sync across all workers."""
        return int(self.strategy.num_replicas_in_sync)

    @property
    def local_replicas(self) -> int:
        """Replicas of this worker."""
        return self.num_replicas // self.num_workers

    def replica_batch(self, global_batch: int) -> int:
        """``global_batch / replicas``, or a ConfigError when it does not divide evenly."""
        if global_batch % self.num_replicas:
            raise ConfigError(f"training.batch_size: {global_batch} does not split evenly over the "
                              f"{self.num_replicas} replicas of the {self.name} strategy; use a multiple of "
                              f"{self.num_replicas} (it is the global batch, shared by all replicas)")
        return global_batch // self.num_replicas

    def describe(self, global_batch: int) -> str:
        """One log line: strategy, replicas, workers, batches."""
        workers = f", worker {self.worker_index} of {self.num_workers}" if self.num_workers > 1 else ""
        return (f"{self.name} strategy: {self.num_replicas} replica(s){workers}; global batch {global_batch}, "
                f"{self.replica_batch(global_batch)} per replica")


def scaled_learning_rate(cfg: DistributionConfig, learning_rate: float, num_replicas: int) -> float:
    """The base learning rate after ``lr_scaling``: as given (``none``) or times the replicas (``linear``)."""
    return learning_rate * num_replicas if cfg.lr_scaling == "linear" else learning_rate


def _gpus() -> list[str]:
    return [device.name for device in tf.config.list_logical_devices("GPU")]


def check_jit_compile(dist: Distribution, jit_compile: bool, gpus: Sequence[str] | None = None) -> None:
    """Refuse XLA over several CPU replicas before training: TensorFlow's XLA has no CPU cross-replica collectives
    (the step fails with InvalidArgumentError), so say what to change instead."""
    gpus = _gpus() if gpus is None else gpus
    if jit_compile and dist.num_replicas > 1 and not gpus:
        raise ConfigError(f"training.jit_compile: true cannot train {dist.num_replicas} replicas on CPU devices "
                          f"({dist.name} strategy): TensorFlow's XLA has no cross-replica collectives on CPU. "
                          "Set training.jit_compile=false, or use one device or GPUs")


def _device_key(name: str) -> tuple[str, int]:
    spec = tf.DeviceSpec.from_string(name)
    return (spec.device_type or "").upper(), int(spec.device_index or 0)


def _local_devices(cfg: DistributionConfig) -> list[str]:
    """The listed devices (each must exist here), else every GPU, else every logical CPU device."""
    available = {_device_key(d.name): d.name for d in tf.config.list_logical_devices()}
    if not cfg.devices:
        return _gpus() or [d.name for d in tf.config.list_logical_devices("CPU")]
    missing = [d for d in cfg.devices if _device_key(d) not in available]
    if missing:
        raise ConfigError(f"training.distribution.devices: {', '.join(map(repr, missing))} not found on this "
                          f"machine (its devices: {', '.join(available.values())})")
    return [available[_device_key(d)] for d in cfg.devices]


def _one_device(cfg: DistributionConfig, role: ClusterRole) -> Distribution:
    if len(cfg.devices) > 1:
        raise ConfigError(f"training.distribution.devices: one_device takes one device, got {cfg.devices}")
    device = _local_devices(cfg)[0] if cfg.devices else (_gpus() or ["/cpu:0"])[0]
    return Distribution(tf.distribute.OneDeviceStrategy(device), "one_device")


def _mirrored(cfg: DistributionConfig, role: ClusterRole) -> Distribution:
    return Distribution(tf.distribute.MirroredStrategy(_local_devices(cfg)), "mirrored")


def _resolver(cfg: DistributionConfig) -> Any:
    if cfg.cluster_resolver == "slurm":
        return tf.distribute.cluster_resolver.SlurmClusterResolver(port_base=cfg.port)
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _configure_coordination(resolver: Any, cfg: DistributionConfig) -> None:
    """TensorFlow's coordination service with our timeouts (MultiWorkerMirroredStrategy keeps one set before it).

    Workers wait for each other at startup for ``connect_timeout_s`` (a registration barrier: without it the chief
    waits forever for a worker that never comes); a worker that stops sending heartbeats for ``timeout_s`` fails
    every other worker's collectives (collectives themselves have no timeout: a slow peer is not a lost one). Workers
    leave one by one (no shutdown barrier) and the periodic health check is off: with either, a worker that finished
    training and left while the chief goes on with evaluation is reported as a crash.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    cluster = multi_worker_util.normalize_cluster_spec(resolver.cluster_spec())
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
            for job in ("chief", "worker") if job in cluster.jobs]
    eager = context.context()
    eager.configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        enable_health_check=False, cluster_register_timeout_in_ms=int(cfg.connect_timeout_s * 1000),
        heartbeat_timeout_in_ms=int(cfg.timeout_s * 1000), shutdown_barrier_timeout_in_ms=0,
        coordinated_jobs=jobs)
    eager.coordination_service.cluster_register_with_barrier = True


def _multi_worker(cfg: DistributionConfig, role: ClusterRole) -> Distribution:
    resolver = _resolver(cfg)
    if not resolver.cluster_spec().as_dict():
        logger.warning("multi_worker strategy without a cluster (no TF_CONFIG, no Slurm step): training as one "
                       "worker")
    else:
        _configure_coordination(resolver, cfg)
        logger.info("Joining the training cluster as %s: waiting up to %g s for every worker "
                    "(training.distribution.connect_timeout_s)", role.describe(), cfg.connect_timeout_s)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except (tf.errors.OpError, RuntimeError, ValueError) as exc:
        addresses = "; ".join(f"{job}: {', '.join(map(str, tasks.values() if isinstance(tasks, dict) else tasks))}"
                              for job, tasks in resolver.cluster_spec().as_dict().items())
        raise ClusterError(f"training.distribution: the training cluster did not form within "
                           f"training.distribution.connect_timeout_s ({cfg.connect_timeout_s:g} s) for "
                           f"{role.describe()}: {_first_line(exc)}. Every worker of the cluster ({addresses}) must "
                           "be started with the same configuration and be reachable from the others") from None
    workers = strategy.num_replicas_in_sync // max(1, len(strategy.extended.worker_devices))
    index = _id_in_cluster(resolver) if workers > 1 else 0
    return Distribution(strategy, "multi_worker", num_workers=workers, worker_index=index,
                        is_chief=bool(strategy.extended.should_checkpoint))


def _id_in_cluster(resolver: Any) -> int:
    from tensorflow.python.distribute import multi_worker_util

    cluster = multi_worker_util.normalize_cluster_spec(resolver.cluster_spec())
    return int(multi_worker_util.id_in_cluster(cluster, resolver.task_type, resolver.task_id))


STRATEGIES: MappingProxyType[str, Callable[[DistributionConfig, ClusterRole], Distribution]] = MappingProxyType({
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker": _multi_worker,
})
"""``training.distribution.strategy`` -> its builder (``auto`` is resolved first)."""


def resolve_name(cfg: DistributionConfig) -> str:
    """The strategy ``auto`` stands for here: mirrored over several local GPUs, else one_device."""
    if cfg.strategy != "auto":
        return cfg.strategy
    return "mirrored" if len(_gpus()) > 1 else "one_device"


def make_distribution(cfg: DistributionConfig, role: ClusterRole | None = None) -> Distribution:
    """Build the configured strategy (once per process: TensorFlow allows one multi-worker setup)."""
    role = role or cluster_role()
    check_role(role, cfg.strategy, cfg.cluster_resolver)
    name = resolve_name(cfg)
    return STRATEGIES[name](cfg, role)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def lost_peer_error(exc: tf.errors.OpError, cfg: DistributionConfig, role: ClusterRole) -> ClusterError:
    """The error a worker stops with when a collective fails because a peer is gone or unreachable."""
    return ClusterError(f"multi-worker training stopped ({role.describe()}): a worker is gone or unreachable "
                        f"({type(exc).__name__}: {_first_line(exc)}). Relaunch every worker with the same command "
                        "and the same hydra.run.dir: training resumes from the last completed epoch "
                        f"(training.distribution.timeout_s: {cfg.timeout_s:g} s)")


PEER_ERRORS: Sequence[type] = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                               tf.errors.CancelledError, tf.errors.InternalError)
"""What TensorFlow raises in a collective whose peer is gone (heartbeat lost, timeout, aborted collective)."""
