"""The model families: name -> package, loaded on demand; building, weights, export and losses through them.

This module imports no TensorFlow: the config validator reads the families' params dataclasses before TensorFlow
is loaded. Adding a family is one folder under ``segzoo/models/`` (see :mod:`segzoo.models.base`) plus one line in
``FAMILY_PACKAGES``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from segzoo.errors import ModelError
from segzoo.models.base import Family, LossTerm, ModelParams, WeightSource, resolve

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

FAMILY_PACKAGES: Mapping[str, str] = MappingProxyType({
    "deeplab_v3": "segzoo.models.deeplab_v3",
    "pidnet": "segzoo.models.pidnet",
    "pp_mobileseg": "segzoo.models.pp_mobileseg",
    "sam2": "segzoo.models.sam2",
})
"""Family name -> the package whose ``FAMILY`` describes it."""

DEFAULT_FAMILY = "deeplab_v3"


def family_names() -> list[str]:
    """Every registered family name, sorted."""
    return sorted(FAMILY_PACKAGES)


def closest(name: object, candidates: Sequence[str], cutoff: float = 0.5) -> str | None:
    """The candidate closest to ``name`` (difflib), or None when nothing is similar."""
    matches = difflib.get_close_matches(str(name).lower(), list(candidates), n=1, cutoff=cutoff)
    return matches[0] if matches else None


@cache
def _load(name: str) -> Family:
    family = importlib.import_module(FAMILY_PACKAGES[name]).FAMILY
    if family.name != name:
        raise RuntimeError(f"{FAMILY_PACKAGES[name]}.FAMILY is named {family.name!r}, registered as {name!r}")
    return family


def get_family(name: object) -> Family:
    """The family ``name``; ModelError naming the valid families and the closest one if unknown."""
    if isinstance(name, str) and name in FAMILY_PACKAGES:
        return _load(name)
    hint = closest(name, family_names())
    suggestion = f" Did you mean '{hint}'?" if hint else ""
    raise ModelError(f"Unknown model family {name!r}.{suggestion} Valid families: {', '.join(family_names())}.")


def default_params() -> ModelParams:
    """The params of the default family, all defaults (the schema's default ``training.model``)."""
    return get_family(DEFAULT_FAMILY).params()


def make_params(name: str, **values: Any) -> ModelParams:
    """The family's params with ``values`` applied and validated like the config (ModelError listing problems)."""
    from segzoo.config.validate import build_section

    family = get_family(name)
    params, errors = build_section(family.params, {"name": name, **values}, "training.model")
    errors += [f"training.model.{e}" for e in params.check()]
    if errors:
        raise ModelError("; ".join(errors))
    return params


# ------------------------------------------------------------------------------------------------ building
def build_from_params(params: ModelParams, num_classes: int, *,
                      weights_dirs: Sequence[str | Path] = ()) -> "keras.Model":
    """The training model of ``params`` for ``num_classes``, with its pretrained weights loaded if asked."""
    family = get_family(params.name)
    model = resolve(family.builder)(params, num_classes)
    if params.pretrained_weights:
        load_pretrained(model, params, num_classes, weights_dirs)
    return model


def build_model(family: str, *, input_shape: Sequence[int], num_classes: int,
                weights_dirs: Sequence[str | Path] = (), **params: Any) -> "keras.Model":
    """Build a model of ``family`` from keyword params (unset ones take the family defaults)."""
    built = make_params(family, input_shape=list(input_shape), **params)
    return build_from_params(built, num_classes, weights_dirs=weights_dirs)


def import_pretrained(params: ModelParams, num_classes: int, out_path: Path,
                      weights_dirs: Sequence[str | Path] = ()) -> Path:
    """Build ``params`` with its pretrained weights, export it and save it to ``out_path`` (no training)."""
    from segzoo.io import atomic_path

    if not params.pretrained_weights:
        raise ModelError("training.model.pretrained_weights: needed to use a model without training it "
                         "(or set general.model_path)")
    model = export_model(build_from_params(params, num_classes, weights_dirs=weights_dirs), params)
    with atomic_path(out_path) as tmp:
        model.save(tmp)
    log.info("Imported %s with weights %s into %s", params.name, params.pretrained_weights, out_path)
    return out_path


def export_model(model: "keras.Model", params: ModelParams) -> "keras.Model":
    """The inference graph of a trained model (training-only heads dropped); the model itself if nothing to drop."""
    family = get_family(params.name)
    return resolve(family.exporter)(model, params) if family.exporter else model


def loss_terms(params: ModelParams, num_classes: int, ignore_index: int,
               class_weights: Sequence[float] | None) -> list[LossTerm] | None:
    """The family's training losses, or None for the default ignore-aware cross-entropy on the logits."""
    family = get_family(params.name)
    if family.losses is None:
        return None
    return resolve(family.losses)(params, num_classes, ignore_index, class_weights)


def custom_objects() -> dict[str, Any]:
    """Every custom Keras class needed to load a segzoo model of any family (imports the families' layers)."""
    objects: dict[str, Any] = {}
    for name in family_names():
        family = _load(name)
        if family.custom_objects:
            objects.update(resolve(family.custom_objects))
    from segzoo.litert.layers import CUSTOM_OBJECTS as imported_objects
    from segzoo.quantization.formatting import CUSTOM_OBJECTS as formatting_objects

    return {**objects, **formatting_objects, **imported_objects}


# ------------------------------------------------------------------------------------------------- weights
def weight_source(params: ModelParams) -> WeightSource | None:
    """The named official checkpoint of ``params.pretrained_weights``, or None when it is a file path."""
    family = get_family(params.name)
    return family.weights.get(str(params.pretrained_weights))


def _cache_dir(source: WeightSource) -> Path:
    from segzoo.models.weights_store import keras_cache_dir, segzoo_cache_dir

    return keras_cache_dir() if source.cache == "keras" else segzoo_cache_dir()


def _check_requirements(source: WeightSource, params: ModelParams, num_classes: int) -> None:
    wrong = {k: v for k, v in source.params.items() if getattr(params, k, None) != v}
    if wrong:
        have = {k: getattr(params, k, None) for k in wrong}
        raise ModelError(f"training.model.pretrained_weights: '{source.name}' needs {wrong}, the model has {have}")
    if source.num_classes is not None and source.num_classes != num_classes:
        log.info("'%s' was trained for %d classes; the model has %d: its classifier is not imported",
                 source.name, source.num_classes, num_classes)


def locate_source(source: WeightSource, params: ModelParams, weights_dirs: Sequence[str | Path]) -> Path:
    """The local file of a named checkpoint (the user's folders, the cache, else a verified download)."""
    from segzoo.models.weights_store import locate_weights

    return locate_weights(source.file_names(params), folders=list(weights_dirs), cache_dir=_cache_dir(source),
                          url=source.download_url(params), sha256=source.sha256,
                          what=f"{params.name} weights '{source.name}'")


def load_pretrained(model: "keras.Model", params: ModelParams, num_classes: int,
                    weights_dirs: Sequence[str | Path] = ()) -> Path:
    """Load ``params.pretrained_weights`` (a named checkpoint or a file path) into ``model``; the file used."""
    family = get_family(params.name)
    source = weight_source(params)
    if source is not None:
        _check_requirements(source, params, num_classes)
        path = locate_source(source, params, weights_dirs)
        resolve(source.importer)(model, path, params)
        return path
    path = Path(str(params.pretrained_weights)).expanduser()
    if not path.is_file():
        names = ", ".join(repr(n) for n in family.weights) or "none"
        raise ModelError(f"training.model.pretrained_weights: {str(path)!r} is neither a file nor a named checkpoint "
                         f"of {family.name} (named: {names})")
    if family.file_importer is None:
        raise ModelError(f"training.model.pretrained_weights: {family.name} cannot import weight files by path; "
                         f"use a named checkpoint ({', '.join(family.weights) or 'none'})")
    resolve(family.file_importer)(model, path, params)
    return path
