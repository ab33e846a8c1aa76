"""Write checkpoints in the real PyTorch and Paddle formats, without torch or paddle.

For tests of the reader and for users who convert weights. The objects are nested dicts/lists/tuples of
plain values and ``np.ndarray`` leaves; each array becomes a tensor (a Paddle file keeps NumPy arrays, as
``paddle.save`` of a state dict does).

PyTorch files are written like ``torch.save``: a pickle at protocol 2 whose tensors are
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`` and whose storages are
persistent ids ``('storage', torch.<Type>Storage, key, 'cpu', numel)`` (legacy: with a sixth field ``None``),
keys numbered in order of first use. Arrays that are views of one C-contiguous base array (a transpose, a
slice) share that base's storage with their own offset and strides, as torch tensors sharing a storage do.
The zip archive has torch's record names (``<root>/data.pkl``, ``byteorder``, ``data/<key>``, ``version``) with
each record's data aligned on 64 bytes by a ``FB`` extra field, as ``PyTorchStreamWriter`` does; it omits the
optional ``.data/serialization_id`` record. A legacy file has the magic number, protocol version and sys_info
pickles, the object, the sorted key list, then each storage as an int64 element count and its bytes.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from segzoo.checkpoints.reader import PADDLE_NAME_TABLE
from segzoo.checkpoints.torch_files import MAGIC_NUMBER, PROTOCOL_VERSION
from segzoo.io import write_with

ZIP_ALIGNMENT = 64
"""Byte alignment of record data in a torch zip archive (``kFieldAlignment``)."""
TORCH_FILE_VERSION = b"3\n"
"""The ``version`` record torch.save writes (``kMinProducedFileFormatVersion``)."""

_STORAGE_CLASSES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage", "int64": "LongStorage",
    "int32": "IntStorage", "int16": "ShortStorage", "int8": "CharStorage", "uint8": "ByteStorage",
    "bool": "BoolStorage", "complex64": "ComplexFloatStorage", "complex128": "ComplexDoubleStorage",
}


@dataclass(frozen=True, eq=False)
class BFloat16Array:
    """An array to be written as a torch bfloat16 tensor; ``bits`` holds the bfloat16 bit patterns."""

    bits: np.ndarray


def bfloat16(values: np.ndarray) -> BFloat16Array:
    """Round float values to bfloat16 (nearest, ties to even) for :func:`write_torch_zip`/`write_torch_legacy`."""
    f32 = np.ascontiguousarray(values, dtype=np.float32)
    bits = f32.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    rounded = np.where(np.isnan(f32), ((bits >> 16) | 0x40).astype(np.uint16), rounded)
    return BFloat16Array(rounded)


@dataclass(frozen=True, eq=False)
class ForeignObject:
    """An object of a class that is not importable here (an mmengine logger, a training-script class),
    written as the pickle of ``module.name(*args)`` followed by ``BUILD state`` when ``state`` is not None.

    For tests of the reader's refusal and lenient policies; the reader never calls ``module.name``.
    """

    module: str
    name: str
    args: tuple = ()
    state: Any = None


class _TorchGlobal:
    """Stands for a torch global in the pickle (torch is not importable here); written by name."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module = module
        self.name = name

    def __call__(self, *args: Any) -> Any:
        raise TypeError(f"{self.module}.{self.name} only names a torch global; it is never called")


@dataclass(eq=False)
class _Storage:
    """One storage: its key, torch storage class, element count and little-endian bytes."""

    key: str
    storage_class: str
    numel: int
    data: bytes


class _TorchPickler(pickle._Pickler):
    """``torch.save``'s pickling at protocol 2: arrays become tensors over persistent-id storages.

    Built on the pure-Python pickler so that torch globals can be written by name without importing torch.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, stream: BinaryIO, *, legacy: bool, byteorder: str = "little") -> None:
        super().__init__(stream, protocol=2)
        self._legacy = legacy
        self._byteorder = "<" if byteorder == "little" else ">"
        self._globals: dict[tuple[str, str], _TorchGlobal] = {}
        self._storage_by_base: dict[int, tuple[np.ndarray, _Storage]] = {}
        self.storages: dict[str, _Storage] = {}

    def torch_global(self, module: str, name: str) -> _TorchGlobal:
        """The one marker object of a torch global (one object, so the pickle memoizes it)."""
        return self._globals.setdefault((module, name), _TorchGlobal(module, name))

    def _save_torch_global(self, obj: _TorchGlobal) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[_TorchGlobal] = _save_torch_global

    def persistent_id(self, obj: Any) -> tuple | None:
        if not isinstance(obj, _Storage):
            return None
        pid = ("storage", self.torch_global("torch", obj.storage_class), obj.key, "cpu", obj.numel)
        return pid + (None,) if self._legacy else pid

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            storage, offset, stride = self._storage_of(obj)
            return self._rebuild(storage, offset, obj.shape, stride)
        if isinstance(obj, BFloat16Array):
            bits = np.ascontiguousarray(obj.bits, dtype=np.uint16)
            storage = self._new_storage(bits, "BFloat16Storage")
            return self._rebuild(storage, 0, bits.shape, tuple(s // 2 for s in bits.strides))
        if isinstance(obj, ForeignObject):
            return self.torch_global(obj.module, obj.name), tuple(obj.args), obj.state
        return NotImplemented

    def _rebuild(self, storage: _Storage, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple:
        args = (storage, offset, tuple(int(n) for n in shape), stride, False, OrderedDict())
        return self.torch_global("torch._utils", "_rebuild_tensor_v2"), args

    def _storage_of(self, array: np.ndarray) -> tuple[_Storage, int, tuple[int, ...]]:
        """The storage of ``array`` (its base's, when it is a view of a C-contiguous base), offset and strides."""
        storage_class = _STORAGE_CLASSES.get(array.dtype.name)
        if storage_class is None or not array.dtype.isnative:
            raise TypeError(f"arrays of dtype {array.dtype} cannot be written as torch tensors")
        base = array
        while isinstance(base.base, np.ndarray):
            base = base.base
        itemsize = array.dtype.itemsize
        offset = array.__array_interface__["data"][0] - base.__array_interface__["data"][0]
        shareable = (base.dtype == array.dtype and base.flags.c_contiguous and offset >= 0
                     and offset % itemsize == 0 and all(s >= 0 and s % itemsize == 0 for s in array.strides))
        if not shareable:
            base, offset = np.ascontiguousarray(array), 0
        storage = self._new_storage(base, storage_class)
        view_strides = array.strides if shareable else base.strides
        return storage, offset // itemsize, tuple(s // itemsize for s in view_strides)

    def _new_storage(self, base: np.ndarray, storage_class: str) -> _Storage:
        """The storage holding ``base``'s bytes (one per base array)."""
        known = self._storage_by_base.get(id(base))
        if known is not None:
            return known[1]
        data = base.astype(base.dtype.newbyteorder(self._byteorder), copy=False).tobytes(order="C")
        storage = _Storage(str(len(self.storages)), storage_class, int(base.size), data)
        self._storage_by_base[id(base)] = (base, storage)
        self.storages[storage.key] = storage
        return storage


_LEAVES = (type(None), bool, int, float, complex, str, bytes, np.ndarray, np.generic, BFloat16Array, ForeignObject)


def check_writable(obj: Any, where: str = "obj") -> None:
    """Refuse anything but containers (dict, list, tuple), plain values and arrays, naming where it is."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_writable(key, f"{where} key")
            check_writable(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for index, value in enumerate(obj):
            check_writable(value, f"{where}[{index}]")
    elif not isinstance(obj, _LEAVES):
        raise TypeError(f"{where}: cannot write a {type(obj).__name__} into a checkpoint (use arrays, plain "
                        "values, dicts, lists and tuples)")


def _pickle_torch(obj: Any, stream: BinaryIO, *, legacy: bool, byteorder: str = "little") -> list[_Storage]:
    """Pickle ``obj`` as torch does into ``stream``; returns the storages in torch's write order."""
    check_writable(obj)
    pickler = _TorchPickler(stream, legacy=legacy, byteorder=byteorder)
    pickler.dump(obj)
    return [pickler.storages[key] for key in sorted(pickler.storages)]


def _archive_name(path: Path) -> str:
    """The folder name torch uses inside the zip: the file name without its last extension."""
    return path.name.rsplit(".", 1)[0] if "." in path.name[1:] else path.name


def write_torch_zip(path: str | Path, obj: Any, *, archive_name: str | None = None,
                    byteorder: str = "little") -> Path:
    """Write ``obj`` as ``torch.save`` (zip format, torch >= 1.6) would; atomically.

    ``archive_name``: the folder inside the zip (default: the file name without its extension, as torch does);
    ``byteorder``: ``"big"`` writes what torch.save writes on a big-endian machine.
    """
    if byteorder not in ("little", "big"):
        raise ValueError(f"byteorder must be 'little' or 'big', not {byteorder!r}")
    target = Path(path)
    data = io.BytesIO()
    storages = _pickle_torch(obj, data, legacy=False, byteorder=byteorder)
    records = [("data.pkl", data.getvalue()), ("byteorder", byteorder.encode("ascii"))]
    records += [(f"data/{storage.key}", storage.data) for storage in storages]
    records.append(("version", TORCH_FILE_VERSION))
    root = archive_name or _archive_name(target)
    return write_with(target, lambda tmp: _write_aligned_zip(tmp, root, records))


def _write_aligned_zip(path: Path, root: str, records: list[tuple[str, bytes]]) -> None:
    """Stored (uncompressed) records under ``root/``, each record's data starting on a 64-byte boundary."""
    with open(path, "wb") as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
        for name, data in records:
            full_name = f"{root}/{name}"
            info = zipfile.ZipInfo(full_name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            # zipfile appends a 20-byte ZIP64 extra field to the local header of records near 4 GiB
            zip64 = 20 if len(data) * 1.05 > zipfile.ZIP64_LIMIT else 0
            data_start = handle.tell() + 30 + len(full_name.encode("utf-8")) + 4 + zip64
            padding = -data_start % ZIP_ALIGNMENT
            info.extra = b"FB" + struct.pack("<H", padding) + b"Z" * padding
            archive.writestr(info, data)


def write_torch_legacy(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as ``torch.save(..., _use_new_zipfile_serialization=False)`` would; atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            sys_info = {"protocol_version": PROTOCOL_VERSION, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 8}}
            for header in (MAGIC_NUMBER, PROTOCOL_VERSION, sys_info):
                pickle.dump(header, stream, protocol=2)
            storages = _pickle_torch(obj, stream, legacy=True)
            pickle.dump([storage.key for storage in storages], stream, protocol=2)
            for storage in storages:
                stream.write(struct.pack("<q", storage.numel))
                stream.write(storage.data)

    return write_with(Path(path), write)


@dataclass(frozen=True, eq=False)
class _PaddleTensor:
    """A tensor that ``paddle.save`` pickles as ``(name, ndarray)`` (its ``reduce_varbase``)."""

    name: str
    array: np.ndarray


class _PaddlePickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, _PaddleTensor):
            return tuple, ((obj.name, obj.array),)
        return NotImplemented


def write_pdparams(path: str | Path, state_dict: Mapping[str, np.ndarray], *, protocol: int = 4,
                   name_table: bool = True, tensor_tuples: bool = False) -> Path:
    """Write a state dict as ``paddle.save(layer.state_dict(), path)`` would; atomically.

    NumPy arrays with a ``StructuredToParameterName@@`` table (``name_table``); ``tensor_tuples`` writes each
    value as Paddle 2.1+ pickles a tensor outside a state dict: ``(paddle name, ndarray)``.
    """
    if not 2 <= protocol <= 4:
        raise ValueError(f"paddle.save uses pickle protocols 2 to 4, not {protocol}")
    internal = {name: f"param_{index}.w_0" for index, name in enumerate(state_dict)}
    obj: dict[str, Any] = {
        name: _PaddleTensor(internal[name], np.asarray(value)) if tensor_tuples else np.asarray(value)
        for name, value in state_dict.items()
    }
    if name_table:
        obj[PADDLE_NAME_TABLE] = internal

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as stream:
            _PaddlePickler(stream, protocol=protocol).dump(obj)

    return write_with(Path(path), write)
