"""Safe stand-ins for the PyTorch globals of a checkpoint: dtypes, storage types and tensor rebuilds.

``torch.save`` pickles a tensor as ``torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
requires_grad, backward_hooks[, metadata])`` where ``storage`` is a persistent id that the file format resolves
(a zip record, or raw bytes after the pickle in the legacy format); parameters wrap that in
``_rebuild_parameter``; dtypes without a legacy storage class use ``_rebuild_tensor_v3`` with an untyped storage
and a ``torch.<dtype>`` global. Here those calls only *record* the tensor (:class:`TensorRecord`); its bytes are
read and laid out when the finished object is materialized, because the legacy format stores the bytes after
the pickle. Strides are honoured (``as_strided`` over the storage, then a copy); storages shared by several
tensors are read once. bfloat16 becomes float32; every array comes out in native byte order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from segzoo.checkpoints.pickle_vm import Global, Record


@dataclass(frozen=True)
class TorchDType:
    """A torch dtype: its name, the NumPy element type of its storage (bfloat16: raw uint16) and size."""

    name: str
    numpy: str
    bfloat16: bool = False

    @property
    def itemsize(self) -> int:
        return np.dtype(self.numpy).itemsize

    def element_dtype(self, byteorder: str) -> np.dtype:
        """The NumPy dtype of one stored element, in the file's byte order."""
        dtype = np.dtype(self.numpy)
        return dtype.newbyteorder("<" if byteorder == "little" else ">") if dtype.itemsize > 1 else dtype

    def to_native(self, array: np.ndarray) -> np.ndarray:
        """Native byte order; bfloat16 bit patterns become float32 values."""
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        if self.bfloat16:
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array


@dataclass(frozen=True)
class UnsupportedDType:
    """A torch dtype without a NumPy counterpart (float8, quantized...): refused when a tensor uses it."""

    name: str


_DTYPES = {
    "float32": "f4", "float64": "f8", "float16": "f2", "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1",
    "uint8": "u1", "bool": "?", "complex64": "c8", "complex128": "c16", "uint16": "u2", "uint32": "u4",
    "uint64": "u8",
}
_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32",
            "short": "int16", "cfloat": "complex64", "cdouble": "complex128"}
_UNSUPPORTED = ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
                "complex32", "chalf", "qint8", "quint8", "qint32", "quint4x2", "quint2x4")
_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_UNSUPPORTED_STORAGES = {"QInt8Storage": "qint8", "QUInt8Storage": "quint8", "QInt32Storage": "qint32",
                         "QUInt4x2Storage": "quint4x2", "QUInt2x4Storage": "quint2x4"}
_UNTYPED_STORAGES = ("torch.UntypedStorage", "torch.storage.UntypedStorage", "torch.storage._UntypedStorage")


def torch_dtype(name: str) -> TorchDType:
    """The TorchDType of a torch dtype name (``float32``, ``bfloat16``, aliases like ``half``)."""
    name = _ALIASES.get(name, name)
    if name == "bfloat16":
        return TorchDType("bfloat16", "u2", bfloat16=True)
    return TorchDType(name, _DTYPES[name])


def dtype_marker(value: Any, what: str) -> TorchDType:
    """The TorchDType carried by a storage-type or dtype global passed as an argument."""
    marker = value.marker if isinstance(value, Global) else None
    if isinstance(marker, UnsupportedDType):
        raise ValueError(f"{what} {value.qualname} ({marker.name}) has no NumPy equivalent; convert the "
                         "checkpoint to float32 first")
    if not isinstance(marker, TorchDType):
        raise ValueError(f"{what} must be a torch storage type or dtype, not {getattr(value, 'qualname', value)!r}")
    return marker


class StorageSource(Protocol):
    """Where the bytes of a file's storages come from (a zip archive, or the tail of a legacy file)."""

    byteorder: str

    def raw(self, key: str, dtype: TorchDType, numel: int) -> np.ndarray:
        """The storage's bytes as a writable uint8 array of ``numel * itemsize`` bytes (read once, cached)."""

    def note_tensor(self, key: str) -> None:
        """Count one more tensor built on this storage."""

    def tensor_count(self, key: str) -> int:
        """How many tensors are built on this storage."""


@dataclass(eq=False)
class StorageRef(Record):
    """A storage named by a persistent id: ``numel`` elements of ``dtype`` under ``key`` (legacy views: a window
    ``view = (offset, size)`` of the root storage, in elements)."""

    source: StorageSource
    key: str
    dtype: TorchDType
    numel: int
    view: tuple[int, int] | None = None

    def elements(self, dtype: TorchDType) -> np.ndarray:
        """The storage as 1-D elements of ``dtype`` in the file's byte order (a view of the cached bytes)."""
        raw = self.source.raw(self.key, self.dtype, self.numel)
        if dtype.itemsize and raw.size % dtype.itemsize:
            raise ValueError(f"storage {self.key} of {raw.size} bytes cannot hold whole {dtype.name} elements")
        elements = raw.view(dtype.element_dtype(self.source.byteorder))
        if self.view is not None:
            start, size = self.view
            if start < 0 or size < 0 or start + size > elements.size:
                raise ValueError(f"storage view {self.view} lies outside storage {self.key} of {elements.size} "
                                 "elements")
            elements = elements[start:start + size]
        return elements

    def materialize(self, convert: Callable[[Any], Any]) -> np.ndarray:
        """A storage pickled on its own becomes a 1-D array."""
        return self.dtype.to_native(self.elements(self.dtype).copy())


@dataclass(eq=False)
class TensorRecord(Record):
    """A tensor: ``size``/``stride``/``offset`` (in elements) over a storage, read as ``dtype``."""

    storage: StorageRef
    dtype: TorchDType
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __post_init__(self) -> None:
        self.storage.source.note_tensor(self.storage.key)

    def materialize(self, convert: Callable[[Any], Any]) -> np.ndarray:
        """The tensor as a C-contiguous NumPy array (bfloat16 as float32)."""
        elements = self.storage.elements(self.dtype)
        what = f"tensor of size {self.size} on storage {self.storage.key}"
        if self._covers(elements):
            return self.dtype.to_native(elements.reshape(self.size))
        return self.dtype.to_native(strided_copy(elements, self.offset, self.size, self.stride, what))

    def _covers(self, elements: np.ndarray) -> bool:
        """Whether the tensor is its storage's only tensor, contiguous, and covers all of it (no copy needed)."""
        return (self.offset == 0 and self.storage.view is None and elements.dtype.isnative
                and math.prod(self.size) == elements.size and self.stride == contiguous_strides(self.size)
                and self.storage.source.tensor_count(self.storage.key) == 1)


def contiguous_strides(size: Sequence[int]) -> tuple[int, ...]:
    """The strides (in elements) of a C-contiguous tensor of ``size``."""
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def strided_copy(elements: np.ndarray, offset: int, size: Sequence[int], stride: Sequence[int],
                 what: str) -> np.ndarray:
    """A C-ordered copy of ``elements`` viewed with ``offset``/``size``/``stride``; bounds are checked."""
    if len(size) != len(stride):
        raise ValueError(f"{what}: size {tuple(size)} and stride {tuple(stride)} differ in length")
    if offset < 0 or min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise ValueError(f"{what}: negative offset, size or stride ({offset}, {tuple(size)}, {tuple(stride)})")
    if math.prod(size) == 0:
        return np.empty(tuple(size), dtype=elements.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= elements.size:
        raise ValueError(f"{what}: the storage holds {elements.size} elements but the tensor (offset {offset}, "
                         f"stride {tuple(stride)}) reads element {last}; the file is truncated or corrupt")
    view = np.lib.stride_tricks.as_strided(elements[offset:], shape=tuple(size),
                                           strides=tuple(s * elements.itemsize for s in stride), writeable=False)
    return np.array(view, order="C")


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) for v in value):
        raise ValueError(f"{what} must be a tuple of ints, not {value!r}")
    return tuple(int(v) for v in value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: TorchDType | None = None) -> TensorRecord:
    if not isinstance(storage, StorageRef):
        raise ValueError(f"tensor storage must come from a persistent id, not {type(storage).__name__}")
    if not isinstance(offset, int):
        raise ValueError(f"storage offset must be an int, not {offset!r}")
    return TensorRecord(storage, dtype or storage.dtype, int(offset), _ints(size, "size"), _ints(stride, "stride"))


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRecord:
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> TensorRecord:
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, dtype: Any, metadata: Any = None) -> TensorRecord:
    return _tensor(storage, storage_offset, size, stride, dtype_marker(dtype, "tensor dtype"))


def _rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    return data


def _rebuild_device_tensor(data: Any, dtype: Any = None, device: Any = None, requires_grad: Any = False) -> Any:
    """Tensors of devices without storages (XLA, MPS...) are pickled from a CPU tensor or a NumPy array."""
    return data


_TENSOR_TYPES = ("torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter",
                 "torch.nn.parameter.Buffer")


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    """``torch._tensor._rebuild_from_type_v2``: a tensor (or Parameter) rebuilt by ``func(*args)``."""
    if not (isinstance(new_type, Global) and new_type.qualname in _TENSOR_TYPES):
        raise ValueError(f"tensor subclass {getattr(new_type, 'qualname', new_type)!r} is not supported")
    if not (isinstance(func, Global) and func.qualname.startswith("torch._utils._rebuild_") and func.call):
        raise ValueError(f"tensor rebuild function {getattr(func, 'qualname', func)!r} is not supported")
    if not isinstance(args, tuple):
        raise ValueError("tensor rebuild arguments must be a tuple")
    return func.call(*args)


def _size(dims: Any = ()) -> tuple[int, ...]:
    return _ints(dims, "torch.Size")


def _device(kind: Any, index: Any = None) -> str:
    if not isinstance(kind, str) or not (index is None or isinstance(index, int)):
        raise ValueError("torch.device takes a type string and an optional index")
    return kind if index is None else f"{kind}:{index}"


def torch_globals() -> list[Global]:
    """The PyTorch globals of the allow-list: dtypes, storage types, tensor and parameter rebuilds."""
    globals_ = [Global(f"torch.{name}", marker=torch_dtype(name)) for name in (*_DTYPES, *_ALIASES, "bfloat16")]
    globals_ += [Global(f"torch.{name}", marker=UnsupportedDType(name)) for name in _UNSUPPORTED]
    for module in ("torch", "torch.cuda"):
        globals_ += [Global(f"{module}.{cls}", marker=torch_dtype(name)) for cls, name in _STORAGES.items()]
        globals_ += [Global(f"{module}.{cls}", marker=UnsupportedDType(name))
                     for cls, name in _UNSUPPORTED_STORAGES.items()]
    globals_ += [Global(name, marker=torch_dtype("uint8")) for name in _UNTYPED_STORAGES]
    globals_ += [Global(name) for name in _TENSOR_TYPES]
    rebuilds = {
        "_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor_v2,
        "_rebuild_tensor_v3": _rebuild_tensor_v3, "_rebuild_parameter": _rebuild_parameter,
        "_rebuild_parameter_with_state": _rebuild_parameter,
        "_rebuild_device_tensor_from_numpy": _rebuild_device_tensor,
        "_rebuild_device_tensor_from_cpu_tensor": _rebuild_device_tensor,
    }
    globals_ += [Global(f"torch._utils.{name}", call=fn) for name, fn in rebuilds.items()]
    globals_ += [Global(f"torch._tensor.{name}", call=_rebuild_from_type)
                 for name in ("_rebuild_from_type", "_rebuild_from_type_v2")]
    globals_ += [Global("torch.Size", call=_size), Global("torch.device", call=_device)]
    return globals_
