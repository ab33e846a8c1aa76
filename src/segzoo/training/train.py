"""Training as configured: distribution strategy, data, trainer, callbacks, the loop, the result.

A run trains under the ``training.distribution`` strategy (``segzoo.training.distribution``) through
``segzoo.training.loop``. Only the chief writes: checkpoints, logs, the restart state in ``<run dir>/backup``
(``segzoo.training.backup``) and MLflow metrics; other workers write nothing. A relaunch in a run directory that
holds a restart state continues after its last completed epoch; ``training.resume_training_from`` continues another
run in a new directory (``segzoo.training.start``).
"""

from __future__ import annotations

import csv
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from segzoo.config.schema import Config
from segzoo.data.augment import build_augmenter
from segzoo.data.augment_spec import validate_augmentations
from segzoo.data.layouts import Sample
from segzoo.data.loader import scan_samples
from segzoo.data.pipeline import data_errors, make_dataset, training_dataset, validation_dataset
from segzoo.data.resolve import DataSpec, training_and_validation
from segzoo.data.sharding import Shard, batches_per_pass, validation_steps
from segzoo.errors import ConfigError, DataError, ModelError
from segzoo.io import copy_file, write_text
from segzoo.training.backup import BACKUP_DIR, Backup
from segzoo.training.build import class_weights_for, exporter_for, target_functions
from segzoo.training.callbacks import Checkpoints, MlflowMetrics
from segzoo.training.cluster import cluster_role
from segzoo.training.distribution import (PEER_ERRORS, Distribution, check_jit_compile, lost_peer_error,
                                          make_distribution, scaled_learning_rate)
from segzoo.training.loop import LoopData, TrainingLoop
from segzoo.training.losses import IgnoreAwareCrossEntropy
from segzoo.training.plots import plot_training_curves
from segzoo.training.schedules import lr_schedule
from segzoo.training.start import Start, agree_on_start, find_start, make_trainer, restore_state

logger = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What a training run produced: the best checkpoint (with any training-only heads) and the model exported
    from it (what evaluation, quantization, benchmarking and deployment use). Non-chief workers produce no files."""

    best_model: Path
    best_checkpoint: Path
    last_model: Path
    epochs_done: int
    best: float | None
    monitor: str
    curves: Path | None
    steps_done: int = 0
    is_chief: bool = True


def fine_tuning_data(cfg: Config, spec: DataSpec, input_hw: tuple[int, int]) -> tuple[object, keras.losses.Loss, int]:
    """Training batches ``(image, labels)`` (augmented as configured, repeated), the cross-entropy loss (class
    weights as configured) and the steps per epoch: what quantization-aware fine-tuning of an exported model
    trains on."""
    train, _ = _checked_samples(spec)
    augmentations = validate_augmentations(cfg.data_augmentation or {}, "data_augmentation")
    augment = build_augmenter(augmentations, spec.ignore_index, seed=spec.seed) if augmentations else None
    tr = cfg.training
    dataset = make_dataset(train, spec.mapper, input_hw, spec.pp, tr.batch_size, shuffle=True, augment=augment,
                           seed=spec.seed, cache=tr.cache_dataset, drop_remainder=len(train) > tr.batch_size)
    loss = IgnoreAwareCrossEntropy(spec.num_classes, spec.ignore_index, class_weights_for(cfg, spec, train))
    steps = cfg.quantization.qat.steps_per_epoch or max(1, len(train) // tr.batch_size)
    return dataset.repeat(), loss, steps


def _checked_samples(spec: DataSpec, skipped: list[dict] | None = None) -> tuple[list[Sample], list[Sample]]:
    train, val = training_and_validation(spec)
    on_bad = spec.dataset.on_bad_sample
    train = scan_samples(train, spec.mapper, on_bad, desc="Checking training set", skipped=skipped)
    val = scan_samples(val, spec.mapper, on_bad, desc="Checking validation set", skipped=skipped) if val else []
    if not train:
        raise DataError("no training images (dataset.training_path)")
    return train, val


def _loop_data(cfg: Config, spec: DataSpec, train: list[Sample], val: list[Sample], input_hw: tuple[int, int],
               dist: Distribution, initial_epoch: int) -> LoopData:
    """This worker's shard of the training stream (from where the run stopped) and of the validation set."""
    augmentations = validate_augmentations(cfg.data_augmentation or {}, "data_augmentation")
    augment = build_augmenter(augmentations, spec.ignore_index, seed=spec.seed) if augmentations else None
    tr = cfg.training
    global_batch = tr.batch_size
    if dist.num_replicas > 1 and len(train) < global_batch:
        raise ConfigError(f"training.batch_size: {global_batch} is more than the {len(train)} training images; "
                          f"with {dist.num_replicas} replicas every step needs a whole global batch")
    steps = tr.steps_per_epoch or batches_per_pass(len(train), global_batch)
    common = {"mapper": spec.mapper, "input_hw": input_hw, "pp": spec.pp, "global_batch": global_batch,
              "cache": tr.cache_dataset, "targets": target_functions(cfg, spec)}

    def shard(context: tf.distribute.InputContext) -> dict:
        return {"shard": Shard(context.input_pipeline_id, context.num_input_pipelines),
                "replica_batch": context.get_per_replica_batch_size(global_batch)}

    def training_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return training_dataset(train, seed=spec.seed, augment=augment, start_batch=initial_epoch * steps,
                                **shard(context), **common)

    def validation_input(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return validation_dataset(val, pad=dist.num_replicas > 1, **shard(context), **common)

    strategy = dist.strategy
    return LoopData(train=strategy.distribute_datasets_from_function(training_input), steps_per_epoch=steps,
                    validation=strategy.distribute_datasets_from_function(validation_input) if val else None,
                    validation_steps=validation_steps(len(val), global_batch) if val else 0)


def _callbacks(cfg: Config, dist: Distribution, start: Start, run_dir: Path, monitor: str, tracker,
               steps: int) -> tuple[keras.callbacks.CallbackList, Checkpoints]:
    """Checkpoints, CSV log, MLflow, TensorBoard and the restart state on the chief; the schedule on every worker."""
    tr = cfg.training
    saved_dir, logs_dir = run_dir / cfg.general.saved_models_dir, run_dir / cfg.general.logs_dir
    checkpoints = Checkpoints(saved_dir, monitor, best=start.best, export=exporter_for(cfg))
    schedule = _schedule_callbacks(cfg, monitor, dist.num_replicas)
    callbacks: list[keras.callbacks.Callback] = []
    if dist.is_chief:
        csv_log = logs_dir / "training_log.csv"
        _keep_epochs_before(csv_log, start.epoch)
        callbacks += [checkpoints, keras.callbacks.CSVLogger(str(csv_log), append=csv_log.exists()),
                      MlflowMetrics(tracker)]
    callbacks += schedule
    if dist.is_chief:
        if tr.tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(log_dir=str(logs_dir / "tensorboard"), profile_batch=0))
        callbacks.append(Backup(run_dir / BACKUP_DIR, [checkpoints, *schedule], restored=start.restart))
    verbose = 1 if sys.stdout.isatty() else 2
    return keras.callbacks.CallbackList(callbacks, add_progbar=True, verbose=verbose, epochs=tr.epochs,
                                        steps=steps), checkpoints


def run_training(cfg: Config, spec: DataSpec, run_dir: Path, tracker,
                 skipped: list[dict] | None = None) -> TrainingResult:
    """Train as configured; checkpoints go to ``<run_dir>/<saved_models_dir>``, logs to ``<logs_dir>``.

    With ``dataset.on_bad_sample: skip`` the unusable pairs are left out (counted in the log) and appended to
    ``skipped``."""
    tr = cfg.training
    dist = make_distribution(tr.distribution)  # first: a multi-worker cluster must form before other TF work
    check_jit_compile(dist, tr.jit_compile)
    keras.utils.set_random_seed(spec.seed)
    train, val = _checked_samples(spec, skipped)
    monitor = tr.monitor if val else tr.monitor.removeprefix("val_")
    if not val:
        logger.warning("No validation images: checkpoints follow the training %s", monitor)
    logger.info("%s; precision %s%s", dist.describe(tr.batch_size), tr.precision, "; XLA" if tr.jit_compile else "")
    try:
        with dist.strategy.scope():
            start = find_start(cfg, spec, run_dir, dist, monitor)
            trainer = make_trainer(cfg, spec, train, dist, start)
        restore_state(trainer, start)
        start.epoch = agree_on_start(dist, trainer, start.epoch)
        _prepare_run_dir(cfg, run_dir, dist, start)
        network = trainer.network
        if network.input_shape[-1] != spec.pp.channels:
            raise ConfigError(f"preprocessing.color_mode: {spec.pp.color_mode!r} gives {spec.pp.channels} channels "
                              f"but the model takes {network.input_shape[-1]}")
        data = _loop_data(cfg, spec, train, val, tuple(network.input_shape[1:3]), dist, start.epoch)
        callbacks, checkpoints = _callbacks(cfg, dist, start, run_dir, monitor, tracker, data.steps_per_epoch)
        if start.epoch >= tr.epochs:
            logger.warning("training.epochs (%d) already reached by this run: nothing to train", tr.epochs)
        else:
            logger.info("Training on %d images, validating on %d, for epochs %d..%d", len(train), len(val),
                        start.epoch + 1, tr.epochs)
            loop = TrainingLoop(trainer, dist, jit_compile=tr.jit_compile, steps_per_execution=tr.steps_per_execution)
            with data_errors():
                loop.fit(data, epochs=tr.epochs, initial_epoch=start.epoch, callbacks=callbacks)
    except PEER_ERRORS as exc:
        if dist.num_workers > 1:
            raise lost_peer_error(exc, tr.distribution, cluster_role()) from exc
        raise
    result = _result(cfg, run_dir, dist, checkpoints, monitor, max(start.epoch, tr.epochs))
    result.steps_done = int(keras.ops.convert_to_numpy(trainer.optimizer.iterations))
    return result


def _prepare_run_dir(cfg: Config, run_dir: Path, dist: Distribution, start: Start) -> None:
    """The chief's folders, and the files carried over from a resumed run."""
    if not dist.is_chief:
        return
    saved_dir, logs_dir = run_dir / cfg.general.saved_models_dir, run_dir / cfg.general.logs_dir
    saved_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    if start.resumed_from:
        _carry_over(start.resumed_from, saved_dir, Path(cfg.training.resume_training_from) / cfg.general.logs_dir,
                    logs_dir, start.resumed_weights)


def _result(cfg: Config, run_dir: Path, dist: Distribution, checkpoints: Checkpoints, monitor: str,
            epochs_done: int) -> TrainingResult:
    logs_dir = run_dir / cfg.general.logs_dir
    result = TrainingResult(best_model=checkpoints.best_path, best_checkpoint=checkpoints.best_checkpoint_path,
                            last_model=checkpoints.last_path, epochs_done=epochs_done, best=checkpoints.best,
                            monitor=monitor, curves=None, is_chief=dist.is_chief)
    if not dist.is_chief:
        return result
    if (logs_dir / "training_log.csv").exists():
        result.curves = plot_training_curves(logs_dir / "training_log.csv", run_dir / "training_curves.png")
    if not checkpoints.best_path.exists():
        raise ModelError(f"training produced no checkpoint ({monitor} was never finite: check the data and "
                         "the learning rate)")
    return result


def _keep_epochs_before(csv_log: Path, epoch: int) -> None:
    """Drop the CSV rows of epochs from ``epoch`` on (a relaunch trains them again)."""
    if not csv_log.exists():
        return
    with open(csv_log, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(float(row[0])) < epoch]
    if len(kept) != len(rows):
        write_text(csv_log, "".join(",".join(row) + "\n" for row in kept), checksum=False)


def _schedule_callbacks(cfg: Config, monitor: str, num_replicas: int) -> list[keras.callbacks.Callback]:
    """The learning-rate schedule and early stopping: every worker runs them."""
    tr = cfg.training
    base_lr = scaled_learning_rate(tr.distribution, tr.optimizer.learning_rate, num_replicas)
    schedule = lr_schedule(tr.lr_schedule, base_lr, tr.epochs)
    mode = "min" if monitor.endswith("loss") else "max"
    if tr.lr_schedule.name != "reduce_on_plateau":
        callbacks: list[keras.callbacks.Callback] = [keras.callbacks.LearningRateScheduler(schedule)]
    else:
        callbacks = [keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=tr.lr_schedule.factor,
                                                       patience=tr.lr_schedule.patience,
                                                       min_lr=tr.lr_schedule.min_lr)]
    if tr.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                                       patience=tr.early_stopping_patience))
    return callbacks


def _carry_over(saved_src: Path, saved_dir: Path, logs_src: Path, logs_dir: Path, weights: Path | None) -> None:
    """Copy the resumed run's best models, state (its weights first: the state names them) and CSV log into this
    run, so that this run can itself be resumed before its first epoch ends."""
    if weights is not None:
        copy_file(weights, saved_dir / weights.name)
    for name in ("best_model.keras", "best_checkpoint.keras", "last_model.keras", "training_state.json"):
        if (saved_src / name).exists():
            copy_file(saved_src / name, saved_dir / name)
    if (logs_src / "training_log.csv").exists():
        copy_file(logs_src / "training_log.csv", logs_dir / "training_log.csv", checksum=False)
