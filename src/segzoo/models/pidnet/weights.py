"""Official PIDNet checkpoints into the Keras training graph, key by key, every weight filled exactly once.

Two key schemas are read (detected from the names):

- **official** (``XuJiacong/PIDNet``): ``conv1.0.weight``, ``layer3_.1.bn2.running_var``,
  ``spp.scale_process.2.weight``, ``seghead_d.conv2.bias``. The trained ``.pt`` files hold the state of the
  training wrapper ``FullModel``: keys prefixed ``model.`` (stripped, like ``module.`` of DataParallel) and possibly
  its loss buffers (``sem_loss.*``, ``bd_loss.*``: ignored).
- **mmseg** (mmsegmentation 1.x): ``backbone.stem.0.conv.weight``, ``backbone.p_branch_layers.1.0.conv2.bn.bias``,
  ``decode_head.i_head.conv.bn.weight``, ``decode_head.conv_seg.weight``. mmsegmentation's stem convolutions have no
  bias (followed by BatchNorm): the port's ``conv1.0.bias``/``conv1.3.bias`` are set to zero, which is the same network.

Because the Keras layer names are the official module paths, the official key of every Keras weight is its layer
name plus ``weight``/``bias``/``running_mean``/``running_var``, except two things the port changed on purpose:

- PAPPM's grouped conv is split per group: ``spp.scale_process.g<k>.{0,2}`` take slice ``k`` (of 4) of the official
  ``spp.scale_process.{0,2}`` tensors.
- Pag's ``channel_sum`` is a fixed all-ones 1x1 conv (the official ``torch.sum``): set to ones, not read.

Conv kernels go from PyTorch OIHW to Keras HWIO. BatchNorm running statistics go into the Keras BatchNormalization
layers (the training graph keeps them; :mod:`segzoo.models.pidnet.export` folds them).

Two parts can be imported:

- ``all`` (a trained checkpoint): every weight of the model comes from the file (the two training heads may be
  absent together, e.g. from an ``augment=False`` model: then they keep their initial values); a missing key, a key
  nothing uses or a shape mismatch is a ModelError naming them.
- ``backbone`` (ImageNet checkpoints, or a trained checkpoint to start a model with another number of classes): the
  three heads are left as they are and the file's head keys are not used. The I branch (``conv1``, ``layer1`` to
  ``layer5``) must be complete; other weights the file lacks keep their initial values (the ImageNet models have no
  D branch), and file keys that are not PIDNet weights (a classifier) are listed, not used. Both lists are logged and
  returned.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

SCHEMAS: tuple[str, ...] = ("official", "mmseg")
PARTS: tuple[str, ...] = ("all", "backbone")
HEADS: tuple[str, ...] = ("final_layer", "seghead_p", "seghead_d")
TRAINING_HEADS: tuple[str, ...] = ("seghead_p", "seghead_d")
I_BRANCH: tuple[str, ...] = ("conv1", "layer1", "layer2", "layer3", "layer4", "layer5")
IGNORED_PREFIXES: tuple[str, ...] = ("sem_loss.", "bd_loss.")
IGNORED_SUFFIXES: tuple[str, ...] = ("num_batches_tracked",)
STRIPPED_PREFIXES: tuple[str, ...] = ("model.", "module.")
GROUPED = re.compile(r"^spp\.scale_process\.g(\d)\.(0|2)$")
PROCESS_GROUPS = 4
BN_KEYS: tuple[tuple[str, str], ...] = (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                                        ("moving_variance", "running_var"))

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Assignment:
    """One Keras variable and where its value comes from: an official key (with a transform) or a constant."""

    variable: Any
    key: str | None
    transform: Transform | None = None
    constant: np.ndarray | None = None


# ------------------------------------------------------------------------------------------- transforms
def oihw_to_hwio(value: np.ndarray) -> np.ndarray:
    """PyTorch conv weight ``[O, I, H, W]`` -> Keras kernel ``[H, W, I, O]``."""
    return np.transpose(value, (2, 3, 1, 0))


def _rows(group: int, then: Transform | None = None) -> Transform:
    """Slice ``group`` of ``PROCESS_GROUPS`` along axis 0, then ``then``."""
    def take(value: np.ndarray) -> np.ndarray:
        size = value.shape[0] // PROCESS_GROUPS
        part = value[group * size:(group + 1) * size]
        return then(part) if then else part
    return take


# ------------------------------------------------------------------------------------------------- plan
def plan(model: "keras.Model") -> list[Assignment]:
    """Every weight of a PIDNet training graph with its official key (or constant), in layer order."""
    import keras

    entries: list[Assignment] = []
    for layer in model.layers:
        name = layer.name
        grouped = GROUPED.match(name)
        if isinstance(layer, keras.layers.BatchNormalization):
            base, transform = (f"spp.scale_process.0", _rows(int(grouped.group(1)))) if grouped else (name, None)
            entries += [Assignment(getattr(layer, attr), f"{base}.{key}", transform) for attr, key in BN_KEYS]
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            raise ModelError(f"layer '{name}': official weights go into the training graph (build), not into an "
                             f"exported (folded) model; import them first, then export.")
        elif isinstance(layer, keras.layers.Conv2D):
            if name.endswith(".channel_sum"):
                entries.append(Assignment(layer.kernel, None, constant=np.ones(tuple(layer.kernel.shape), np.float32)))
                continue
            base, transform = ((f"spp.scale_process.2", _rows(int(grouped.group(1)), oihw_to_hwio)) if grouped
                               else (name, oihw_to_hwio))
            entries.append(Assignment(layer.kernel, f"{base}.weight", transform))
            if layer.use_bias:
                entries.append(Assignment(layer.bias, f"{base}.bias"))
        elif layer.weights:
            raise ModelError(f"layer '{name}' ({type(layer).__name__}) has weights the PIDNet importer does not know.")
    return entries


# ------------------------------------------------------------------------------------------- mmseg names
def _cb(index: str, conv: str = "0") -> str:
    """``conv`` for the conv index of a ``Sequential(conv, bn)`` pair, else ``bn``."""
    return "conv" if index == conv else "bn"


MMSEG_LAYERS: dict[str, str] = {
    "layer1": "stem.2", "layer2": "stem.4", "layer3": "i_branch_layers.0", "layer4": "i_branch_layers.1",
    "layer5": "i_branch_layers.2", "layer3_": "p_branch_layers.0", "layer4_": "p_branch_layers.1",
    "layer5_": "p_branch_layers.2", "layer3_d": "d_branch_layers.0", "layer4_d": "d_branch_layers.1",
    "layer5_d": "d_branch_layers.2",
}
MMSEG_HEADS: dict[str, tuple[str, str]] = {"final_layer": ("i_head", "conv_seg"), "seghead_p": ("p_head", "p_cls_seg"),
                                           "seghead_d": ("d_head", "d_cls_seg")}
MMSEG_RULES: tuple[tuple[re.Pattern, Callable[[re.Match], str | None]], ...] = (
    (re.compile(r"^conv1\.([03])\.bias$"), lambda m: None),
    (re.compile(r"^conv1\.([0134])\.(\w+)$"),
     lambda m: f"backbone.stem.{0 if m[1] in '01' else 1}.{'conv' if m[1] in '03' else 'bn'}.{m[2]}"),
    (re.compile(r"^(layer\d_?d?)((?:\.\d+)?)\.(conv|bn)(\d)\.(\w+)$"),
     lambda m: f"backbone.{MMSEG_LAYERS[m[1]]}{m[2]}.conv{m[4]}.{m[3] if m[3] == 'bn' else 'conv'}.{m[5]}"),
    (re.compile(r"^(layer\d_?d?)((?:\.\d+)?)\.downsample\.([01])\.(\w+)$"),
     lambda m: f"backbone.{MMSEG_LAYERS[m[1]]}{m[2]}.downsample.{_cb(m[3])}.{m[4]}"),
    (re.compile(r"^(compression|diff)([34])\.([01])\.(\w+)$"),
     lambda m: f"backbone.{m[1]}_{int(m[2]) - 2}.{_cb(m[3])}.{m[4]}"),
    (re.compile(r"^pag([34])\.f_([xy])\.([01])\.(\w+)$"),
     lambda m: f"backbone.pag_{int(m[1]) - 2}.f_{'p' if m[2] == 'x' else 'i'}.{_cb(m[3])}.{m[4]}"),
    (re.compile(r"^spp\.scale0\.([02])\.(\w+)$"), lambda m: f"backbone.spp.scales.0.{_cb(m[1], '2')}.{m[2]}"),
    (re.compile(r"^spp\.scale([1-4])\.([13])\.(\w+)$"),
     lambda m: f"backbone.spp.scales.{m[1]}.1.{_cb(m[2], '3')}.{m[3]}"),
    (re.compile(r"^spp\.scale_process\.([02])\.(\w+)$"), lambda m: f"backbone.spp.processes.{_cb(m[1], '2')}.{m[2]}"),
    (re.compile(r"^spp\.process([1-4])\.([02])\.(\w+)$"),
     lambda m: f"backbone.spp.processes.{int(m[1]) - 1}.{_cb(m[2], '2')}.{m[3]}"),
    (re.compile(r"^spp\.(compression|shortcut)\.([02])\.(\w+)$"),
     lambda m: f"backbone.spp.{m[1]}.{_cb(m[2], '2')}.{m[3]}"),
    (re.compile(r"^dfm\.conv_([pi])\.([01])\.(\w+)$"), lambda m: f"backbone.dfm.f_{m[1]}.{_cb(m[2])}.{m[3]}"),
    (re.compile(r"^dfm\.conv\.([02])\.(\w+)$"), lambda m: f"backbone.dfm.conv.{_cb(m[1], '2')}.{m[2]}"),
    (re.compile(r"^(final_layer|seghead_[pd])\.(bn1|conv1|bn2)\.(\w+)$"),
     lambda m: f"decode_head.{MMSEG_HEADS[m[1]][0]}."
               f"{ {'bn1': 'conv.bn', 'conv1': 'conv.conv', 'bn2': 'norm'}[m[2]] }.{m[3]}"),
    (re.compile(r"^(final_layer|seghead_[pd])\.conv2\.(\w+)$"), lambda m: f"decode_head.{MMSEG_HEADS[m[1]][1]}.{m[2]}"),
)


def mmseg_key(official: str) -> str | None:
    """mmsegmentation's name of an official key; None where mmsegmentation has no such weight (stem conv bias)."""
    for pattern, rename in MMSEG_RULES:
        match = pattern.match(official)
        if match:
            return rename(match)
    raise ModelError(f"no mmsegmentation name is known for the PIDNet weight '{official}'.")


# ---------------------------------------------------------------------------------------- the state dict
def normalize_keys(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Keys without a leading ``model.``/``module.`` (when every key has it); values as arrays."""
    keys = list(state)
    for prefix in STRIPPED_PREFIXES:
        if keys and all(k.startswith(prefix) or k.startswith(IGNORED_PREFIXES) for k in keys) and \
                any(k.startswith(prefix) for k in keys):
            state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
            keys = list(state)
    return {k: np.asarray(v) for k, v in state.items()}


def detect_schema(state: Mapping[str, Any]) -> str:
    """``mmseg`` when the keys use mmsegmentation's module names, else ``official``."""
    mmseg = ("backbone.", "decode_head.", "stem.", "i_branch_layers.")
    return "mmseg" if any(k.startswith(mmseg) for k in state) else "official"


def _file_key(key: str, schema: str, bare_backbone: bool) -> str | None:
    if schema == "official":
        return key
    name = mmseg_key(key)
    if name is not None and bare_backbone and name.startswith("backbone."):
        return name[len("backbone."):]
    return name


def _ignored(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key.endswith(IGNORED_SUFFIXES)


def _head_of(key: str | None) -> str | None:
    if key is None:
        return None
    top = key.split(".", 1)[0]
    return top if top in HEADS else None


def _fmt(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


@dataclass
class _Resolved:
    values: list[tuple[Any, np.ndarray]]
    missing: dict[str, str]
    mismatched: list[str]
    used: set[str]


def _resolve(entries: list[Assignment], state: Mapping[str, np.ndarray], schema: str) -> _Resolved:
    """Look up every planned entry in ``state``: values to assign, missing keys (file name -> official name),
    shape mismatches, file keys used."""
    bare = schema == "mmseg" and not any(k.startswith(("backbone.", "decode_head.")) for k in state)
    values, missing, mismatched, used = [], {}, [], set()
    for entry in entries:
        if entry.key is None:
            values.append((entry.variable, entry.constant))
            continue
        file_key = _file_key(entry.key, schema, bare)
        if file_key is None:  # mmsegmentation has no stem conv bias: zero is the same network
            values.append((entry.variable, np.zeros(tuple(entry.variable.shape), np.float32)))
            continue
        if file_key not in state:
            missing[file_key] = entry.key
            continue
        used.add(file_key)
        value = state[file_key]
        value = entry.transform(value) if entry.transform else value
        if tuple(value.shape) != tuple(entry.variable.shape):
            mismatched.append(f"{file_key}: file {tuple(state[file_key].shape)}, model needs "
                              f"{tuple(entry.variable.shape)} ({entry.variable.path})")
            continue
        values.append((entry.variable, value))
    return _Resolved(values, missing, mismatched, used)


def _absent_training_heads(entries: list[Assignment], missing: Mapping[str, str]) -> list[str]:
    """The training heads whose every key is missing (a checkpoint of an ``augment=False`` model)."""
    missing_official = set(missing.values())
    return [head for head in TRAINING_HEADS
            if any(_head_of(e.key) == head for e in entries)
            and all(e.key in missing_official for e in entries if _head_of(e.key) == head)]


def _is_head_file_key(key: str, schema: str) -> bool:
    if schema == "mmseg":
        return key.startswith("decode_head.")
    return key.split(".", 1)[0] in HEADS


def load_state_dict(model: "keras.Model", state: Mapping[str, Any], *, source: str = "state dict",
                    schema: str = "auto", part: str = "all") -> dict:
    """Fill ``model`` (a PIDNet training graph) from a flat state dict; a summary of what was used.

    ModelError naming the keys when a key is missing (``all``; the I branch for ``backbone``), unused (``all``),
    mis-shaped, or when a Keras variable would be filled twice or not at all.
    """
    if part not in PARTS:
        raise ModelError(f"part={part!r}: choose one of {', '.join(PARTS)}.")
    state = normalize_keys(state)
    schema = detect_schema(state) if schema == "auto" else schema
    if schema not in SCHEMAS:
        raise ModelError(f"schema={schema!r}: choose one of auto, {', '.join(SCHEMAS)}.")
    entries = plan(model)
    if part == "backbone":
        entries = [e for e in entries if _head_of(e.key) is None]
    resolved = _resolve(entries, state, schema)
    if part == "all":
        absent = _absent_training_heads(entries, resolved.missing)
        missing = [k for k, official in resolved.missing.items() if _head_of(official) not in absent]
        left_initial = [f"{head}.*" for head in absent]
    else:
        missing = [k for k, official in resolved.missing.items() if official.split(".", 1)[0] in I_BRANCH]
        left_initial = [k for k in resolved.missing if k not in missing]
    unused = sorted(k for k in state if k not in resolved.used and not _ignored(k))
    unknown = [k for k in unused if not (part == "backbone" and _is_head_file_key(k, schema))]
    problems = []
    if missing:
        problems.append(f"missing key(s) {_fmt(missing)}")
    if resolved.mismatched:
        problems.append(f"mis-shaped key(s) {_fmt(resolved.mismatched)}")
    if part == "all" and unknown:
        problems.append(f"key(s) nothing in the model uses: {_fmt(unknown)}")
    if problems:
        raise ModelError(f"{source} ({schema} PIDNet key names) does not fit model '{model.name}' (part '{part}'): "
                         f"{'; '.join(problems)}. Check the variant (s/m/l) and num_classes, or import part "
                         f"'backbone' to leave the heads out.")
    _assign(model, resolved.values, complete=part == "all" and not left_initial)
    summary = {"source": source, "schema": schema, "part": part, "filled": len(resolved.values),
               "left_initial": left_initial, "unused": unknown if part == "backbone" else []}
    log.info("imported %d weights of %s from %s (%s names, part %s)%s%s", len(resolved.values), model.name, source,
             schema, part, f"; left at their initial values: {_fmt(left_initial)}" if left_initial else "",
             f"; not PIDNet weights, unused: {_fmt(unknown)}" if part == "backbone" and unknown else "")
    return summary


def _assign(model: "keras.Model", values: list[tuple[Any, np.ndarray]], complete: bool) -> None:
    """Assign every value; ModelError if a variable comes twice, or (``complete``) if one is never assigned."""
    seen: set[str] = set()
    for variable, value in values:
        if variable.path in seen:
            raise ModelError(f"PIDNet importer: Keras weight '{variable.path}' would be filled twice.")
        seen.add(variable.path)
    if complete:
        never = [v.path for v in model.weights if v.path not in seen]
        if never:
            raise ModelError(f"PIDNet importer: Keras weight(s) {_fmt(never)} of '{model.name}' have no source.")
    for variable, value in values:
        variable.assign(np.asarray(value, dtype=variable.dtype))


# ------------------------------------------------------------------------------------------------ files
MMSEG_HASH = re.compile(r"-([0-9a-f]{8})\.pth$")
"""mmsegmentation's published file names end with the first 8 hex digits of the file's sha256."""


def check_hash_prefix(path: Path) -> None:
    """ModelError if an mmsegmentation file name's sha256 prefix does not match the file's content."""
    from segzoo.models.weights_store import sha256_of

    match = MMSEG_HASH.search(path.name)
    if match is None:
        return
    actual = sha256_of(path)
    if not actual.startswith(match.group(1)):
        raise ModelError(f"'{path}': its sha256 starts with {actual[:8]}, but the published file's name says "
                         f"{match.group(1)}: the file is damaged or not the published one; download it again.")


def read_state(path: str | Path) -> dict[str, np.ndarray]:
    """The flat state dict of a PyTorch checkpoint file (read without executing code from it)."""
    from segzoo.checkpoints import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"PIDNet checkpoint not found: '{path}'. Give the path of a downloaded .pt/.pth/.pth.tar "
                         f"file.")
    check_hash_prefix(path)
    return read_state_dict(path)


def classifier_fits(model: "keras.Model", state: Mapping[str, Any]) -> bool:
    """Whether ``state`` has a main classifier with the model's number of classes."""
    state = normalize_keys(state)
    key = "final_layer.conv2.weight" if detect_schema(state) == "official" else "decode_head.conv_seg.weight"
    classes = int(model.get_layer("final_layer.conv2").kernel.shape[-1])
    return key in state and int(np.shape(state[key])[0]) == classes


def import_weights(model: "keras.Model", path: str | Path, params: Any = None) -> dict:
    """Fill ``model`` from a checkpoint file: everything when its classifier has the model's classes, else the
    backbone (the heads keep their initial values; logged)."""
    state = read_state(path)
    part = "all" if classifier_fits(model, state) else "backbone"
    if part == "backbone":
        log.info("%s: no classifier for %d classes in the file: importing the backbone only", path,
                 int(model.get_layer("final_layer.conv2").kernel.shape[-1]))
    return load_state_dict(model, state, source=str(path), part=part)


def import_backbone(model: "keras.Model", path: str | Path, params: Any = None) -> dict:
    """Fill ``model``'s backbone from a checkpoint file (ImageNet checkpoints; see :func:`load_state_dict`)."""
    return load_state_dict(model, read_state(path), source=str(path), part="backbone")
