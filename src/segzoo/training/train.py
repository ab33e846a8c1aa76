"""The training loop: model, data, loss, metrics, schedule, checkpoints, logs, resume."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import keras

from segzoo.config.schema import Config, OptimizerConfig
from segzoo.data.augment import build_augmenter
from segzoo.data.augment_spec import validate_augmentations
from segzoo.data.layouts import Sample
from segzoo.data.loader import scan_samples
from segzoo.data.masks import read_mask
from segzoo.data.pipeline import data_errors, make_dataset
from segzoo.data.resolve import DataSpec, training_and_validation
from segzoo.errors import ConfigError, DataError, ModelError
from segzoo.io import copy_file, verified
from segzoo.training.callbacks import Checkpoints, MlflowMetrics
from segzoo.training.state import STATE_WEIGHTS, read_resumable_state
from segzoo.training.losses import IgnoreAwareCrossEntropy, median_frequency_weights
from segzoo.training.metrics import StreamingMeanIoU
from segzoo.training.trainer import Trainer, default_loss_terms
from segzoo.training.plots import plot_training_curves
from segzoo.training.schedules import lr_schedule

logger = logging.getLogger(__name__)

CUSTOM_OBJECTS = {"IgnoreAwareCrossEntropy": IgnoreAwareCrossEntropy, "StreamingMeanIoU": StreamingMeanIoU}
"""What the compiled checkpoints of segzoo 0.1 need to load (they hold the optimizer; newer ones do not)."""


@dataclass
class TrainingResult:
    """What a training run produced: the best checkpoint (with any training-only heads) and the model exported
    from it (what evaluation, quantization, benchmarking and deployment use)."""

    best_model: Path
    best_checkpoint: Path
    last_model: Path
    epochs_done: int
    best: float | None
    monitor: str
    curves: Path | None


def make_optimizer(opt: OptimizerConfig) -> keras.optimizers.Optimizer:
    """Optimizer from its typed config."""
    common = {"learning_rate": opt.learning_rate, "clipnorm": opt.clipnorm}
    if opt.name == "adam":
        return keras.optimizers.Adam(weight_decay=opt.weight_decay or None, **common)
    if opt.name == "adamw":
        return keras.optimizers.AdamW(weight_decay=opt.weight_decay or 0.004, **common)
    if opt.name == "sgd":
        return keras.optimizers.SGD(momentum=opt.momentum, weight_decay=opt.weight_decay or None, **common)
    return keras.optimizers.RMSprop(momentum=opt.momentum, weight_decay=opt.weight_decay or None, **common)


def build_or_load_model(cfg: Config, num_classes: int) -> keras.Model:
    """The network to train: a new one from the registry, or the .keras/.h5 of ``general.model_path`` to fine-tune."""
    from segzoo.models.registry import build_from_params, custom_objects

    if cfg.general.model_path:
        verified(cfg.general.model_path)
        try:
            model = keras.saving.load_model(cfg.general.model_path, compile=False, custom_objects=custom_objects())
        except Exception as exc:  # Keras raises many types for unreadable files
            raise ModelError(f"general.model_path: cannot load {cfg.general.model_path!r}: {exc}") from exc
        out_classes = (model.output["logits"] if isinstance(model.output, dict) else model.output).shape[-1]
        if out_classes != num_classes:
            raise ModelError(f"general.model_path: the model predicts {out_classes} classes but "
                             f"dataset.class_names has {num_classes}")
        logger.info("Fine-tuning %s", cfg.general.model_path)
        return model
    params = cfg.training.model
    model = build_from_params(params, num_classes, weights_dirs=cfg.general.weights_dirs)
    logger.info("Built %s for %d classes: %s", params.name, num_classes, params.to_dict())
    return model


def class_weights_for(cfg: Config, spec: DataSpec, train: list[Sample]) -> list[float] | None:
    """Class weights from the config, or computed by median-frequency balancing."""
    weights = cfg.training.class_weights
    if weights != "median_frequency":
        return weights
    masks = (spec.mapper.apply(read_mask(s.mask_path)) for s in train)
    computed = median_frequency_weights(masks, spec.num_classes)
    logger.info("Median-frequency class weights: %s", dict(zip(spec.class_names, computed)))
    return computed


def loss_terms_for(cfg: Config, spec: DataSpec, train: list[Sample]) -> list:
    """The family's weighted loss terms, or cross-entropy on the logits."""
    from segzoo.models.registry import loss_terms

    weights = class_weights_for(cfg, spec, train)
    terms = loss_terms(cfg.training.model, spec.num_classes, spec.ignore_index, weights)
    return terms if terms is not None else default_loss_terms(spec.num_classes, spec.ignore_index, weights)


def target_functions(cfg: Config, spec: DataSpec) -> dict:
    """The extra training targets the family asks for (e.g. boundary maps), each a function of the label map."""
    from segzoo.data.targets import target_function
    from segzoo.models.registry import get_family

    family = get_family(cfg.training.model.name)
    return {name: target_function(name, cfg.training.model, spec.ignore_index) for name in family.targets}


def exporter_for(cfg: Config):
    """``network -> exported model`` when the family drops training heads at export, else None."""
    from segzoo.models.registry import export_model, get_family

    params = cfg.training.model
    if get_family(params.name).exporter is None:
        return None
    return lambda network: export_model(network, params)


def _resume_source(cfg: Config) -> tuple[Path, dict] | None:
    source = cfg.training.resume_training_from
    if not source:
        return None
    state = read_resumable_state(source, cfg.general.saved_models_dir)
    return Path(source) / cfg.general.saved_models_dir, state


def _restored(saved_src: Path) -> tuple[keras.Model, keras.optimizers.Optimizer | None]:
    """The last network of a run and, for runs of segzoo 0.1 (compiled checkpoints), its optimizer."""
    from segzoo.models.registry import custom_objects

    objects = {**custom_objects(), **CUSTOM_OBJECTS}
    path = verified(saved_src / "last_model.keras")
    try:
        if (saved_src / STATE_WEIGHTS).is_file():
            return keras.saving.load_model(path, compile=False, custom_objects=objects), None
        legacy = keras.saving.load_model(path, custom_objects=objects)
    except Exception as exc:  # Keras raises many types for unreadable files
        raise ModelError(f"training.resume_training_from: cannot load {path}: {exc}") from exc
    return legacy, legacy.optimizer


def _datasets(cfg: Config, spec: DataSpec, train: list[Sample], val: list[Sample], input_hw: tuple[int, int]):
    augmentations = validate_augmentations(cfg.data_augmentation or {}, "data_augmentation")
    augment = build_augmenter(augmentations, spec.ignore_index, seed=spec.seed) if augmentations else None
    tr, targets = cfg.training, target_functions(cfg, spec)
    train_ds = make_dataset(train, spec.mapper, input_hw, spec.pp, tr.batch_size, shuffle=True, augment=augment,
                            seed=spec.seed, cache=tr.cache_dataset, drop_remainder=len(train) > tr.batch_size,
                            targets=targets)
    if tr.steps_per_epoch:
        train_ds = train_ds.repeat()
    val_ds = make_dataset(val, spec.mapper, input_hw, spec.pp, tr.batch_size, cache=tr.cache_dataset,
                          targets=targets) if val else None
    return train_ds, val_ds


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


def run_training(cfg: Config, spec: DataSpec, run_dir: Path, tracker,
                 skipped: list[dict] | None = None) -> TrainingResult:
    """Train as configured; checkpoints go to ``<run_dir>/<saved_models_dir>``, logs to ``<logs_dir>``.

    With ``dataset.on_bad_sample: skip`` the unusable pairs are left out (counted in the log) and appended to
    ``skipped``."""
    keras.utils.set_random_seed(spec.seed)
    tr = cfg.training
    saved_dir, logs_dir = run_dir / cfg.general.saved_models_dir, run_dir / cfg.general.logs_dir
    saved_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    train, val = _checked_samples(spec, skipped)
    monitor = tr.monitor if val else tr.monitor.removeprefix("val_")
    if not val:
        logger.warning("No validation images: checkpoints follow the training %s", monitor)

    resume = _resume_source(cfg)
    initial_epoch, best, optimizer = 0, None, None
    if resume:
        saved_src, state = resume
        network, optimizer = _restored(saved_src)
        initial_epoch, best = int(state["epochs_done"]), state.get("best")
        _carry_over(saved_src, saved_dir, Path(cfg.training.resume_training_from) / cfg.general.logs_dir, logs_dir)
        logger.info("Resuming from %s after epoch %d (best %s %s)", saved_src, initial_epoch, monitor, best)
    else:
        network = build_or_load_model(cfg, spec.num_classes)
    trainer = Trainer(network, loss_terms_for(cfg, spec, train), spec.num_classes, spec.ignore_index)
    trainer.compile(optimizer=optimizer or make_optimizer(tr.optimizer))
    if resume and optimizer is None:
        _load_state(trainer, resume[0] / STATE_WEIGHTS)
    input_hw = tuple(network.input_shape[1:3])
    if network.input_shape[-1] != spec.pp.channels:
        raise ConfigError(f"preprocessing.color_mode: {spec.pp.color_mode!r} gives {spec.pp.channels} channels "
                          f"but the model takes {network.input_shape[-1]}")
    train_ds, val_ds = _datasets(cfg, spec, train, val, input_hw)

    checkpoints = Checkpoints(saved_dir, monitor, best=best, export=exporter_for(cfg))
    callbacks = [checkpoints, keras.callbacks.CSVLogger(str(logs_dir / "training_log.csv"), append=bool(resume)),
                 MlflowMetrics(tracker)]
    callbacks += _schedule_callbacks(cfg, monitor)
    if tr.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(logs_dir / "tensorboard"), profile_batch=0))
    if initial_epoch >= tr.epochs:
        logger.warning("training.epochs (%d) already reached by the resumed run: nothing to train", tr.epochs)
    else:
        logger.info("Training on %d images, validating on %d, for epochs %d..%d", len(train), len(val),
                    initial_epoch + 1, tr.epochs)
        with data_errors():
            trainer.fit(train_ds, validation_data=val_ds, epochs=tr.epochs, initial_epoch=initial_epoch,
                        steps_per_epoch=tr.steps_per_epoch, callbacks=callbacks, shuffle=False,
                        verbose=1 if sys.stdout.isatty() else 2)
    curves = plot_training_curves(logs_dir / "training_log.csv", run_dir / "training_curves.png") \
        if (logs_dir / "training_log.csv").exists() else None
    if not checkpoints.best_path.exists():
        raise ModelError(f"training produced no checkpoint ({monitor} was never finite: check the data and "
                         "the learning rate)")
    return TrainingResult(best_model=checkpoints.best_path, best_checkpoint=checkpoints.best_checkpoint_path,
                          last_model=checkpoints.last_path, epochs_done=max(initial_epoch, tr.epochs),
                          best=checkpoints.best, monitor=monitor, curves=curves)


def _load_state(trainer: Trainer, path: Path) -> None:
    """Restore the network and optimizer variables saved by Checkpoints (trainer and optimizer are built first)."""
    trainer(keras.ops.zeros((1, *trainer.network.input_shape[1:])))
    trainer.optimizer.build(trainer.trainable_variables)
    verified(path)
    try:
        trainer.load_weights(path)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign state file
        raise ModelError(f"training.resume_training_from: cannot restore {path}: {exc}") from exc


def _schedule_callbacks(cfg: Config, monitor: str) -> list[keras.callbacks.Callback]:
    tr = cfg.training
    schedule = lr_schedule(tr.lr_schedule, tr.optimizer.learning_rate, tr.epochs)
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


def _carry_over(saved_src: Path, saved_dir: Path, logs_src: Path, logs_dir: Path) -> None:
    """Copy the resumed run's best models, state and CSV log into this run."""
    for name in ("best_model.keras", "best_checkpoint.keras", "training_state.json"):
        if (saved_src / name).exists():
            copy_file(saved_src / name, saved_dir / name)
    if (logs_src / "training_log.csv").exists():
        copy_file(logs_src / "training_log.csv", logs_dir / "training_log.csv", checksum=False)
