"""Registry of model families: a constant, immutable name -> spec mapping with lazily imported builders.

This module imports no TensorFlow/Keras: the config validator reads ``FAMILIES`` (accepted params, their defaults
and enum choices) before TensorFlow is loaded. ``build_model`` imports the builder (``"module:function"``) only
when a model is actually built.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from segzoo.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FamilySpec:
    """One model family: its builder (``"module:function"``), accepted params with defaults, enum choices.

    ``params`` are the config-level parameters (``training.model.*``); ``input_shape`` and ``num_classes`` are
    always passed separately. The Keras model name is not a param: in configs ``name`` is the family name.
    """

    name: str
    builder: str
    params: Mapping[str, object]
    choices: Mapping[str, tuple]
    description: str

    def __post_init__(self) -> None:
        # Freeze the mappings so the module-level registry cannot be mutated by callers.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))
        object.__setattr__(self, "choices", MappingProxyType({k: tuple(v) for k, v in self.choices.items()}))


_DEEPLAB_V3 = FamilySpec(
    name="deeplab_v3",
    builder="segzoo.models.deeplabv3:build_deeplabv3",
    params={
        "alpha": 0.5,
        "output_stride": 16,
        "aspp": "v1",
        "dropout": 0.1,
        "pretrained_weights": None,
        "upsample": True,
    },
    choices={
        "alpha": (0.35, 0.5, 0.75, 1.0),
        "output_stride": (8, 16),
        "aspp": ("v1", "v2", "none"),
    },
    description=(
        "DeepLabV3 on a Keras MobileNetV2 backbone (STM32 model zoo style): features cut at block_13_expand_relu "
        "(output_stride 16) or block_6_expand_relu (8), ASPP head v1 (dilated conv), v2 (dilated depthwise-"
        "separable) or none (1x1 + image pooling), 1x1 logits, bilinear upsampling to the input size. "
        "pretrained_weights: None, 'imagenet' (backbone, from the local Keras cache only) or a weights file."
    ),
)

FAMILIES: Mapping[str, FamilySpec] = MappingProxyType({_DEEPLAB_V3.name: _DEEPLAB_V3})
"""Model family name -> spec. Immutable."""


def _closest(name: str, candidates: list[str]) -> str | None:
    """The closest candidate to ``name`` (difflib), or None when nothing is remotely similar."""
    matches = difflib.get_close_matches(str(name).lower(), candidates, n=1, cutoff=0.3)
    return matches[0] if matches else None


def get_family(name: str) -> FamilySpec:
    """The spec of family ``name``; ModelError naming the valid families and the closest one if unknown."""
    if isinstance(name, str) and name in FAMILIES:
        return FAMILIES[name]
    valid = sorted(FAMILIES)
    hint = _closest(name, valid) if isinstance(name, str) else None
    suggestion = f" Did you mean '{hint}'?" if hint else ""
    raise ModelError(f"Unknown model family {name!r}.{suggestion} Valid families: {', '.join(valid)}.")


def check_params(spec: FamilySpec, params: Mapping[str, Any]) -> None:
    """ModelError if ``params`` has a name the family does not accept or an enum value outside its choices."""
    valid = sorted(spec.params)
    for key in params:
        if key not in spec.params:
            hint = _closest(key, valid)
            suggestion = f" Did you mean '{hint}'?" if hint else ""
            raise ModelError(
                f"Model family '{spec.name}' has no parameter {key!r}.{suggestion} "
                f"Valid parameters: {', '.join(valid)}."
            )
    for key, allowed in spec.choices.items():
        if key in params and params[key] not in allowed:
            raise ModelError(
                f"Model family '{spec.name}': {key}={params[key]!r} is not allowed; "
                f"choose one of {', '.join(repr(a) for a in allowed)}."
            )


def resolve_builder(spec: FamilySpec) -> Callable[..., "keras.Model"]:
    """Import and return the builder function named by ``spec.builder`` (``"module:function"``)."""
    module_name, _, func_name = spec.builder.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, func_name)


def build_model(family: str, *, input_shape: tuple[int, int, int], num_classes: int, **params: Any) -> "keras.Model":
    """Build a model of ``family``; unspecified params take the family defaults. Imports TensorFlow lazily."""
    spec = get_family(family)
    check_params(spec, params)
    kwargs = {**spec.params, **params}
    log.debug("building %s with input_shape=%s num_classes=%s %s", spec.name, input_shape, num_classes, kwargs)
    builder = resolve_builder(spec)
    return builder(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
