"""Read official PyTorch and Paddle checkpoints without torch or paddle and without running code from them.

The format is detected from the content, not the file name:

- PyTorch zip archive (``torch.save`` since torch 1.6): starts with ``PK\\x03\\x04``;
- PyTorch legacy file (``.pth.tar`` and other pre-1.6 saves): a pickle of the magic number 0x1950a86a20f9469cfc6c;
- pickle (Paddle ``.pdparams``, mmseg/timm ``.pth`` written with plain pickle, any pickle of arrays): a pickle
  opcode first; Paddle's split of parameters over 4 GB (``UnpackBigParamInfor@@``) is joined back as
  ``paddle.load`` does;
- the tar layout of torch before 0.4 and NumPy ``.npy`` files are recognised and refused with a clear message.

All of them go through the restricted interpreter of :mod:`segzoo.checkpoints.pickle_vm` with the allow-list
of :mod:`segzoo.checkpoints.allowlist`; tensors come back as NumPy arrays.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.checkpoints.allowlist import allowed_globals
from segzoo.checkpoints.errors import CheckpointError
from segzoo.checkpoints.pickle_vm import (
    Global,
    GlobalRef,
    RestrictedUnpickler,
    UnresolvedObject,
    materialize,
    starts_like_pickle,
)
from segzoo.checkpoints.torch_files import MAGIC_NUMBER, read_torch_legacy, read_torch_zip
from segzoo.errors import ModelError
from segzoo.io import verified

logger = logging.getLogger(__name__)

PADDLE_NAME_TABLE = "StructuredToParameterName@@"
"""Entry of a Paddle state dict mapping structured names to Paddle's internal parameter names."""
PADDLE_SPLIT_TABLE = "UnpackBigParamInfor@@"
"""Entry of a Paddle state dict listing parameters saved in slices (over 4 GB at pickle protocol 2/3)."""

_HEAD_BYTES = 512


@dataclass(frozen=True)
class CheckpointFormat:
    """A container format: how to recognise it from its first bytes and how to read it."""

    name: str
    matches: Callable[[bytes], bool]
    read: Callable[[str, Mapping[str, Global], bool], Any]


def _is_zip(head: bytes) -> bool:
    return head[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _is_tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


def _is_npy(head: bytes) -> bool:
    return head[:6] == b"\x93NUMPY"


def _is_torch_legacy(head: bytes) -> bool:
    """Whether the file starts with the pickled magic number of legacy torch files."""
    try:
        return RestrictedUnpickler({}, source="").load(io.BytesIO(head)) == MAGIC_NUMBER
    except CheckpointError:
        return False


def _refuse_tar(path: str, table: Mapping[str, Global], lenient: bool) -> Any:
    raise CheckpointError(f"{path}: a tar checkpoint of torch before 0.4 is not supported; load it with an old "
                          "torch and save its state_dict() again")


def _refuse_npy(path: str, table: Mapping[str, Global], lenient: bool) -> Any:
    raise CheckpointError(f"{path}: a NumPy .npy array file, not a checkpoint; read it with "
                          "numpy.load(path, allow_pickle=False)")


def _read_zip(path: str, table: Mapping[str, Global], lenient: bool) -> Any:
    return read_torch_zip(path, table, lenient=lenient)


def _read_legacy(path: str, table: Mapping[str, Global], lenient: bool) -> Any:
    return read_torch_legacy(path, table, lenient=lenient)


def _read_pickle(path: str, table: Mapping[str, Global], lenient: bool) -> Any:
    """A plain pickle (Paddle ``.pdparams`` included)."""
    with open(path, "rb") as stream:
        obj = RestrictedUnpickler(table, source=path, lenient=lenient).load(stream)
        if stream.read(1):
            logger.warning("%s: data after the pickle is ignored", path)
    try:
        return _join_paddle_slices(materialize(obj))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


FORMATS: tuple[CheckpointFormat, ...] = (
    CheckpointFormat("torch zip", _is_zip, _read_zip),
    CheckpointFormat("torch tar", _is_tar, _refuse_tar),
    CheckpointFormat("numpy npy", _is_npy, _refuse_npy),
    CheckpointFormat("torch legacy", _is_torch_legacy, _read_legacy),
    CheckpointFormat("pickle", starts_like_pickle, _read_pickle),
)
"""The container formats, tried in this order on the file's first bytes."""


def _join_paddle_slices(obj: Any) -> Any:
    """Join parameters that Paddle saved in slices back into one array (what ``paddle.load`` does)."""
    if not isinstance(obj, dict) or PADDLE_SPLIT_TABLE not in obj:
        return obj
    table = obj.pop(PADDLE_SPLIT_TABLE)
    for name, info in table.items():
        parts = [np.asarray(obj.pop(part)).reshape(-1) for part in info["slices"]]
        obj[name] = np.concatenate(parts).reshape(tuple(info["OriginShape"]))
    return obj


def detect_format(path: str | Path) -> CheckpointFormat:
    """The container format of a checkpoint file, from its first bytes."""
    source = str(path)
    try:
        with open(path, "rb") as stream:
            head = stream.read(_HEAD_BYTES)
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read the checkpoint ({exc.strerror or exc})") from exc
    if not head:
        raise CheckpointError(f"{source}: the checkpoint file is empty")
    for fmt in FORMATS:
        if fmt.matches(head):
            return fmt
    raise CheckpointError(f"{source}: not a PyTorch, Paddle or pickle checkpoint (it starts with {head[:8]!r})")


def read_checkpoint(path: str | Path, *, lenient: bool = False) -> Any:
    """Read a checkpoint (torch zip, torch legacy, Paddle ``.pdparams`` or plain pickle) without running its code.

    Tensors and NumPy arrays come back as ``np.ndarray`` (bfloat16 as float32, native byte order). A global
    that is not on the allow-list is refused with a :class:`CheckpointError` unless ``lenient``, where it becomes
    an inert :class:`UnresolvedObject` (see :mod:`segzoo.checkpoints.allowlist` for the policy). A file segzoo
    wrote (it has a sha256 sidecar) is checked against its checksum first.
    """
    source = str(path)
    try:
        verified(path)
    except ModelError as exc:
        raise CheckpointError(str(exc)) from None
    fmt = detect_format(path)
    logger.debug("%s: reading as %s", source, fmt.name)
    try:
        return fmt.read(source, allowed_globals(), lenient)
    except RecursionError as exc:
        raise CheckpointError(f"{source}: the pickled object is nested too deeply") from exc
    except OSError as exc:
        raise CheckpointError(f"{source}: cannot read the checkpoint ({exc})") from exc


def read_state_dict(path: str | Path, prefixes: Sequence[str] = ("state_dict", "model"),
                    strip: Sequence[str] | str = ()) -> dict[str, np.ndarray]:
    """The weights of a checkpoint as a flat ``name -> np.ndarray`` dict.

    The first top-level entry named in ``prefixes`` that holds a dict is taken as the state dict (mmseg's
    ``state_dict``, SAM 2's ``model``); otherwise the top level is. Nested dicts are flattened with dots;
    Paddle's name table is dropped and its ``(name, array)`` tuples unwrapped; other non-array values are
    skipped with a warning. A leading prefix listed in ``strip`` (``"module."``) is removed from the names.
    The file is read leniently: objects outside the state dict (optimizer, logger) are never built; an
    unresolved object inside it is an error naming its key.
    """
    source = str(path)
    obj = read_checkpoint(path, lenient=True)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: the checkpoint holds one {type(obj).__name__} object, not a dict of "
                              "weights")
    top_keys = list(obj)
    chosen = next((p for p in prefixes if isinstance(obj.get(p), Mapping)), None)
    state = obj[chosen] if chosen is not None else obj
    arrays, skipped, unresolved = _collect_arrays(state)
    if unresolved:
        raise CheckpointError(f"{source}: the state dict{f' (entry {chosen!r})' if chosen else ''} holds objects "
                              f"that are not weights: {', '.join(unresolved[:10])}; pass prefixes=(...) naming the "
                              f"entry that holds the weights (top-level keys: {', '.join(map(str, top_keys[:10]))})")
    if skipped:
        logger.warning("%s: %d non-array entries skipped: %s%s", source, len(skipped), ", ".join(skipped[:10]),
                       ", ..." if len(skipped) > 10 else "")
    if not arrays:
        raise CheckpointError(f"{source}: no arrays found (top-level keys: {', '.join(map(str, top_keys[:10]))}); "
                              "pass prefixes=(...) naming the entry that holds the weights")
    arrays = _strip_prefixes(arrays, (strip,) if isinstance(strip, str) else tuple(strip), source)
    logger.info("%s: %d arrays, %d values%s", source, len(arrays), sum(a.size for a in arrays.values()),
                f" (from entry {chosen!r})" if chosen else "")
    return arrays


def _collect_arrays(state: Mapping[Any, Any]) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Flatten ``state`` into (arrays by dotted name, names of skipped values, unresolved objects)."""
    arrays: dict[str, np.ndarray] = {}
    skipped: list[str] = []
    unresolved: list[str] = []

    def visit(prefix: str, mapping: Mapping[Any, Any]) -> None:
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if key == PADDLE_NAME_TABLE and not prefix:
                continue
            if _is_paddle_tensor(value):
                value = value[1]
            if isinstance(value, np.ndarray):
                arrays[name] = value
            elif isinstance(value, np.generic):
                arrays[name] = np.asarray(value)
            elif isinstance(value, Mapping):
                visit(f"{name}.", value)
            elif isinstance(value, (UnresolvedObject, GlobalRef)):
                unresolved.append(f"{name} ({value.qualname})")
            else:
                skipped.append(name)

    visit("", state)
    return arrays, skipped, unresolved


def _is_paddle_tensor(value: Any) -> bool:
    """Paddle 2.1+ pickles a tensor as a ``(name, ndarray)`` tuple."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], np.ndarray))


def _strip_prefixes(arrays: dict[str, np.ndarray], strip: tuple[str, ...], source: str) -> dict[str, np.ndarray]:
    """Remove the first matching prefix of ``strip`` from each name; two names may not collide."""
    if not strip:
        return arrays
    out: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name, array in arrays.items():
        new = next((name[len(p):] for p in strip if p and name.startswith(p)), name)
        if new in out:
            raise CheckpointError(f"{source}: {origin[new]!r} and {name!r} both become {new!r} after stripping "
                                  f"{strip}")
        out[new], origin[new] = array, name
    return out
