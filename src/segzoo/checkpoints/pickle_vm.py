"""A pickle interpreter that rebuilds data and never runs code from the file.

Python's own unpickler imports whatever module a file names and calls whatever it is told to call, so reading
an untrusted checkpoint with it runs the file's code. This interpreter reads the same opcodes (protocols 0 to 5)
but its only effects are building Python containers and scalars and calling *handlers written in segzoo*:

- a global (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) is looked up by its dotted name in an explicit table of
  :class:`Global` handlers; nothing is ever imported;
- calling a global (``REDUCE``, ``NEWOBJ``, ``INST``, ``OBJ``) runs that handler's ``call``/``new`` function;
- ``BUILD`` only reaches segzoo's own :class:`Record` objects (and is ignored on dicts, where torch stores
  ``_metadata``); no attribute is ever set on anything else, so a file cannot alter shared objects;
- every global the file names is checked against the table *before the first opcode runs*; names that only
  appear at run time (a ``STACK_GLOBAL`` fed from computed strings) are checked when looked up, still before
  anything of theirs is built.

Unknown globals are refused with a :class:`CheckpointError` naming them and the file. In *lenient* mode (for
reading the weights out of training checkpoints that also pickle logger or optimizer objects), unknown globals
become inert :class:`UnresolvedObject` records: their arguments and state are kept as data, no constructor of
theirs is ever called. Names of code that a weights file never needs (``os``, ``posix``, ``subprocess``,
``builtins.eval``, ...) are refused even then, because such a file is hostile; safety never depends on that
list, since an unresolved global can do nothing.

Handlers may return :class:`Record` objects (tensors whose bytes are read later, arrays whose ``BUILD`` state
arrives after them); :func:`materialize` turns the finished object tree into plain values.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import logging
import pickletools
import struct
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO

from segzoo.checkpoints.errors import CheckpointError

logger = logging.getLogger(__name__)

_OPCODES: dict[bytes, pickletools.OpcodeInfo] = {op.code.encode("latin-1"): op for op in pickletools.opcodes}

_HOSTILE_MODULES = (
    "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "builtins", "__builtin__", "importlib",
    "runpy", "shutil", "socket", "pickle", "_pickle", "cPickle", "marshal", "types", "ctypes", "code", "codeop",
    "pty", "commands", "webbrowser", "multiprocessing", "asyncio", "operator", "functools", "inspect", "pdb",
    "bdb", "timeit", "profile", "cProfile", "trace", "doctest", "pydoc", "idlelib", "lib2to3", "distutils",
    "ensurepip", "venv", "platform", "tempfile", "pathlib", "io", "_io", "zipimport", "pkgutil", "site",
    "signal", "threading", "_thread", "gc", "copyreg", "copy_reg", "dill", "cloudpickle", "joblib", "urllib",
    "http", "ftplib", "smtplib", "imaplib", "telnetlib", "requests", "aiohttp", "httpx", "logging.handlers",
    "_aix_support", "_osx_support", "_pyrepl", "test", "numpy.ctypeslib", "numpy.f2py", "numpy.distutils",
    "numpy.testing", "torch.hub", "torch.jit", "torch.ops", "torch._C", "torch.serialization", "torch.package",
    "torch.fx", "torch.utils.bottleneck", "torch.utils.collect_env", "torch.utils.cpp_extension",
    "torch.utils.data", "torch.utils._config_module", "torch._dynamo",
)
"""Modules (and their submodules) whose names a weights file never needs: refused even in lenient mode."""

_HOSTILE_NAMES = frozenset({
    "numpy.load", "numpy.loadtxt", "numpy.genfromtxt", "numpy.fromfile", "numpy.save", "numpy.savez",
    "numpy.lib.npyio.load", "torch.load", "torch.save", "logging.FileHandler", "uuid._get_command_stdout",
})

_STRING_OPS = frozenset({"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
                         "BINUNICODE8"})
_CONSTANT_OPS = _STRING_OPS | {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
                               "BINFLOAT", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8"}
_MEMO_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


@dataclass(frozen=True, eq=False)
class Global:
    """A pickle global that segzoo knows, and what calling it builds.

    ``call`` runs for ``REDUCE``/``INST``/``OBJ``, ``new`` for ``NEWOBJ``/``NEWOBJ_EX``; a global without them is
    a marker that other handlers take as an argument (``numpy.ndarray``, ``torch.FloatStorage``), described by
    ``marker``.
    """

    qualname: str
    call: Callable[..., Any] | None = None
    new: Callable[..., Any] | None = None
    marker: Any = None


@dataclass(frozen=True, eq=False)
class UnresolvedGlobal:
    """A global that is not on the allow-list, met in lenient mode: a name and nothing else."""

    qualname: str


@dataclass(frozen=True)
class GlobalRef:
    """A class or function named by the file, kept as its dotted name (what a global becomes as a value)."""

    qualname: str

    def __repr__(self) -> str:
        return f"<global {self.qualname}>"


class Record:
    """A value built in two steps: recorded while unpickling, turned into a plain value by :func:`materialize`."""

    def build(self, state: Any) -> None:
        """Take the ``BUILD`` state; records that have none refuse it."""
        raise ValueError(f"BUILD is not valid on {type(self).__name__}")

    def materialize(self, convert: Callable[[Any], Any]) -> Any:
        """The plain value; ``convert`` materializes nested values."""
        raise NotImplementedError


class UnresolvedObject(Record):
    """An object of a class that is not on the allow-list (lenient reads only); its constructor never ran.

    ``args``/``kwargs`` are what the file would have passed to the constructor, ``state`` what ``BUILD`` would
    have set, ``items``/``appended`` what the file put into it as a dict or list subclass.
    """

    def __init__(self, qualname: str, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> None:
        self.qualname = qualname
        self.args = args
        self.kwargs = dict(kwargs or {})
        self.state: Any = None
        self.items: dict[Any, Any] = {}
        self.appended: list[Any] = []

    def build(self, state: Any) -> None:
        """Keep the state as data."""
        self.state = state

    def materialize(self, convert: Callable[[Any], Any]) -> UnresolvedObject:
        """Materialize the kept data in place; the object stays unresolved."""
        self.args = convert(self.args)
        self.kwargs = convert(self.kwargs)
        self.state = convert(self.state)
        self.items = convert(self.items)
        self.appended = convert(self.appended)
        return self

    def __repr__(self) -> str:
        return f"<unresolved {self.qualname}>"


def read_ops(stream: BinaryIO) -> list[tuple[str, Any, int]]:
    """Decode one pickle (up to and including STOP) into ``(opcode name, argument, byte offset)`` tuples.

    Raises ValueError on a truncated or malformed stream. Protocol-0 ``STRING`` arguments are decoded as
    latin-1, like ``pickle.load(..., encoding="latin1")``, so Python 2 byte strings survive.
    """
    ops: list[tuple[str, Any, int]] = []
    end = _end_of(stream)
    while True:
        pos = stream.tell()
        code = stream.read(1)
        if not code:
            raise ValueError(f"the data ends at byte {pos} before the pickle's STOP opcode (truncated file?)")
        op = _OPCODES.get(code)
        if op is None:
            raise ValueError(f"unknown pickle opcode {code!r} at byte {pos}")
        try:
            _check_length(op, stream, end)
            arg = _read_arg(op, stream)
        except _LengthBeyondEnd as exc:
            raise ValueError(f"bad argument of pickle opcode {op.name} at byte {pos} (the data ends there: "
                             f"truncated file?): {exc}") from exc
        except (ValueError, AssertionError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            truncated = " (the data ends there: truncated file?)" if not stream.read(1) else ""
            raise ValueError(f"bad argument of pickle opcode {op.name} at byte {pos}{truncated}: {exc}") from exc
        ops.append((op.name, arg, pos))
        if op.name == "STOP":
            return ops


class _LengthBeyondEnd(ValueError):
    """An argument length that runs past the end of the data."""


_LENGTH_PREFIXES = {pickletools.TAKEN_FROM_ARGUMENT1: ("<B", 1), pickletools.TAKEN_FROM_ARGUMENT4: ("<i", 4),
                    pickletools.TAKEN_FROM_ARGUMENT4U: ("<I", 4), pickletools.TAKEN_FROM_ARGUMENT8U: ("<Q", 8)}
"""How opcodes with a length-prefixed argument (BINBYTES8, BINUNICODE, ...) store that length."""


def _end_of(stream: BinaryIO) -> int | None:
    """The stream's size when it can seek (to refuse lengths that run past it), else None."""
    try:
        if not stream.seekable():
            return None
        here = stream.tell()
        end = stream.seek(0, 2)
        stream.seek(here)
        return end
    except (OSError, AttributeError):
        return None


def _check_length(op: pickletools.OpcodeInfo, stream: BinaryIO, end: int | None) -> None:
    """ValueError when an argument declares more bytes than the stream holds (a damaged length would otherwise
    make the reader allocate that much)."""
    prefix = _LENGTH_PREFIXES.get(op.arg.n) if op.arg is not None and end is not None else None
    if prefix is None:
        return
    here = stream.tell()
    raw = stream.read(prefix[1])
    stream.seek(here)
    if len(raw) == prefix[1]:
        declared = struct.unpack(prefix[0], raw)[0]
        if declared > end - here - prefix[1]:
            raise _LengthBeyondEnd(f"the argument declares {declared} bytes but only {end - here - prefix[1]} "
                                   "remain")


def _read_arg(op: pickletools.OpcodeInfo, stream: BinaryIO) -> Any:
    """The argument of one opcode (protocol-0 STRING decoded as latin-1)."""
    if op.arg is None:
        return None
    if op.name == "STRING":
        raw = pickletools.read_stringnl(stream, decode=False)
        return _unescape_py2_string(raw)
    return op.arg.reader(stream)


def _unescape_py2_string(raw: bytes | str) -> str:
    """A protocol-0 ``'...'`` string literal (quotes already stripped) as latin-1 text."""
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    return codecs.escape_decode(data)[0].decode("latin-1")


def static_globals(ops: Iterable[tuple[str, Any, int]]) -> list[tuple[str, str, int]]:
    """The globals a pickle names, found without running it: ``(module, name, byte offset)``.

    ``STACK_GLOBAL`` is resolved when its two strings were pushed just before it, directly or through the memo
    (what every pickler writes); anything else is checked when the interpreter meets it.
    """
    found: list[tuple[str, str, int]] = []
    recent: list[Any] = []
    memo: dict[int, Any] = {}
    for name, arg, pos in ops:
        if name in ("GLOBAL", "INST"):
            module, _, attr = arg.partition(" ")
            found.append((module, attr, pos))
            recent.append(None)
        elif name == "STACK_GLOBAL":
            if len(recent) >= 2 and isinstance(recent[-2], str) and isinstance(recent[-1], str):
                found.append((recent[-2], recent[-1], pos))
            recent.append(None)
        elif name in _STRING_OPS:
            recent.append(arg)
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name in _MEMO_PUT_OPS:
            memo[arg] = recent[-1] if recent else None
        elif name in _MEMO_GET_OPS:
            recent.append(memo.get(arg))
        elif name not in ("PROTO", "FRAME"):
            recent.append(None)
        del recent[:-2]
    return found


def starts_like_pickle(head: bytes) -> bool:
    """Whether ``head`` begins with a pickle opcode (a protocol 2+ pickle starts with PROTO, 0x80)."""
    return head[:1] in _OPCODES and head[:1] not in (b"", b".")


def is_hostile(module: str, name: str) -> bool:
    """Whether a global names code that no weights file needs (process, file, network, import, eval...)."""
    return (any(module == m or module.startswith(m + ".") for m in _HOSTILE_MODULES)
            or f"{module}.{name}" in _HOSTILE_NAMES)


def _py3_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 module/name spellings (``__builtin__``, ``copy_reg``) as Python 3 has them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


_Handler = Callable[["RestrictedUnpickler", Any], Any]
_DISPATCH: dict[str, _Handler] = {}


def _op(*names: str) -> Callable[[_Handler], _Handler]:
    """Register an opcode handler for the given opcode names."""

    def register(fn: _Handler) -> _Handler:
        for op_name in names:
            _DISPATCH[op_name] = fn
        return fn

    return register


class RestrictedUnpickler:
    """Runs one pickle with the globals of ``table`` only (see the module docstring for the guarantees).

    ``persistent_load`` receives persistent ids (torch storages); ``source`` names the file in error messages.
    """

    def __init__(self, table: Mapping[str, Global], *, source: str, lenient: bool = False,
                 persistent_load: Callable[[Any], Any] | None = None) -> None:
        self._table = table
        self._source = source
        self._lenient = lenient
        self._persistent_load = persistent_load
        self._stack: list[Any] = []
        self._metastack: list[list[Any]] = []
        self._memo: dict[int, Any] = {}
        self._pos = 0

    def load(self, stream: BinaryIO) -> Any:
        """Read one pickle from ``stream`` (which is left just after its STOP) and return the built object."""
        try:
            ops = read_ops(stream)
        except ValueError as exc:
            raise self._error(str(exc)) from exc
        self._check_globals(ops)
        return self._run(ops)

    # -- globals -----------------------------------------------------------------------------------------

    def _check_globals(self, ops: list[tuple[str, Any, int]]) -> None:
        """Refuse the file before anything is built when it names a global that is not allowed."""
        refused = {}
        for module, name, _ in static_globals(ops):
            qualname, allowed = self._classify(module, name)
            if allowed is None:
                refused.setdefault(qualname, is_hostile(*_py3_name(module, name)))
        if refused:
            raise self._refusal(refused)

    def _classify(self, module: str, name: str) -> tuple[str, Global | UnresolvedGlobal | None]:
        """The global's dotted name and what it resolves to (None: refused)."""
        module, name = _py3_name(module, name)
        qualname = f"{module}.{name}"
        known = self._table.get(qualname)
        if known is not None:
            return qualname, known
        if self._lenient and not is_hostile(module, name):
            return qualname, UnresolvedGlobal(qualname)
        return qualname, None

    def _global(self, module: Any, name: Any) -> Global | UnresolvedGlobal:
        """Resolve a global met while running (names computed at run time included)."""
        if not isinstance(module, str) or not isinstance(name, str):
            raise ValueError("a global's module and name must be strings")
        qualname, resolved = self._classify(module, name)
        if resolved is None:
            raise self._refusal({qualname: is_hostile(*_py3_name(module, name))})
        return resolved

    def _refusal(self, refused: Mapping[str, bool]) -> CheckpointError:
        """The error for refused globals (name -> whether it looks hostile)."""
        hostile = [q for q, bad in refused.items() if bad]
        unknown = [q for q, bad in refused.items() if not bad]
        parts = []
        if hostile:
            parts.append(f"it names {', '.join(hostile)}: code that a weights file never needs (the file may be "
                         "malicious; do not open it with torch.load or pickle)")
        if unknown:
            hint = ("; read_state_dict() reads the weights of training checkpoints that also hold other objects "
                    "without building those objects" if not self._lenient else "")
            parts.append(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not on segzoo's allow-list "
                         f"of checkpoint types (tensors, NumPy arrays, plain containers){hint}")
        return CheckpointError(f"{self._source}: refused to unpickle: {'; '.join(parts)}. "
                               "Nothing from the file was run.")

    # -- running -----------------------------------------------------------------------------------------

    def _run(self, ops: list[tuple[str, Any, int]]) -> Any:
        """Interpret the opcodes and return the object left by STOP."""
        self._stack, self._metastack, self._memo = [], [], {}
        for name, arg, pos in ops:
            self._pos = pos
            handler = _DISPATCH.get(name)
            if handler is None:
                raise self._error(f"pickle opcode {name} at byte {pos} is not supported by the safe reader")
            try:
                result = handler(self, arg)
            except CheckpointError:
                raise
            except Exception as exc:  # a malformed stream: report it with the file and the position
                raise self._error(f"malformed pickle at byte {pos} ({name}): {type(exc).__name__}: {exc}") from exc
            if name == "STOP":
                return result
        raise self._error("the pickle has no STOP opcode")

    def _error(self, message: str) -> CheckpointError:
        """A CheckpointError naming the file."""
        return CheckpointError(f"{self._source}: {message}")

    def _push(self, value: Any) -> None:
        self._stack.append(value)

    def _pop_mark(self) -> list[Any]:
        items = self._stack
        self._stack = self._metastack.pop()
        return items

    def _call(self, func: Any, args: Any, kwargs: Mapping[str, Any] | None = None, *, new: bool = False) -> Any:
        """Call a global's handler (``new``: as NEWOBJ); unresolved globals record the call instead."""
        if not isinstance(args, tuple):
            raise ValueError(f"call arguments must be a tuple, not {type(args).__name__}")
        kwargs = dict(kwargs or {})
        if isinstance(func, Global):
            fn = func.new if new else func.call
            if fn is None:
                raise self._error(f"{func.qualname} at byte {self._pos} cannot be "
                                  f"{'instantiated with NEWOBJ' if new else 'called'}")
            try:
                return fn(*args, **kwargs)
            except CheckpointError:
                raise
            except Exception as exc:
                raise self._error(f"{func.qualname}{_preview(args)} at byte {self._pos}: {exc}") from exc
        if isinstance(func, UnresolvedGlobal):
            return UnresolvedObject(func.qualname, args, kwargs)
        if self._lenient and isinstance(func, UnresolvedObject):
            return UnresolvedObject(f"{func.qualname}(...)", args, kwargs)
        raise ValueError(f"the pickle calls a {type(func).__name__}, which is not a global")

    def _append(self, target: Any, items: list[Any]) -> None:
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, UnresolvedObject):
            target.appended.extend(items)
        else:
            raise ValueError(f"APPEND to a {type(target).__name__}")

    def _setitems(self, target: Any, items: list[Any]) -> None:
        if len(items) % 2:
            raise ValueError("SETITEMS with an odd number of items")
        pairs = zip(items[::2], items[1::2])
        if isinstance(target, dict):
            for key, value in pairs:
                target[key] = value
        elif isinstance(target, UnresolvedObject):
            for key, value in pairs:
                target.items[key] = value
        else:
            raise ValueError(f"SETITEM on a {type(target).__name__}")

    def _build(self, target: Any, state: Any) -> None:
        if isinstance(target, Record):
            target.build(state)
        elif isinstance(target, dict) and (state is None or isinstance(state, dict)):
            logger.debug("%s: ignoring attributes %s set on a dict", self._source, list(state or ()))
        else:
            raise ValueError(f"BUILD on a {type(target).__name__}")

    def _persistent(self, pid: Any) -> Any:
        if self._persistent_load is None:
            raise self._error(f"persistent id {_preview((pid,))} at byte {self._pos} in a plain pickle "
                              "(only PyTorch files use persistent ids)")
        try:
            return self._persistent_load(pid)
        except CheckpointError:
            raise
        except Exception as exc:
            raise self._error(f"bad persistent id {_preview((pid,))} at byte {self._pos}: {exc}") from exc


# -- opcode handlers ---------------------------------------------------------------------------------------

@_op("PROTO")
def _proto(vm: RestrictedUnpickler, arg: int) -> None:
    if not 0 <= arg <= 5:
        raise ValueError(f"unsupported pickle protocol {arg}")


@_op("FRAME")
def _frame(vm: RestrictedUnpickler, arg: Any) -> None:
    return None


@_op("STOP")
def _stop(vm: RestrictedUnpickler, arg: Any) -> Any:
    return vm._stack.pop()


@_op("MARK")
def _mark(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._metastack.append(vm._stack)
    vm._stack = []


@_op("POP")
def _pop(vm: RestrictedUnpickler, arg: Any) -> None:
    if vm._stack:
        vm._stack.pop()
    else:
        vm._pop_mark()


@_op("POP_MARK")
def _pop_mark_op(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._pop_mark()


@_op("DUP")
def _dup(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(vm._stack[-1])


@_op(*sorted(_CONSTANT_OPS))
def _constant(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(arg)


@_op("BYTEARRAY8")
def _bytearray(vm: RestrictedUnpickler, arg: bytes) -> None:
    vm._push(bytearray(arg))


@_op("NONE")
def _none(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(None)


@_op("NEWTRUE")
def _true(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(True)


@_op("NEWFALSE")
def _false(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(False)


@_op("EMPTY_TUPLE")
def _empty_tuple(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(())


@_op("TUPLE")
def _tuple(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(tuple(vm._pop_mark()))


def _make_tuple_n(size: int) -> _Handler:
    """The handler of TUPLE1/TUPLE2/TUPLE3: the top ``size`` items become a tuple."""

    def handler(vm: RestrictedUnpickler, arg: Any) -> None:
        if len(vm._stack) < size:
            raise IndexError(f"TUPLE{size} needs {size} items on the stack")
        items = tuple(vm._stack[-size:])
        del vm._stack[-size:]
        vm._push(items)

    return handler


_op("TUPLE1")(_make_tuple_n(1))
_op("TUPLE2")(_make_tuple_n(2))
_op("TUPLE3")(_make_tuple_n(3))


@_op("EMPTY_LIST")
def _empty_list(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push([])


@_op("LIST")
def _list(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(list(vm._pop_mark()))


@_op("APPEND")
def _append(vm: RestrictedUnpickler, arg: Any) -> None:
    value = vm._stack.pop()
    vm._append(vm._stack[-1], [value])


@_op("APPENDS")
def _appends(vm: RestrictedUnpickler, arg: Any) -> None:
    items = vm._pop_mark()
    vm._append(vm._stack[-1], items)


@_op("EMPTY_DICT")
def _empty_dict(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push({})


@_op("DICT")
def _dict(vm: RestrictedUnpickler, arg: Any) -> None:
    target: dict[Any, Any] = {}
    vm._setitems(target, vm._pop_mark())
    vm._push(target)


@_op("SETITEM")
def _setitem(vm: RestrictedUnpickler, arg: Any) -> None:
    value = vm._stack.pop()
    key = vm._stack.pop()
    vm._setitems(vm._stack[-1], [key, value])


@_op("SETITEMS")
def _setitems(vm: RestrictedUnpickler, arg: Any) -> None:
    items = vm._pop_mark()
    vm._setitems(vm._stack[-1], items)


@_op("EMPTY_SET")
def _empty_set(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(set())


@_op("ADDITEMS")
def _additems(vm: RestrictedUnpickler, arg: Any) -> None:
    items = vm._pop_mark()
    target = vm._stack[-1]
    if type(target) is not set:
        raise ValueError(f"ADDITEMS on a {type(target).__name__}")
    target.update(items)


@_op("FROZENSET")
def _frozenset(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(frozenset(vm._pop_mark()))


@_op("GET", "BINGET", "LONG_BINGET")
def _get(vm: RestrictedUnpickler, arg: int) -> None:
    if arg not in vm._memo:
        raise KeyError(f"memo entry {arg} was never stored")
    vm._push(vm._memo[arg])


@_op("PUT", "BINPUT", "LONG_BINPUT")
def _put(vm: RestrictedUnpickler, arg: int) -> None:
    vm._memo[arg] = vm._stack[-1]


@_op("MEMOIZE")
def _memoize(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._memo[len(vm._memo)] = vm._stack[-1]


@_op("GLOBAL")
def _global_op(vm: RestrictedUnpickler, arg: str) -> None:
    module, _, name = arg.partition(" ")
    vm._push(vm._global(module, name))


@_op("STACK_GLOBAL")
def _stack_global(vm: RestrictedUnpickler, arg: Any) -> None:
    name = vm._stack.pop()
    module = vm._stack.pop()
    vm._push(vm._global(module, name))


@_op("INST")
def _inst(vm: RestrictedUnpickler, arg: str) -> None:
    module, _, name = arg.partition(" ")
    cls = vm._global(module, name)
    vm._push(vm._call(cls, tuple(vm._pop_mark())))


@_op("OBJ")
def _obj(vm: RestrictedUnpickler, arg: Any) -> None:
    items = vm._pop_mark()
    if not items:
        raise IndexError("OBJ without a class")
    vm._push(vm._call(items[0], tuple(items[1:])))


@_op("REDUCE")
def _reduce(vm: RestrictedUnpickler, arg: Any) -> None:
    args = vm._stack.pop()
    vm._stack[-1] = vm._call(vm._stack[-1], args)


@_op("NEWOBJ")
def _newobj(vm: RestrictedUnpickler, arg: Any) -> None:
    args = vm._stack.pop()
    cls = vm._stack.pop()
    vm._push(vm._call(cls, args, new=True))


@_op("NEWOBJ_EX")
def _newobj_ex(vm: RestrictedUnpickler, arg: Any) -> None:
    kwargs = vm._stack.pop()
    args = vm._stack.pop()
    cls = vm._stack.pop()
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError("NEWOBJ_EX keyword arguments must be a dict with string keys")
    vm._push(vm._call(cls, args, kwargs, new=True))


@_op("BUILD")
def _build(vm: RestrictedUnpickler, arg: Any) -> None:
    state = vm._stack.pop()
    vm._build(vm._stack[-1], state)


@_op("PERSID")
def _persid(vm: RestrictedUnpickler, arg: str) -> None:
    vm._push(vm._persistent(arg))


@_op("BINPERSID")
def _binpersid(vm: RestrictedUnpickler, arg: Any) -> None:
    vm._push(vm._persistent(vm._stack.pop()))


def _preview(args: tuple, limit: int = 120) -> str:
    """A short printable form of call arguments for error messages."""
    text = repr(args)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def materialize(root: Any) -> Any:
    """Turn an unpickled tree into plain values: records become arrays (or stay unresolved), globals become
    :class:`GlobalRef`, containers are copied with their contents materialized; shared references stay shared.
    """
    memo: dict[int, Any] = {}
    keep_alive: list[Any] = []

    def convert(obj: Any) -> Any:
        oid = id(obj)
        if oid in memo:
            return memo[oid]
        keep_alive.append(obj)
        kind = type(obj)
        if isinstance(obj, Record):
            memo[oid] = obj
            out = obj.materialize(convert)
        elif isinstance(obj, (Global, UnresolvedGlobal)):
            out = GlobalRef(obj.qualname)
        elif kind in (dict, defaultdict, OrderedDict):
            out = OrderedDict() if kind is OrderedDict else {}
            memo[oid] = out
            for key, value in obj.items():
                out[convert(key)] = convert(value)
        elif kind is list:
            out = []
            memo[oid] = out
            out.extend(convert(value) for value in obj)
        elif kind is tuple:
            out = tuple(convert(value) for value in obj)
        elif kind in (set, frozenset):
            out = kind(convert(value) for value in obj)
        else:
            out = obj
        memo[oid] = out
        return out

    return convert(root)
