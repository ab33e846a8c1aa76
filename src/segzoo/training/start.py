"""Where a training run starts: from scratch, from the restart state of its own run directory (a relaunch), or
from another run (``training.resume_training_from``); and the trainer built from there in the strategy's scope."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from segzoo.config.schema import Config
from segzoo.data.layouts import Sample
from segzoo.data.resolve import DataSpec
from segzoo.errors import ModelError
from segzoo.io import verified
from segzoo.training.backup import BACKUP_DIR, build_trainer, read_backup, restore_trainer
from segzoo.training.build import build_or_load_model, loss_terms_for, make_optimizer
from segzoo.training.batch_norm import synchronize_batch_norm, use_fused_kernel
from segzoo.training.distribution import Distribution, scaled_learning_rate
from segzoo.training.loop import broadcast_from_chief, sync_variables_from_chief
from segzoo.training.losses import IgnoreAwareCrossEntropy
from segzoo.training.metrics import StreamingMeanIoU
from segzoo.training.precision import with_precision, wrap_optimizer
from segzoo.training.state import read_resumable_state
from segzoo.training.trainer import Trainer

logger = logging.getLogger(__name__)

CUSTOM_OBJECTS = {"IgnoreAwareCrossEntropy": IgnoreAwareCrossEntropy, "StreamingMeanIoU": StreamingMeanIoU}
"""What the compiled checkpoints of segzoo 0.1 need to load (they hold the optimizer; newer ones do not)."""


@dataclass
class Start:
    """Where training starts: the network, an optimizer that comes with it (0.1 runs), the epochs done, the best
    value, the restart state (relaunch) or the saved models of the run resumed from (``resume_training_from``)
    with the weights file of its state (None for 0.1 runs, whose optimizer comes with the network)."""

    network: keras.Model
    optimizer: keras.optimizers.Optimizer | None = None
    epoch: int = 0
    best: float | None = None
    restart: dict | None = None
    resumed_from: Path | None = None
    resumed_weights: Path | None = None


def _resume_source(cfg: Config) -> tuple[Path, dict] | None:
    source = cfg.training.resume_training_from
    if not source:
        return None
    state = read_resumable_state(source, cfg.general.saved_models_dir)
    return Path(source) / cfg.general.saved_models_dir, state


def _restored(saved_src: Path, weights: Path | None) -> tuple[keras.Model, keras.optimizers.Optimizer | None]:
    """The last network of a run and, for runs of segzoo 0.1 (compiled checkpoints, no state ``weights``), its
    optimizer."""
    from segzoo.models.registry import custom_objects

    objects = {**custom_objects(), **CUSTOM_OBJECTS}
    path = verified(saved_src / "last_model.keras")
    try:
        if weights is not None:
            return keras.saving.load_model(path, compile=False, custom_objects=objects), None
        legacy = keras.saving.load_model(path, custom_objects=objects)
    except Exception as exc:  # Keras raises many types for unreadable files
        raise ModelError(f"training.resume_training_from: cannot load {path}: {exc}") from exc
    return legacy, legacy.optimizer


def find_start(cfg: Config, spec: DataSpec, run_dir: Path, dist: Distribution, monitor: str) -> Start:
    """A relaunch continues from ``<run dir>/backup`` (read by the chief alone: the others get its state over the
    network), a resume from its source run, else a new network (call in the strategy's scope)."""
    restart = read_backup(run_dir / BACKUP_DIR) if dist.is_chief else None
    resume = _resume_source(cfg)
    if restart:
        network, optimizer = (_restored(resume[0], resume[1]["weights_path"]) if resume
                              else (build_or_load_model(cfg, spec.num_classes), None))
        best = restart.get("callbacks", {}).get("Checkpoints", {}).get("best")
        logger.info("Restarting %s after epoch %d (restart state %s)", run_dir, restart["epochs_done"],
                    restart["weights_path"])
        return Start(network, optimizer, int(restart["epochs_done"]), best, restart=restart)
    if resume:
        saved_src, state = resume
        network, optimizer = _restored(saved_src, state["weights_path"])
        logger.info("Resuming from %s after epoch %d (best %s %s; state %s)", saved_src, state["epochs_done"],
                    monitor, state.get("best"), state["weights_path"] or "of the compiled checkpoint")
        return Start(network, optimizer, int(state["epochs_done"]), state.get("best"), resumed_from=saved_src,
                     resumed_weights=state["weights_path"])
    return Start(build_or_load_model(cfg, spec.num_classes))


def make_trainer(cfg: Config, spec: DataSpec, train: list[Sample], dist: Distribution, start: Start) -> Trainer:
    """The trainer, its variables created (call in the strategy's scope): network in ``training.precision``, loss
    terms, optimizer."""
    tr = cfg.training
    network = with_precision(start.network, tr.precision)
    if dist.num_replicas > 1 and tr.distribution.sync_batch_norm:
        count = synchronize_batch_norm(network)
        logger.info("%d BatchNormalization layers take their statistics over the global batch "
                    "(training.distribution.sync_batch_norm)", count)
    else:
        logger.debug("%d BatchNormalization layers train with TensorFlow's fused kernel", use_fused_kernel(network))
    trainer = Trainer(network, loss_terms_for(cfg, spec, train), spec.num_classes, spec.ignore_index)
    lr = scaled_learning_rate(tr.distribution, tr.optimizer.learning_rate, dist.num_replicas)
    trainer.optimizer = wrap_optimizer(start.optimizer or make_optimizer(tr.optimizer, lr), tr.precision)
    build_trainer(trainer)
    return trainer


def restore_state(trainer: Trainer, start: Start) -> None:
    """Load the variables a restart or a resume continues from (outside the strategy's scope: Keras creates helper
    objects while loading, which must not become distributed variables on one worker only)."""
    if start.restart:
        folder = start.restart["weights_path"].parent
        restore_trainer(trainer, start.restart["weights_path"],
                        f"delete {folder} to train this run from the start, or use a new hydra.run.dir")
    elif start.resumed_weights is not None:
        restore_trainer(trainer, start.resumed_weights,
                        "training.resume_training_from needs the model, optimizer and precision of that run")


def agree_on_start(dist: Distribution, trainer: Trainer, epoch: int) -> int:
    """With several workers, every worker takes the chief's epoch and variables; the epoch to start from."""
    if dist.num_workers == 1:
        return epoch
    epoch = int(broadcast_from_chief(dist.strategy, [tf.constant(epoch, tf.int64)])[0])
    sync_variables_from_chief(dist, list(trainer.network.weights) + list(trainer.optimizer.variables))
    return epoch
