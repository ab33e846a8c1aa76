"""The two PyTorch checkpoint containers: the zip archive of ``torch.save`` (torch >= 1.6) and the legacy
sequence of pickles (``_use_new_zipfile_serialization=False``, most ``.pth.tar`` files of older projects).

Zip archive (every entry under one folder, ``<root>/``, usually the file name without its extension or
``archive``): ``data.pkl`` (the pickled object; tensors point at storages through persistent ids
``('storage', StorageType, key, location, numel)``), ``data/<key>`` (each storage's raw bytes), ``byteorder``
(``little``/``big``; absent in files before torch 2.1, which are little-endian), ``version``. Storage sizes
must match their records exactly, as torch itself requires.

Legacy file: five pickles in a row (magic number 0x1950a86a20f9469cfc6c, protocol version 1001, a ``sys_info``
dict, the object with persistent ids ``('storage', StorageType, root_key, location, numel, view_metadata)``, the
list of storage keys), then for each key in that order an int64 little-endian element count and the storage's
little-endian bytes.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import zipfile
from collections import Counter
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from segzoo.checkpoints.errors import CheckpointError
from segzoo.checkpoints.pickle_vm import Global, RestrictedUnpickler, materialize
from segzoo.checkpoints.torch_tensors import StorageRef, TorchDType, dtype_marker

logger = logging.getLogger(__name__)

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
"""First pickle of a legacy (pre-1.6) torch file."""
PROTOCOL_VERSION = 1001
"""Second pickle of a legacy torch file."""


def _text(value: Any, what: str) -> str:
    """A persistent-id string field (Python 2 files may hold bytes)."""
    if isinstance(value, bytes):
        return value.decode("ascii")
    if isinstance(value, str):
        return value
    raise ValueError(f"{what} must be a string, not {value!r}")


def _parse_storage_id(pid: Any, length: int) -> tuple[TorchDType, str, int, Any]:
    """``(dtype, key, numel, view_metadata)`` of a storage persistent id of ``length`` fields."""
    if not isinstance(pid, tuple) or not pid:
        raise ValueError(f"persistent id must be a tuple, not {type(pid).__name__}")
    kind = _text(pid[0], "persistent id kind")
    if kind == "module":
        raise ValueError("the file pickles a whole nn.Module with its source code; save its state_dict() instead")
    if kind != "storage" or len(pid) != length:
        raise ValueError(f"expected ('storage', type, key, location, numel{', view' if length == 6 else ''}), got "
                         f"{kind!r} with {len(pid)} fields")
    dtype = dtype_marker(pid[1], "storage type")
    key = _text(pid[2], "storage key") if not isinstance(pid[2], int) else str(pid[2])
    _text(pid[3], "storage location")
    numel = pid[4]
    if not isinstance(numel, int) or numel < 0:
        raise ValueError(f"storage size must be a non-negative int, not {numel!r}")
    return dtype, key, numel, pid[5] if length == 6 else None


class _Storages:
    """Bookkeeping shared by both containers: dtype per key, tensors per key, cached bytes."""

    def __init__(self, source: str, byteorder: str) -> None:
        self.source = source
        self.byteorder = byteorder
        self._dtypes: dict[str, tuple[TorchDType, int]] = {}
        self._tensors: Counter[str] = Counter()
        self._raw: dict[str, np.ndarray] = {}

    def _declare(self, key: str, dtype: TorchDType, numel: int) -> None:
        known = self._dtypes.setdefault(key, (dtype, numel))
        if known != (dtype, numel):
            raise ValueError(f"storage {key} is declared as {known[1]} x {known[0].name} and as {numel} x "
                             f"{dtype.name}")

    def note_tensor(self, key: str) -> None:
        self._tensors[key] += 1

    def tensor_count(self, key: str) -> int:
        return self._tensors[key]


class ZipStorages(_Storages):
    """Storages of a torch zip archive, read from ``<root>/data/<key>`` on first use."""

    def __init__(self, archive: zipfile.ZipFile, root: str, source: str, byteorder: str, file_size: int) -> None:
        super().__init__(source, byteorder)
        self._archive = archive
        self._root = root
        self._file_size = file_size

    def persistent_load(self, pid: Any) -> StorageRef:
        """Resolve ``('storage', StorageType, key, location, numel)``."""
        dtype, key, numel, _ = _parse_storage_id(pid, 5)
        self._declare(key, dtype, numel)
        return StorageRef(self, key, dtype, numel)

    def raw(self, key: str, dtype: TorchDType, numel: int) -> np.ndarray:
        """The record's bytes; its size must be exactly ``numel * itemsize``."""
        if key in self._raw:
            return self._raw[key]
        name = f"{self._root}data/{key}"
        try:
            info = self._archive.getinfo(name)
        except KeyError:
            raise ValueError(f"storage record {name} is missing from the archive") from None
        nbytes = numel * dtype.itemsize
        if info.file_size != nbytes:
            raise ValueError(f"storage record {name} holds {info.file_size} bytes but the pickle declares {numel} "
                             f"x {dtype.name} = {nbytes} bytes (truncated or corrupt file)")
        if info.compress_type == zipfile.ZIP_STORED and info.header_offset + nbytes > self._file_size:
            raise ValueError(f"storage record {name} claims {nbytes} bytes, more than the file holds (corrupt file)")
        buffer = np.empty(nbytes, dtype=np.uint8)
        with self._archive.open(info) as handle:
            _read_exactly(handle, buffer, name)
        self._raw[key] = buffer
        return buffer


class LegacyStorages(_Storages):
    """Storages of a legacy torch file: declared by the pickle, read from the bytes that follow it."""

    def __init__(self, source: str) -> None:
        super().__init__(source, "little")

    def persistent_load(self, pid: Any) -> StorageRef:
        """Resolve ``('storage', StorageType, root_key, location, numel, view_metadata)``."""
        dtype, key, numel, view = _parse_storage_id(pid, 6)
        self._declare(key, dtype, numel)
        window = None
        if view is not None:
            if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) for v in view[1:])):
                raise ValueError(f"bad storage view metadata {view!r}")
            window = (view[1], view[2])
        return StorageRef(self, key, dtype, numel, window)

    def read_data(self, stream: BinaryIO, keys: Any) -> None:
        """Read each storage (int64 element count, then its bytes) in the order of ``keys``."""
        if not isinstance(keys, list):
            raise ValueError(f"the storage key list is a {type(keys).__name__}, not a list")
        for raw_key in keys:
            key = _text(raw_key, "storage key") if not isinstance(raw_key, int) else str(raw_key)
            if key not in self._dtypes:
                raise ValueError(f"storage {key} has data but no tensor refers to it")
            dtype, numel = self._dtypes[key]
            if stream.tell() + 8 + numel * dtype.itemsize > os.fstat(stream.fileno()).st_size:
                raise ValueError(f"the file ends before the {numel} x {dtype.name} data of storage {key} "
                                 "(truncated file)")
            header = stream.read(8)
            if len(header) != 8:
                raise ValueError(f"the file ends before the data of storage {key} (truncated file)")
            (count,) = struct.unpack("<q", header)
            if count != numel:
                raise ValueError(f"storage {key} holds {count} elements but the pickle declares {numel}")
            buffer = np.empty(numel * dtype.itemsize, dtype=np.uint8)
            _read_exactly(stream, buffer, f"storage {key}")
            self._raw[key] = buffer

    def raw(self, key: str, dtype: TorchDType, numel: int) -> np.ndarray:
        if key not in self._raw:
            raise ValueError(f"storage {key} is used by a tensor but its data is not in the file")
        return self._raw[key]


def _read_exactly(stream: BinaryIO, buffer: np.ndarray, what: str) -> None:
    """Fill ``buffer`` from ``stream`` or fail naming ``what``."""
    view = memoryview(buffer).cast("B")
    filled = 0
    while filled < len(view):
        count = stream.readinto(view[filled:])
        if not count:
            raise ValueError(f"{what}: the file ends after {filled} of {len(view)} bytes (truncated file)")
        filled += count


def zip_root(names: list[str], source: str) -> str:
    """The folder (with its trailing slash) that holds ``data.pkl`` in a torch zip archive."""
    if not names:
        raise CheckpointError(f"{source}: the zip archive is empty; expected <root>/data.pkl from torch.save")
    first = names[0].split("/", 1)[0] + "/"
    candidates = [first] if first + "data.pkl" in names else sorted(
        {name[: -len("data.pkl")] for name in names if name.endswith("/data.pkl") and name.count("/") == 1})
    if not candidates:
        kind = "a NumPy .npz archive" if all(n.endswith(".npy") for n in names) else "a zip archive"
        raise CheckpointError(f"{source}: {kind} without <root>/data.pkl is not a torch.save checkpoint "
                              f"(entries: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})")
    if len(candidates) > 1:
        raise CheckpointError(f"{source}: several data.pkl in the archive ({', '.join(candidates)})")
    root = candidates[0]
    if root + "constants.pkl" in names:
        raise CheckpointError(f"{source}: this is a TorchScript archive (torch.jit.save); it holds code, not only "
                              "weights. Save the model's state_dict() with torch.save instead")
    return root


def read_torch_zip(path: str, table: Mapping[str, Global], *, lenient: bool) -> Any:
    """The object saved in a torch zip archive, tensors as NumPy arrays."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise CheckpointError(f"{path}: not a readable zip archive ({exc}); the file is truncated or "
                              "corrupt") from exc
    with archive:
        root = zip_root(archive.namelist(), path)
        try:
            byteorder = _zip_byteorder(archive, root)
            storages = ZipStorages(archive, root, path, byteorder, os.path.getsize(path))
            vm = RestrictedUnpickler(table, source=path, lenient=lenient,
                                     persistent_load=storages.persistent_load)
            obj = vm.load(io.BytesIO(archive.read(root + "data.pkl")))
            return materialize(obj)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc


def _zip_byteorder(archive: zipfile.ZipFile, root: str) -> str:
    """The ``byteorder`` record (``little`` when absent, as in files of torch before 2.1)."""
    if root + "byteorder" not in archive.namelist():
        return "little"
    byteorder = archive.read(root + "byteorder").decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        raise ValueError(f"unknown byte order {byteorder!r} in {root}byteorder")
    return byteorder


def read_torch_legacy(path: str, table: Mapping[str, Global], *, lenient: bool) -> Any:
    """The object saved in a legacy (pre-1.6) torch file, tensors as NumPy arrays."""
    header = RestrictedUnpickler({}, source=path)
    with open(path, "rb") as stream:
        if header.load(stream) != MAGIC_NUMBER:
            raise CheckpointError(f"{path}: not a legacy torch file (bad magic number)")
        version = header.load(stream)
        if version != PROTOCOL_VERSION:
            raise CheckpointError(f"{path}: legacy torch file of unknown protocol version {version!r}")
        sys_info = header.load(stream)
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise CheckpointError(f"{path}: legacy torch file written on a big-endian machine; re-save it with "
                                  "torch.save on a little-endian one")
        storages = LegacyStorages(path)
        vm = RestrictedUnpickler(table, source=path, lenient=lenient, persistent_load=storages.persistent_load)
        obj = vm.load(stream)
        keys = header.load(stream)
        try:
            storages.read_data(stream, keys)
            trailing = len(stream.read(1))
            if trailing:
                logger.warning("%s: data after the last storage is ignored", path)
            return materialize(obj)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
