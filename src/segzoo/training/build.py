"""What a training run is made of: the network, the optimizer, the loss terms, the extra targets, the export."""

from __future__ import annotations

import logging
from collections.abc import Callable

import keras

from segzoo.config.schema import Config, OptimizerConfig
from segzoo.data.layouts import Sample
from segzoo.data.masks import read_mask
from segzoo.data.resolve import DataSpec
from segzoo.errors import ModelError
from segzoo.io import verified
from segzoo.training.losses import median_frequency_weights
from segzoo.training.precision import FLOAT32, float32_export
from segzoo.training.trainer import default_loss_terms

logger = logging.getLogger(__name__)


def make_optimizer(opt: OptimizerConfig, learning_rate: float | None = None) -> keras.optimizers.Optimizer:
    """Optimizer from its typed config (``learning_rate`` replaces the configured one, e.g. scaled)."""
    common = {"learning_rate": learning_rate or opt.learning_rate, "clipnorm": opt.clipnorm}
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


def exporter_for(cfg: Config) -> Callable[[keras.Model], keras.Model] | None:
    """``network -> exported model`` when the family drops training heads at export or the network trains in mixed
    precision (the exported model is float32), else None (the network is the exported model)."""
    from segzoo.models.registry import export_model, get_family

    params = cfg.training.model
    mixed = cfg.training.precision != FLOAT32
    if get_family(params.name).exporter is None:
        return float32_export if mixed else None
    return lambda network: export_model(float32_export(network), params)
