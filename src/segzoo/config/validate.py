"""Turn a plain config dict into the typed schema, collecting every problem with its full key path.

No TensorFlow here: this runs in a few seconds, before any heavy import.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import types
import typing
from functools import cache
from typing import Any, Literal, Union

from segzoo.config.schema import FREE_FORM_KEYS, Config
from segzoo.errors import ConfigError, ModelError
from segzoo.models.base import ModelParams

log = logging.getLogger(__name__)

_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FRACTION = re.compile(rf"^\s*({_NUMBER})\s*(?:/\s*({_NUMBER}))?\s*$")
_INT_TUPLE = re.compile(r"^\s*[\(\[]?\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*[\)\]]?\s*$")


class _Invalid(Exception):
    """A value that does not fit its type; the message says what was expected."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _family_classes() -> list[type]:
    from segzoo.models.registry import family_names, get_family

    return [get_family(name).params for name in family_names()]


def _walk(cls: type, prefix: str, paths: list[str]) -> None:
    for name, tp in _hints(cls).items():
        path = f"{prefix}{name}"
        if path not in paths:
            paths.append(path)
        if tp is ModelParams:
            for family_cls in _family_classes():
                _walk(family_cls, path + ".", paths)
        elif dataclasses.is_dataclass(tp):
            _walk(tp, path + ".", paths)


@cache
def all_key_paths() -> tuple[str, ...]:
    """Every valid dotted key of the schema (sections and leaves; ``training.model`` keys of every family)."""
    paths: list[str] = []
    _walk(Config, "", paths)
    return tuple(paths)


@cache
def _family_keys(cls: type) -> tuple[str, ...]:
    paths: list[str] = []
    _walk(cls, "", paths)
    return tuple(paths)


def suggest(path: str) -> str:
    """' did you mean X?' for the closest valid key to ``path``, or ''.

    The same key name in another section wins (``training.class_names`` -> ``dataset.class_names``),
    then the closest sibling, then the closest key anywhere.
    """
    parent, _, leaf = path.rpartition(".")
    same_leaf = [p for p in all_key_paths() if p.rpartition(".")[2] == leaf]
    siblings = [p for p in all_key_paths() if p.rpartition(".")[0] == parent]
    match = (same_leaf[:1] or difflib.get_close_matches(path, siblings, n=1, cutoff=0.6)
             or difflib.get_close_matches(path, all_key_paths(), n=1, cutoff=0.75))
    return f"; did you mean {match[0]}?" if match else ""


def is_known_key(path: str) -> bool:
    """Whether a dotted key exists in the schema (children of free-form keys count as known)."""
    if path in all_key_paths() or path.split(".")[0] == "hydra":
        return True
    return any(path.startswith(prefix + ".") for prefix in FREE_FORM_KEYS)


def _fmt(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Convert ``value`` to type ``tp`` or raise _Invalid; nested dataclasses record their own errors."""
    origin = typing.get_origin(tp)
    if tp is ModelParams:
        return _build_family_params(value, path, errors)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(value, typing.get_args(tp), path, errors)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[0]):
            return value
        if isinstance(allowed[0], float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            for option in allowed:  # alpha: 1 means 1.0
                if float(value) == option:
                    return option
        if isinstance(value, str):  # ST writes e.g. "TFlite_converter", "PTQ"
            by_lower = {str(a).lower(): a for a in allowed}
            if value.lower() in by_lower:
                return by_lower[value.lower()]
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise _Invalid(f"bad value {_fmt(value)}; allowed values: {', '.join(map(str, allowed))}{hint}")
    if origin is list:
        return _convert_list(value, typing.get_args(tp)[0], path, errors)
    if origin is dict:
        return _convert_dict(value, typing.get_args(tp), path, errors)
    return _convert_scalar(value, tp)


def _convert_union(value: Any, args: tuple, path: str, errors: list[str]) -> Any:
    if value is None:
        if type(None) in args:
            return None
        raise _Invalid("a value is required")
    problems = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _convert(value, arg, path, errors)
        except _Invalid as exc:
            problems.append(str(exc))
    raise _Invalid(" or ".join(dict.fromkeys(problems)))


def _convert_list(value: Any, item_tp: Any, path: str, errors: list[str]) -> list:
    if isinstance(value, str) and item_tp is int and (m := _INT_TUPLE.match(value)):
        value = [int(v) for v in m.group(1).split(",")]
    if not isinstance(value, (list, tuple)):
        raise _Invalid(f"expected a list, got {_fmt(value)}")
    return [_convert(v, item_tp, f"{path}[{i}]", errors) for i, v in enumerate(value)]


def _convert_dict(value: Any, args: tuple, path: str, errors: list[str]) -> dict:
    if not isinstance(value, dict):
        raise _Invalid(f"expected a mapping, got {_fmt(value)}")
    key_tp, value_tp = args
    out = {}
    for k, v in value.items():
        try:
            out[_convert(k, key_tp, path, errors)] = _convert(v, value_tp, f"{path}.{k}", errors)
        except _Invalid as exc:
            raise _Invalid(f"entry {k}: {exc}") from None
    return out


def _convert_scalar(value: Any, tp: type) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Invalid(f"expected true or false, got {_fmt(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Invalid(f"expected an integer, got {_fmt(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise _Invalid(f"number too large: {value}") from None
        elif isinstance(value, str) and (m := _FRACTION.match(value)):
            num, den = float(m.group(1)), float(m.group(2) or 1.0)
            if den == 0:
                raise _Invalid(f"division by zero in {_fmt(value)}")
            number = num / den
        else:
            raise _Invalid(f"expected a number (e.g. 0.5 or 1/127.5), got {_fmt(value)}")
        if not math.isfinite(number):
            raise _Invalid(f"expected a finite number, got {_fmt(value)}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Invalid(f"expected a string, got {_fmt(value)}")
    raise TypeError(f"schema type not supported: {tp}")


def _build_family_params(data: Any, path: str, errors: list[str]) -> ModelParams:
    """``training.model``: validated by the params dataclass of the family its ``name`` selects."""
    from segzoo.models.registry import DEFAULT_FAMILY, get_family

    data = {} if data is None else data
    if not isinstance(data, dict):
        raise _Invalid(f"expected a section (mapping), got {_fmt(data)}")
    name = data.get("name", DEFAULT_FAMILY)
    try:
        family = get_family(name)
    except ModelError as exc:
        errors.append(f"{path}.name: {exc}")
        return get_family(DEFAULT_FAMILY).params()
    params = _build(family.params, data, path, errors)
    shape_problem = _input_shape_problem(params.input_shape)
    if shape_problem:  # the family's own checks assume a usable shape
        errors.append(f"{path}.input_shape: {shape_problem}")
        return params
    errors.extend(f"{path}.{problem}" for problem in params.check())
    return params


MAX_INPUT_SIZE = 4096
"""Largest model input height or width a config may ask for."""


def _input_shape_problem(shape: list[int]) -> str | None:
    """What is wrong with a ``training.model.input_shape`` (every family's), or None."""
    if len(shape) != 3:
        return f"expected [height, width, channels], got {shape}"
    height, width, channels = shape
    if not (1 <= height <= MAX_INPUT_SIZE and 1 <= width <= MAX_INPUT_SIZE):
        return f"height and width must be in 1..{MAX_INPUT_SIZE}, got {height}x{width}"
    if channels not in (1, 3):
        return f"channels must be 1 (grayscale) or 3 (RGB), got {channels}"
    return None


def _unknown_key(cls: type, key_path: str, errors: list[str]) -> None:
    """Record an unknown key; in a family's section, a key of another family is only a warning."""
    if not (isinstance(cls, type) and issubclass(cls, ModelParams)):
        errors.append(f"{key_path}: unknown key{suggest(key_path)}")
        return
    section, _, key = key_path.rpartition(".")
    family = cls().name
    if key_path in all_key_paths():
        log.warning("%s is not a key of model family %s: ignored", key_path, family)
        return
    own = list(_family_keys(cls))
    match = difflib.get_close_matches(key, own, n=1, cutoff=0.6)
    hint = f"; did you mean {section}.{match[0]}?" if match else ""
    errors.append(f"{key_path}: unknown key for model family {family}{hint} (its keys: {', '.join(own)})")


def build_section(cls: type, data: Any, path: str) -> tuple[Any, list[str]]:
    """Instantiate dataclass ``cls`` from plain ``data`` validated like the config; (object, problems)."""
    errors: list[str] = []
    try:
        return _build(cls, data, path, errors), errors
    except _Invalid as exc:
        return cls(), [f"{path}: {exc}"]


def _build(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, appending problems to ``errors``."""
    prefix = f"{path}." if path else ""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise _Invalid(f"expected a section (mapping), got {_fmt(data)}")
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        key_path = f"{prefix}{key}"
        if key not in hints:
            _unknown_key(cls, key_path, errors)
            continue
        try:
            kwargs[key] = _convert(value, hints[key], key_path, errors)
        except _Invalid as exc:
            errors.append(f"{key_path}: {exc}")
    return cls(**kwargs)


def build_config(data: dict[str, Any]) -> tuple[Config, list[str]]:
    """Build the typed config from a plain dict; returns it with the list of problems found."""
    errors: list[str] = []
    data = {k: v for k, v in (data or {}).items() if k not in ("hydra", "defaults")}
    try:
        cfg = _build(Config, data, "", errors)
    except _Invalid as exc:  # the whole file is not a mapping
        raise ConfigError(f"configuration: {exc}") from None
    return cfg, errors


def raise_if_errors(errors: list[str], source: str = "configuration") -> None:
    """Raise one ConfigError listing every problem."""
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors)
        plural = "s" if len(errors) > 1 else ""
        raise ConfigError(f"Invalid {source} ({len(errors)} problem{plural}):\n{lines}")
