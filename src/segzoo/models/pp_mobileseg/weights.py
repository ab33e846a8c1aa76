"""Official PP-MobileSeg weights into the Keras model: PaddleSeg ``.pdparams`` and mmsegmentation ``.pth``.

Every Keras layer with weights is named after the PaddleSeg module holding them (see :mod:`.model`), so the key of a
Keras variable is ``{layer name}.{suffix}`` with the suffix of its kind (``Conv2D`` kernel -> ``weight`` as
``[O, I, kh, kw]``, BatchNorm ``gamma/beta/moving_mean/moving_variance`` -> ``weight/bias/_mean/_variance``,
the positional embedding -> ``pos_embed``). mmsegmentation's port (``projects/pp_mobileseg``) renames a few modules
(``ConvModule``: ``.c.`` -> ``.conv.``, ``stride_conv.0/1`` -> ``stride_conv.conv/bn``, ``proj.1`` -> ``proj``, SE
``conv1/2`` -> ``conv_act1/2.conv``, the MLP's depthwise conv -> ``dwconv.conv``) and names the BatchNorm statistics
``running_mean/running_var``: :func:`mmseg_key` maps one schema onto the other.

A checkpoint is either a whole model (``backbone.*`` and ``decode_head.*``: every Keras weight is filled exactly once)
or a backbone (``smb*``/``trans*`` keys, with or without ``backbone.``, optionally ``inj_module.*``: those layers
are filled exactly once, the rest keeps its initialisation). Missing, unused and mis-shaped keys are ModelErrors that
name them. Files are read by :mod:`segzoo.checkpoints` (a restricted unpickler: no code from the file runs, no
paddle or torch needed). The input normalization layer (``input_normalization: imagenet``) holds constants, not
checkpoint weights.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.checkpoints import WeightPlan, assign_weights, conv_oihw_to_hwio, depthwise_oihw_to_hwim, identity
from segzoo.errors import ModelError
from segzoo.models.base import WeightSource

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

SCHEMAS: tuple[str, ...] = ("paddle", "mmseg")
FIXED_LAYERS: tuple[str, ...] = ("input_normalization",)
"""Layers whose weights are constants of the architecture, never read from a checkpoint."""
BACKBONE_PREFIX = "backbone."
CLASSIFIER = "decode_head.conv_seg."
"""Keys of the class-logits convolution, left out when a whole-model checkpoint has another number of classes."""


# ---------------------------------------------------------------------------------------------- key maps
_SUFFIXES: Mapping[str, Mapping[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]] = MappingProxyType({
    "Conv2D": {"kernel": ("weight", conv_oihw_to_hwio), "bias": ("bias", identity)},
    "DepthwiseConv2D": {"kernel": ("weight", depthwise_oihw_to_hwim), "bias": ("bias", identity)},
    "BatchNormalization": {"gamma": ("weight", identity), "beta": ("bias", identity),
                           "moving_mean": ("_mean", identity), "moving_variance": ("_variance", identity)},
    "AxialPositionalEmbedding": {"pos_embed": ("pos_embed", identity)},
})
"""Keras layer kind -> variable name -> (PaddleSeg suffix, layout transform)."""

_MMSEG_RULES: tuple[tuple[str, str], ...] = (
    (r"\.mid_se\.conv([12])\.", r".mid_se.conv_act\1.conv."),
    (r"\.stride_conv\.0\.", ".stride_conv.conv."),
    (r"\.stride_conv\.1\.", ".stride_conv.bn."),
    (r"\.(proj|proj_encode_row|proj_encode_column)\.1\.", r".\1."),
    (r"\.mlp\.dwconv\.(weight|bias)$", r".mlp.dwconv.conv.\1"),
    (r"\.c\.", ".conv."),
    (r"\._mean$", ".running_mean"),
    (r"\._variance$", ".running_var"),
)


def mmseg_key(paddle_key: str) -> str:
    """The mmsegmentation name of a PaddleSeg state-dict name."""
    key = paddle_key
    for pattern, replacement in _MMSEG_RULES:
        key = re.sub(pattern, replacement, key)
    return key


def _in_scope(name: str, scope: str) -> bool:
    if scope == "model":
        return name not in FIXED_LAYERS
    if scope == "backbone":
        return name.startswith(("backbone.smb", "backbone.trans"))
    if scope == "aam":
        return name.startswith("backbone.inj_module")
    raise ModelError(f"unknown weight scope {scope!r}; choose model, backbone or aam")


def scope_layers(model: "keras.Model", scope: str) -> list[Any]:
    """The layers with checkpoint weights in ``scope`` (``model``: all but :data:`FIXED_LAYERS`)."""
    return [layer for layer in model.layers if layer.weights and _in_scope(layer.name, scope)]


def plan(model: "keras.Model", schema: str = "paddle", scope: str = "model") -> WeightPlan:
    """The weight plan of every checkpoint weight of ``model`` in ``scope`` (``model``, ``backbone`` or ``aam``).

    ``backbone``: the MobileNetV3 stacks and attention stages (``backbone.smb*``, ``backbone.trans*``); ``aam``:
    ``backbone.inj_module``. Keys keep their ``backbone.`` prefix. ModelError for a layer kind with no mapping.
    """
    if schema not in SCHEMAS:
        raise ModelError(f"unknown checkpoint schema {schema!r}; choose one of {', '.join(SCHEMAS)}")
    weight_plan = WeightPlan()
    for layer in scope_layers(model, scope):
        kind = type(layer).__name__
        if kind not in _SUFFIXES:
            raise ModelError(f"layer '{layer.name}' ({kind}) has weights but no checkpoint mapping")
        for variable in layer.weights:
            suffix, transform = _SUFFIXES[kind][variable.name]
            key = f"{layer.name}.{suffix}"
            weight_plan.add(variable, mmseg_key(key) if schema == "mmseg" else key, transform)
    return weight_plan


def official_shape(entry: Any) -> tuple[int, ...]:
    """The checkpoint shape of a planned weight (the inverse of its layout transform)."""
    shape = tuple(int(d) for d in entry.variable.shape)
    if entry.transform is conv_oihw_to_hwio:
        return (shape[3], shape[2], shape[0], shape[1])
    if entry.transform is depthwise_oihw_to_hwim:
        return (shape[2], shape[3], shape[0], shape[1])
    return shape


# ------------------------------------------------------------------------------------------------ imports
def _split_scope(state: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """``(state with backbone keys prefixed, "model" | "backbone")`` of a whole-model or backbone checkpoint."""
    if any(k.startswith("decode_head.") for k in state):
        return dict(state), "model"
    if any(k.startswith(BACKBONE_PREFIX) for k in state):
        return dict(state), "backbone"
    return {BACKBONE_PREFIX + k: v for k, v in state.items()}, "backbone"


def _classes_in(state: Mapping[str, np.ndarray]) -> int | None:
    weight = state.get(CLASSIFIER + "weight")
    return None if weight is None else int(np.shape(weight)[0])


def _assign(model: "keras.Model", weight_plan: WeightPlan, scopes: tuple[str, ...], state: Mapping[str, np.ndarray],
            schema: str, source: str, skip: str = "") -> int:
    """Fill the plan; every weight of the layers in ``scopes`` (but ``skip``-prefixed ones) must be planned."""
    covered = SimpleNamespace(weights=[w for scope in scopes for layer in scope_layers(model, scope)
                                       if not (skip and layer.name.startswith(skip.rstrip(".")))
                                       for w in layer.weights])
    ignore = ("num_batches_tracked",) if schema == "mmseg" else ()
    try:
        report = assign_weights(weight_plan, state, ignore=ignore, source=source, model=covered)
    except ModelError as exc:
        raise ModelError(f"{exc}\nCheck training.model.variant (tiny/base) and the number of classes against the "
                         f"checkpoint.") from None
    return report.assigned


def import_state_dict(model: "keras.Model", state: Mapping[str, np.ndarray], schema: str = "paddle",
                      source: str = "<state dict>") -> dict:
    """Fill ``model`` from a flat name -> array dict (see the module docstring); a summary of what was filled.

    A whole-model checkpoint whose class count differs from the model's fills everything but the class-logits
    convolution (``decode_head.conv_seg``), which keeps its initialisation (fine-tuning on another dataset); this
    is logged as a warning.
    """
    state, scope = _split_scope(state)
    if scope == "model":
        weight_plan = plan(model, schema, "model")
        file_classes, model_classes = _classes_in(state), int(model.outputs[0].shape[-1])
        skip = ""
        if file_classes is not None and file_classes != model_classes:
            log.warning("%s has %d classes, the model %d: every weight but %s* is loaded; the class logits start "
                        "from their initialisation", source, file_classes, model_classes, CLASSIFIER)
            skip = CLASSIFIER
            weight_plan = WeightPlan([e for e in weight_plan if not e.key.startswith(CLASSIFIER)])
            state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER)}
        filled = _assign(model, weight_plan, ("model",), state, schema, source, skip)
        return {"source": source, "schema": schema, "scope": "model without classifier" if skip else "model",
                "variables": filled}
    has_aam = any(k.startswith(BACKBONE_PREFIX + "inj_module.") for k in state)
    scopes = ("backbone", "aam") if has_aam else ("backbone",)
    weight_plan = WeightPlan([e for scope in scopes for e in plan(model, schema, scope)])
    filled = _assign(model, weight_plan, scopes, state, schema, source)
    log.info("%s: backbone weights loaded (%d variables%s); the %s keep their initialisation", source, filled,
             ", AAM included" if has_aam else "", "head" if has_aam else "AAM and head")
    return {"source": source, "schema": schema, "scope": "backbone+aam" if has_aam else "backbone",
            "variables": filled}


def read_checkpoint_state(path: str | Path) -> dict[str, np.ndarray]:
    """Flat name -> array of a ``.pdparams`` / ``.pth`` file, read without executing code from it."""
    from segzoo.checkpoints import read_state_dict

    return read_state_dict(path, strip=("module.",))


def import_paddle(model: "keras.Model", path: str | Path, params: Any = None) -> None:
    """PaddleSeg ``.pdparams`` (whole model or StrideFormer backbone) into ``model``."""
    import_state_dict(model, read_checkpoint_state(path), "paddle", str(path))


def import_mmseg(model: "keras.Model", path: str | Path, params: Any = None) -> None:
    """mmsegmentation ``.pth`` (whole model or backbone) into ``model``."""
    import_state_dict(model, read_checkpoint_state(path), "mmseg", str(path))


IMPORTERS: Mapping[str, Callable[..., None]] = MappingProxyType({
    ".pdparams": import_paddle, ".pth": import_mmseg,
})
"""File suffix -> importer, for ``pretrained_weights`` given as a path."""


def import_file(model: "keras.Model", path: str | Path, params: Any = None) -> None:
    """``pretrained_weights`` given as a path: PaddleSeg ``.pdparams`` or mmsegmentation ``.pth`` by suffix."""
    importer = IMPORTERS.get(Path(path).suffix.lower())
    if importer is None:
        raise ModelError(f"training.model.pretrained_weights: '{path}' is neither a PaddleSeg .pdparams nor an "
                         f"mmsegmentation .pth file (suffixes {', '.join(IMPORTERS)}).")
    importer(model, path, params)


# ------------------------------------------------------------------------------------------ official files
_PADDLE = "https://bj.bcebos.com/paddleseg/dygraph/ade20k"
_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/pp_mobileseg"
OFFICIAL_FORM: Mapping[str, str] = MappingProxyType(
    {"padding": "symmetric", "activation": "hardswish", "input_normalization": "imagenet"})
"""The options under which official weights compute the official function (inputs: RGB scaled to [0, 1])."""


def _source(name: str, variant: str, file_name: str, url: str, importer: str, num_classes: int | None,
            description: str, sha256: str | None = None) -> WeightSource:
    return WeightSource(name=name, file_name=file_name, url=url, importer=f"segzoo.models.pp_mobileseg.weights:"
                        f"{importer}", sha256=sha256, params={"variant": variant, **OFFICIAL_FORM},
                        num_classes=num_classes, description=description)


SOURCES: Mapping[str, WeightSource] = MappingProxyType({s.name: s for s in (
    _source("ade20k_tiny", "tiny", "pp_mobileseg_tiny_ade20k.pdparams", f"{_PADDLE}/pp_mobileseg_tiny/model.pdparams",
            "import_paddle", 150, "PaddleSeg PP-MobileSeg-Tiny trained on ADE20K 512x512 (36.39 mIoU published)."),
    _source("ade20k_base", "base", "pp_mobileseg_base_ade20k.pdparams", f"{_PADDLE}/pp_mobileseg_base/model.pdparams",
            "import_paddle", 150, "PaddleSeg PP-MobileSeg-Base trained on ADE20K 512x512 (41.57 mIoU published)."),
    _source("backbone_tiny", "tiny", "pp_mobileseg_tiny_pretrain.pdparams",
            f"{_PADDLE}/pp_mobileseg_tiny_pretrain/model.pdparams", "import_paddle", None,
            "PaddleSeg's pretrained StrideFormer-Tiny backbone (the ADE20K config's backbone.pretrained)."),
    _source("backbone_base", "base", "pp_mobileseg_base_pretrain.pdparams",
            f"{_PADDLE}/pp_mobileseg/pretrain/model.pdparams", "import_paddle", None,
            "PaddleSeg's pretrained StrideFormer-Base backbone (the ADE20K config's backbone.pretrained)."),
    _source("mmseg_tiny", "tiny", "pp_mobileseg_mobilenetv3_3rdparty-tiny-e4b35e96.pth",
            f"{_MMSEG}/pp_mobileseg_mobilenetv3_3rdparty-tiny-e4b35e96.pth", "import_mmseg", None,
            "mmsegmentation's conversion of the PaddleSeg tiny weights (projects/pp_mobileseg; loaded there as the "
            "backbone checkpoint).", sha256="e4b35e96"),
    _source("mmseg_base", "base", "pp_mobileseg_mobilenetv3_3rdparty-base-ed0be681.pth",
            f"{_MMSEG}/pp_mobileseg_mobilenetv3_3rdparty-base-ed0be681.pth", "import_mmseg", None,
            "mmsegmentation's conversion of the PaddleSeg base weights (projects/pp_mobileseg; loaded there as the "
            "backbone checkpoint).", sha256="ed0be681"),
)})
"""Official checkpoints (``training.model.pretrained_weights``). PaddleSeg publishes no checksum; OpenMMLab names
its files after the first 8 hex digits of their sha256, which are checked (a prefix) after a download."""

