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
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.models.base import WeightSource

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

SCHEMAS: tuple[str, ...] = ("paddle", "mmseg")
FIXED_LAYERS: tuple[str, ...] = ("input_normalization",)
"""Layers whose weights are constants of the architecture, never read from a checkpoint."""
BACKBONE_PREFIX = "backbone."
SHOWN = 8
CLASSIFIER = "decode_head.conv_seg."
"""Keys of the class-logits convolution, left out when a whole-model checkpoint has another number of classes."""


# ------------------------------------------------------------------------------------------- transforms
def conv_kernel(weight: np.ndarray) -> np.ndarray:
    """``[O, I, kh, kw]`` -> Keras ``Conv2D`` ``[kh, kw, I, O]``."""
    return np.transpose(weight, (2, 3, 1, 0))


def depthwise_kernel(weight: np.ndarray) -> np.ndarray:
    """``[C, 1, kh, kw]`` -> Keras ``DepthwiseConv2D`` ``[kh, kw, C, 1]``."""
    return np.transpose(weight, (2, 3, 0, 1))


def identity(weight: np.ndarray) -> np.ndarray:
    """The array unchanged."""
    return weight


def _official_shape(variable: Any, transform: Callable) -> tuple[int, ...]:
    """The official shape that ``transform`` turns into the Keras variable's shape."""
    shape = tuple(int(d) for d in variable.shape)
    if transform is conv_kernel:
        return (shape[3], shape[2], shape[0], shape[1])
    if transform is depthwise_kernel:
        return (shape[2], shape[3], shape[0], shape[1])
    return shape


@dataclass(frozen=True)
class Entry:
    """One Keras variable, the official key that fills it, and the array transform."""

    variable: Any
    key: str
    transform: Callable[[np.ndarray], np.ndarray]

    @property
    def official_shape(self) -> tuple[int, ...]:
        return _official_shape(self.variable, self.transform)


# ---------------------------------------------------------------------------------------------- key maps
_SUFFIXES = {
    "Conv2D": {"kernel": ("weight", conv_kernel), "bias": ("bias", identity)},
    "DepthwiseConv2D": {"kernel": ("weight", depthwise_kernel), "bias": ("bias", identity)},
    "BatchNormalization": {"gamma": ("weight", identity), "beta": ("bias", identity),
                           "moving_mean": ("_mean", identity), "moving_variance": ("_variance", identity)},
    "AxialPositionalEmbedding": {"pos_embed": ("pos_embed", identity)},
}

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


def plan(model: "keras.Model", schema: str = "paddle", scope: str = "model") -> list[Entry]:
    """Entries for every checkpoint weight of ``model`` in ``scope`` (``model``, ``backbone`` or ``aam``).

    ``backbone``: the MobileNetV3 stacks and attention stages (``backbone.smb*``, ``backbone.trans*``); ``aam``:
    ``backbone.inj_module``. Keys keep their ``backbone.`` prefix. ModelError for a layer kind with no mapping.
    """
    if schema not in SCHEMAS:
        raise ModelError(f"unknown checkpoint schema {schema!r}; choose one of {', '.join(SCHEMAS)}")
    entries: list[Entry] = []
    for layer in model.layers:
        if not layer.weights or layer.name in FIXED_LAYERS or not _in_scope(layer.name, scope):
            continue
        kind = type(layer).__name__
        if kind not in _SUFFIXES:
            raise ModelError(f"layer '{layer.name}' ({kind}) has weights but no checkpoint mapping")
        for variable in layer.weights:
            suffix, transform = _SUFFIXES[kind][variable.name]
            key = f"{layer.name}.{suffix}"
            entries.append(Entry(variable, mmseg_key(key) if schema == "mmseg" else key, transform))
    return entries


def _in_scope(name: str, scope: str) -> bool:
    if scope == "model":
        return True
    if scope == "backbone":
        return name.startswith(("backbone.smb", "backbone.trans"))
    if scope == "aam":
        return name.startswith("backbone.inj_module")
    raise ModelError(f"unknown weight scope {scope!r}; choose model, backbone or aam")


# -------------------------------------------------------------------------------------------- assignment
def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN else "")


def check_entries(entries: list[Entry], state: Mapping[str, np.ndarray], source: str,
                  ignore: tuple[str, ...] = ()) -> None:
    """ModelError naming planned-twice variables/keys, missing keys, unused keys and shape mismatches."""
    keys = [e.key for e in entries]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ModelError(f"{source}: the weight plan uses these keys more than once: {_listed(twice)}")
    planned = set(keys)
    missing = [k for k in keys if k not in state]
    unused = sorted(k for k in state if k not in planned and not any(i in k for i in ignore))
    problems = []
    if missing:
        problems.append(f"{len(missing)} weight(s) the model needs are missing from the file: {_listed(missing)}")
    if unused:
        problems.append(f"{len(unused)} key(s) in the file are used by no layer: {_listed(unused)}")
    bad = [f"{e.key} (file {tuple(np.shape(state[e.key]))}, model needs {e.official_shape})"
           for e in entries if e.key in state and tuple(np.shape(state[e.key])) != e.official_shape]
    if bad:
        problems.append(f"{len(bad)} weight(s) have the wrong shape: {_listed(bad)}")
    if problems:
        raise ModelError(f"{source}: checkpoint does not match this PP-MobileSeg model: " + "; ".join(problems)
                         + ". Check training.model.variant and the number of classes against the checkpoint.")


def assign(entries: list[Entry], state: Mapping[str, np.ndarray], source: str,
           ignore: tuple[str, ...] = ()) -> int:
    """Fill every entry's variable from ``state`` after :func:`check_entries`; the number of variables filled."""
    check_entries(entries, state, source, ignore)
    for entry in entries:
        value = entry.transform(np.asarray(state[entry.key], dtype=np.float32))
        entry.variable.assign(value)
    return len(entries)


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


def import_state_dict(model: "keras.Model", state: Mapping[str, np.ndarray], schema: str = "paddle",
                      source: str = "<state dict>") -> dict:
    """Fill ``model`` from a flat name -> array dict (see the module docstring); a summary of what was filled.

    A whole-model checkpoint whose class count differs from the model's fills everything but the class-logits
    convolution (``decode_head.conv_seg``), which keeps its initialisation (fine-tuning on another dataset); this
    is logged as a warning.
    """
    ignore = ("num_batches_tracked",) if schema == "mmseg" else ()
    state, scope = _split_scope(state)
    if scope == "model":
        entries = plan(model, schema, "model")
        file_classes, model_classes = _classes_in(state), int(model.outputs[0].shape[-1])
        if file_classes is not None and file_classes != model_classes:
            log.warning("%s has %d classes, the model %d: every weight but %s* is loaded; the class logits start "
                        "from their initialisation", source, file_classes, model_classes, CLASSIFIER)
            entries = [e for e in entries if not e.key.startswith(CLASSIFIER)]
            state = {k: v for k, v in state.items() if not k.startswith(CLASSIFIER)}
        filled = assign(entries, state, source, ignore)
        return {"source": source, "schema": schema, "scope": "model" if file_classes == model_classes
                else "model without classifier", "variables": filled}
    entries = plan(model, schema, "backbone")
    aam = plan(model, schema, "aam")
    has_aam = any(k.startswith(BACKBONE_PREFIX + "inj_module.") for k in state)
    if has_aam:
        entries += aam
    filled = assign(entries, state, source, ignore)
    log.info("%s: backbone weights loaded (%d variables%s); the %s keep their initialisation", source, filled,
             ", AAM included" if has_aam else "", "head" if has_aam else "AAM and head")
    return {"source": source, "schema": schema, "scope": "backbone+aam" if has_aam else "backbone",
            "variables": filled}


def read_checkpoint_state(path: str | Path) -> dict[str, np.ndarray]:
    """Flat name -> array of a ``.pdparams`` / ``.pth`` file, read without executing code from it."""
    from segzoo.checkpoints import read_state_dict

    return read_state_dict(path, strip=("model.", "module."))


def import_paddle(model: "keras.Model", path: str | Path) -> dict:
    """PaddleSeg ``.pdparams`` (whole model or StrideFormer backbone) into ``model``."""
    return import_state_dict(model, read_checkpoint_state(path), "paddle", str(path))


def import_mmseg(model: "keras.Model", path: str | Path) -> dict:
    """mmsegmentation ``.pth`` (whole model or backbone) into ``model``."""
    return import_state_dict(model, read_checkpoint_state(path), "mmseg", str(path))


IMPORTERS: Mapping[str, str] = MappingProxyType({
    ".pdparams": "segzoo.models.pp_mobileseg.weights:import_paddle",
    ".pth": "segzoo.models.pp_mobileseg.weights:import_mmseg",
})
"""File suffix -> importer, for ``pretrained_weights`` given as a path."""


# ------------------------------------------------------------------------------------------ official files
_PADDLE = "https://bj.bcebos.com/paddleseg/dygraph/ade20k"
_MMSEG = "https://download.openmmlab.com/mmsegmentation/v0.5/pp_mobileseg"
OFFICIAL_FORM: Mapping[str, str] = MappingProxyType(
    {"padding": "symmetric", "activation": "hardswish", "input_normalization": "imagenet"})
"""The options under which official weights compute the official function (inputs: RGB scaled to [0, 1])."""


def _source(name: str, variant: str, file_name: str, url: str, importer: str, num_classes: int | None,
            description: str) -> WeightSource:
    return WeightSource(name=name, file_name=file_name, url=url, importer=f"segzoo.models.pp_mobileseg.weights:"
                        f"{importer}", params={"variant": variant, **OFFICIAL_FORM}, num_classes=num_classes,
                        description=description)


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
            "backbone checkpoint). OpenMMLab names files after the first 8 hex digits of their sha256: e4b35e96."),
    _source("mmseg_base", "base", "pp_mobileseg_mobilenetv3_3rdparty-base-ed0be681.pth",
            f"{_MMSEG}/pp_mobileseg_mobilenetv3_3rdparty-base-ed0be681.pth", "import_mmseg", None,
            "mmsegmentation's conversion of the PaddleSeg base weights (projects/pp_mobileseg; loaded there as the "
            "backbone checkpoint). sha256 starts with ed0be681 (OpenMMLab file naming)."),
)})
"""Official checkpoints (``training.model.pretrained_weights``); no sha256 is published for any of them."""


def source_conflicts(name: str, params: Mapping[str, Any]) -> list[str]:
    """``"<key>: ..."`` for each option of ``params`` that the official source ``name`` cannot run under."""
    source = SOURCES[name]
    return [f"{key}: pretrained_weights '{name}' needs {key}={value!r} (got {params.get(key)!r})"
            for key, value in source.params.items() if params.get(key) != value]


def weights_dir() -> Path:
    """Where named official checkpoints are looked for: the Keras cache folder (nothing is ever downloaded)."""
    from segzoo.models.deeplabv3 import keras_cache_dir

    return keras_cache_dir()


def resolve_pretrained(value: str) -> tuple[Path, str]:
    """``(file, importer)`` of ``pretrained_weights``: a source name of :data:`SOURCES` or a checkpoint path."""
    if value in SOURCES:
        source = SOURCES[value]
        path = weights_dir() / source.file_name
        if not path.is_file():
            raise ModelError(f"pretrained_weights '{value}': file '{source.file_name}' is not in '{path.parent}'. "
                             f"segzoo never downloads weights at run time: fetch {source.url} on a machine with "
                             f"network access and save it there under that name (or set KERAS_HOME).")
        return path, source.importer
    path = Path(value).expanduser()
    if not path.is_file():
        raise ModelError(f"pretrained_weights: no file '{path}' and no official source of that name; give a "
                         f".pdparams or .pth file or one of {', '.join(SOURCES)}.")
    importer = IMPORTERS.get(path.suffix.lower())
    if importer is None:
        raise ModelError(f"pretrained_weights: '{path}' is neither a PaddleSeg .pdparams nor an mmsegmentation .pth "
                         f"file (suffixes {', '.join(IMPORTERS)}).")
    return path, importer


def load_pretrained(model: "keras.Model", value: str | None) -> dict | None:
    """Import ``pretrained_weights`` (source name or path) into ``model``; None when there is nothing to load."""
    if value is None:
        return None
    from segzoo.models.base import resolve

    path, importer = resolve_pretrained(str(value))
    summary = resolve(importer)(model, path)
    log.info("pretrained weights %s: %s, %d variables", path, summary["scope"], summary["variables"])
    return summary
