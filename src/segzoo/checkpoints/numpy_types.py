"""Safe stand-ins for the NumPy and Python-builtin globals that checkpoints pickle.

NumPy pickles an array as ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`` followed by a
``BUILD`` whose state holds the shape, a ``numpy.dtype(...)`` and the raw bytes; a NumPy scalar as
``numpy.core.multiarray.scalar(dtype, raw bytes)``; protocol 5 uses ``numpy.core.numeric._frombuffer``. NumPy 2
spells the module ``numpy._core``. The stand-ins here rebuild those from bytes with ``np.frombuffer``; only plain
numeric, boolean and string dtypes are accepted (object and structured dtypes are refused: they would carry
pickled objects or memory layouts, not numbers).

The builtins (``set``, ``tuple``, ``bytearray``, ``_codecs.encode`` for bytes at protocol 2, ``OrderedDict``,
``argparse.Namespace``...) are rebuilt from their arguments by segzoo code; nothing is imported from the file.
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from segzoo.checkpoints.pickle_vm import Global, Record

_DTYPE_SPEC = re.compile(r"^[<>|=]?(b1|\?|i[1248]|u[1248]|f[248]|c(8|16)|[SU]\d+)$")
_SEQUENCES = (list, tuple, set, frozenset)
_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")


class DTypeRecord(Record):
    """``numpy.dtype(spec, align, copy)`` followed by its ``BUILD`` state (byte order, item size)."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(spec, str) or not _DTYPE_SPEC.match(spec):
            raise ValueError(f"NumPy dtype {spec!r} is not a plain numeric, boolean or string dtype")
        self.dtype = np.dtype(spec)

    def build(self, state: Any) -> None:
        """Apply the byte order of the pickled state; structured and sub-array dtypes are refused."""
        if not isinstance(state, tuple) or len(state) < 2:
            raise ValueError(f"bad NumPy dtype state {state!r}")
        endian = state[1]
        if len(state) >= 3 and state[2] is not None:
            raise ValueError("NumPy sub-array dtypes are not supported")
        if len(state) >= 5 and (state[3] is not None or state[4] is not None):
            raise ValueError("NumPy structured dtypes (with fields) are not supported")
        if endian in ("<", ">"):
            self.dtype = self.dtype.newbyteorder(endian)
        elif endian not in ("|", "="):
            raise ValueError(f"bad NumPy byte order {endian!r}")

    def materialize(self, convert: Callable[[Any], Any]) -> np.dtype:
        """The dtype itself."""
        return self.dtype


class ArrayRecord(Record):
    """``numpy.core.multiarray._reconstruct(ndarray, ...)``: the array arrives with the ``BUILD`` state."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def build(self, state: Any) -> None:
        """State ``(version, shape, dtype, is_fortran, raw bytes)`` (or without the version)."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ValueError(f"bad NumPy array state of {len(state) if isinstance(state, tuple) else 'no'} items")
        shape, dtype, fortran, raw = state[-4:]
        self.array = array_from_bytes(raw, dtype_of(dtype), shape, "F" if fortran else "C")

    def materialize(self, convert: Callable[[Any], Any]) -> np.ndarray:
        """The array (C order, native byte order)."""
        if self.array is None:
            raise ValueError("a pickled NumPy array has no data (its BUILD state is missing)")
        return self.array


class NamespaceRecord(Record):
    """``argparse.Namespace`` (training scripts pickle their arguments); becomes a Namespace of plain values."""

    def __init__(self, **attrs: Any) -> None:
        self.attrs: dict[str, Any] = {}
        self._update(attrs)

    def build(self, state: Any) -> None:
        """The instance ``__dict__`` (optionally with slot state)."""
        if isinstance(state, tuple) and len(state) == 2:
            state = state[0] or {}
        if not isinstance(state, dict):
            raise ValueError("argparse.Namespace state must be a dict")
        self._update(state)

    def _update(self, attrs: dict[Any, Any]) -> None:
        for name in attrs:
            if not isinstance(name, str) or name.startswith("__"):
                raise ValueError(f"argparse.Namespace attribute {name!r} is not allowed")
        self.attrs.update(attrs)

    def materialize(self, convert: Callable[[Any], Any]) -> argparse.Namespace:
        """A real Namespace holding the materialized values."""
        return argparse.Namespace(**{name: convert(value) for name, value in self.attrs.items()})


def dtype_of(value: Any) -> np.dtype:
    """The NumPy dtype a pickled dtype argument stands for."""
    if isinstance(value, DTypeRecord):
        return value.dtype
    raise ValueError(f"expected a pickled numpy.dtype, got {type(value).__name__}")


def raw_bytes(value: Any) -> bytes | bytearray:
    """Raw array bytes: bytes, bytearray, or a Python 2 str read as latin-1; object arrays are refused."""
    if isinstance(value, (bytes, bytearray)):
        return value
    if isinstance(value, str):
        return value.encode("latin-1")
    if isinstance(value, list):
        raise ValueError("NumPy object arrays are not supported (they hold pickled Python objects)")
    raise ValueError(f"array data must be bytes, not {type(value).__name__}")


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(n, int) and n >= 0 for n in value):
        raise ValueError(f"bad array shape {value!r}")
    return tuple(int(n) for n in value)


def array_from_bytes(raw: Any, dtype: np.dtype, shape: Any, order: str = "C") -> np.ndarray:
    """A C-ordered, native-byte-order copy of the array stored in ``raw``."""
    data = raw_bytes(raw)
    shape = _shape(shape)
    if order not in ("C", "F"):
        raise ValueError(f"bad array order {order!r}")
    count = math.prod(shape)
    if len(data) != count * dtype.itemsize:
        raise ValueError(f"array data holds {len(data)} bytes but shape {shape} of {dtype} needs "
                         f"{count * dtype.itemsize}")
    flat = np.frombuffer(data, dtype=dtype, count=count)
    return np.array(flat.reshape(shape, order=order), dtype=dtype.newbyteorder("="), order="C")


def _reconstruct(subtype: Any, shape: Any = (0,), dtype_code: Any = b"b") -> ArrayRecord:
    if not (isinstance(subtype, Global) and subtype.qualname == "numpy.ndarray"):
        raise ValueError(f"only plain numpy.ndarray can be rebuilt, not {getattr(subtype, 'qualname', subtype)!r}")
    return ArrayRecord()


def _scalar(dtype: Any, data: Any = b"") -> np.generic:
    dt = dtype_of(dtype)
    raw = raw_bytes(data)
    if len(raw) != dt.itemsize:
        raise ValueError(f"a NumPy {dt} scalar needs {dt.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dt, count=1).astype(dt.newbyteorder("="))[0]


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
    return array_from_bytes(buffer, dtype_of(dtype), shape, order)


def _sequence(value: Any) -> Iterable[Any]:
    if not isinstance(value, _SEQUENCES):
        raise ValueError(f"expected a list, tuple or set, not {type(value).__name__}")
    return value


def _set(items: Any = ()) -> set:
    return set(_sequence(items))


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_sequence(items))


def _tuple(items: Any = ()) -> tuple:
    return tuple(_sequence(items))


def _list(items: Any = ()) -> list:
    return list(_sequence(items))


def _dict(items: Any = (), **kwargs: Any) -> dict:
    pairs = items.items() if isinstance(items, dict) else _sequence(items)
    return {**dict(pairs), **kwargs}


def _ordered_dict(items: Any = ()) -> OrderedDict:
    return OrderedDict(_dict(items))


def _defaultdict(default_factory: Any = None, items: Any = ()) -> dict:
    """A defaultdict becomes a plain dict (its factory is a global of the file; it is never called)."""
    return _dict(items)


def _counter(items: Any = ()) -> dict:
    return dict(Counter(_dict(items)))


def _bytes(items: Any = ()) -> bytes:
    if isinstance(items, (list, tuple)) and all(isinstance(v, int) for v in items):
        return bytes(items)
    raise ValueError("bytes() takes a list of ints here")


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    if isinstance(data, str) and encoding in ("latin-1", "latin1"):
        return bytearray(data.encode("latin-1"))
    if isinstance(data, (bytes, bytearray)) and encoding is None:
        return bytearray(data)
    raise ValueError("bytearray() takes bytes, or a str with encoding latin-1")


def _codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """How protocol-2 pickles store bytes: ``_codecs.encode(latin-1 text, 'latin1')``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8") or errors != "strict":
        raise ValueError("_codecs.encode takes a str and a latin-1 or utf-8 encoding here")
    return text.encode(encoding)


def _primitive(kind: type) -> Callable[..., Any]:
    """``int(x)``, ``float(x)``, ``str(x)``, ``bool(x)`` for plain values only."""

    def convert(value: Any = kind()) -> Any:
        if not isinstance(value, (int, float, str, bool)):
            raise ValueError(f"{kind.__name__}() takes a plain value here, not {type(value).__name__}")
        return kind(value)

    return convert


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(isinstance(v, (int, float)) for v in (real, imag)):
        raise ValueError("complex() takes two numbers")
    return complex(real, imag)


def _slice_or_range(kind: type) -> Callable[..., Any]:
    def build(*bounds: Any) -> Any:
        if not all(v is None or isinstance(v, int) for v in bounds):
            raise ValueError(f"{kind.__name__}() takes ints")
        return kind(*bounds)

    return build


def _namespace_call(**attrs: Any) -> NamespaceRecord:
    return NamespaceRecord(**attrs)


def _newobj(cls: Any, *args: Any) -> Any:
    """``copyreg.__newobj__(cls, *args)``: NEWOBJ spelled as a call."""
    if not isinstance(cls, Global) or cls.new is None:
        raise ValueError(f"copyreg.__newobj__ of {getattr(cls, 'qualname', cls)!r}")
    return cls.new(*args)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor(cls, object, None)``: how protocols 0 and 1 create instances."""
    if not (isinstance(base, Global) and base.qualname == "builtins.object") or state is not None:
        raise ValueError("copyreg._reconstructor is only supported with base object and no state")
    return _newobj(cls)


def builtin_globals() -> list[Global]:
    """The Python-builtin and standard-library globals of the allow-list."""
    plain = {
        "builtins.set": _set, "builtins.frozenset": _frozenset, "builtins.tuple": _tuple, "builtins.list": _list,
        "builtins.dict": _dict, "builtins.bytes": _bytes, "builtins.bytearray": _bytearray,
        "builtins.complex": _complex, "builtins.slice": _slice_or_range(slice),
        "builtins.range": _slice_or_range(range), "builtins.int": _primitive(int),
        "builtins.float": _primitive(float), "builtins.str": _primitive(str), "builtins.bool": _primitive(bool),
        "_codecs.encode": _codecs_encode, "collections.defaultdict": _defaultdict,
        "collections.Counter": _counter, "copyreg._reconstructor": _reconstructor,
        "copyreg.__newobj__": _newobj,
    }
    globals_ = [Global(name, call=fn) for name, fn in plain.items()]
    globals_ += [
        Global("builtins.object"),
        Global("collections.OrderedDict", call=_ordered_dict, new=lambda *a, **k: OrderedDict()),
        Global("argparse.Namespace", call=_namespace_call, new=lambda *a, **k: NamespaceRecord()),
    ]
    return globals_


def numpy_globals() -> list[Global]:
    """The NumPy globals of the allow-list, under both the NumPy 1 and NumPy 2 module spellings."""
    globals_ = [Global("numpy.ndarray"), Global("numpy.dtype", call=DTypeRecord, new=DTypeRecord)]
    for module in _NUMPY_MULTIARRAY:
        globals_ += [Global(f"{module}._reconstruct", call=_reconstruct), Global(f"{module}.scalar", call=_scalar)]
    globals_ += [Global(f"{module}._frombuffer", call=_frombuffer) for module in _NUMPY_NUMERIC]
    return globals_
