"""Fill Keras variables from an official state dict, every planned variable exactly once.

A model's ``weights.py`` builds a :class:`WeightPlan` (Keras variable, official key, layout transform) and
calls :func:`assign_weights`. Nothing is assigned unless every check passes; otherwise one ModelError lists all
problems at once: official keys missing from the file, file keys that nothing uses (unless ignored), shapes that
do not match after the transform (both shapes shown), variables planned twice, and (with ``model=``) model
weights that no entry fills or planned variables that are not the model's. Variables only need ``shape``,
``dtype``, ``assign()`` and a ``path`` or ``name`` (Keras 3 variables have them), so no TensorFlow import here.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segzoo.checkpoints.transforms import identity
from segzoo.errors import ModelError

logger = logging.getLogger(__name__)

MAX_LISTED = 25
"""Problems listed per kind in an error message (the rest are counted)."""

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PlannedWeight:
    """One Keras variable and the official weight that fills it."""

    variable: Any
    key: str
    transform: Transform = identity


@dataclass
class WeightPlan:
    """The (Keras variable, official key, transform) entries of one weight import, in the order added."""

    entries: list[PlannedWeight] = field(default_factory=list)

    def add(self, variable: Any, key: str, transform: Transform = identity) -> WeightPlan:
        """Plan ``variable = transform(state_dict[key])``; returns the plan for chaining."""
        self.entries.append(PlannedWeight(variable, key, transform))
        return self

    def keys(self) -> list[str]:
        """The official keys the plan reads."""
        return [entry.key for entry in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[PlannedWeight]:
        return iter(self.entries)


@dataclass(frozen=True)
class AssignmentReport:
    """What an import did: variables filled and file keys deliberately left unused."""

    assigned: int
    ignored_keys: tuple[str, ...]


def variable_name(variable: Any) -> str:
    """A variable's name for messages (Keras 3 ``path``, else ``name``)."""
    return str(getattr(variable, "path", None) or getattr(variable, "name", None) or repr(variable))


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in value.shape)


def _transform_name(transform: Transform) -> str:
    return getattr(transform, "__name__", None) or getattr(getattr(transform, "func", None), "__name__", "transform")


def _listed(title: str, items: Sequence[str]) -> list[str]:
    """A message section: a title and up to MAX_LISTED items."""
    if not items:
        return []
    lines = [f"{title} ({len(items)}):"] + [f"  - {item}" for item in items[:MAX_LISTED]]
    if len(items) > MAX_LISTED:
        lines.append(f"  ... and {len(items) - MAX_LISTED} more")
    return lines


def assign_weights(plan: WeightPlan, state_dict: Mapping[str, np.ndarray], *, ignore: Sequence[str] = (),
                   source: str = "", model: Any = None) -> AssignmentReport:
    """Fill every planned variable from ``state_dict``, or raise a ModelError listing every problem.

    ``ignore``: substrings of file keys that may stay unused (``"num_batches_tracked"``); ``source``: the file
    name for messages; ``model``: when given, every weight in ``model.weights`` must be planned.
    """
    values: list[np.ndarray] = []
    shape_errors: list[str] = []
    missing: list[str] = []
    for entry in plan:
        name = variable_name(entry.variable)
        if entry.key not in state_dict:
            close = difflib.get_close_matches(entry.key, list(state_dict), n=1)
            missing.append(f"{entry.key} (for {name}){f'; closest key in the file: {close[0]}' if close else ''}")
            continue
        raw = np.asarray(state_dict[entry.key])
        try:
            value = np.asarray(entry.transform(raw))
        except (ValueError, TypeError) as exc:
            shape_errors.append(f"{entry.key} {raw.shape}: {_transform_name(entry.transform)} failed: {exc}")
            continue
        if value.shape != _shape(entry.variable):
            via = "" if entry.transform is identity else f" -> {_transform_name(entry.transform)} -> {value.shape}"
            shape_errors.append(f"{entry.key}: file shape {raw.shape}{via}, but {name} has shape "
                                f"{_shape(entry.variable)}")
            continue
        values.append(value)

    planned_keys = set(plan.keys())
    unused = [f"{key} {np.shape(state_dict[key])}" for key in state_dict
              if key not in planned_keys and not any(part in key for part in ignore)]
    ignored = tuple(key for key in state_dict if key not in planned_keys and any(part in key for part in ignore))
    sections = [("Keras variables planned more than once", _planned_twice(plan)),
                ("official keys missing from the file", missing),
                ("shape mismatches", shape_errors),
                ("keys in the file that no variable uses", unused),
                ("model weights that the plan never fills or that are not the model's", _model_coverage(plan, model))]
    count = sum(len(items) for _, items in sections)
    if count:
        lines = [line for title, items in sections for line in _listed(title, items)]
        raise ModelError("\n".join([f"{source or 'state dict'}: cannot import the weights ({count} problems; "
                                    "nothing was assigned):", *lines]))
    for entry, value in zip(plan, values):
        entry.variable.assign(value.astype(np.dtype(str(entry.variable.dtype)), copy=False))
    logger.info("%s: %d weights imported, %d file keys ignored", source or "state dict", len(values), len(ignored))
    return AssignmentReport(len(values), ignored)


def _planned_twice(plan: WeightPlan) -> list[str]:
    """Variables that appear in more than one entry, with their keys."""
    keys_by_variable: dict[int, list[str]] = {}
    for entry in plan:
        keys_by_variable.setdefault(id(entry.variable), []).append(entry.key)
    variables = {id(entry.variable): entry.variable for entry in plan}
    return [f"{variable_name(variables[vid])} from {', '.join(keys)}"
            for vid, keys in keys_by_variable.items() if len(keys) > 1]


def _model_coverage(plan: WeightPlan, model: Any) -> list[str]:
    """Model weights missing from the plan and planned variables that are not the model's."""
    if model is None:
        return []
    weights = list(model.weights)
    model_ids = {id(v) for v in weights}
    planned_ids = {id(entry.variable) for entry in plan}
    never = [f"{variable_name(v)} {_shape(v)} is never planned" for v in weights if id(v) not in planned_ids]
    foreign = [f"{variable_name(entry.variable)} (from {entry.key}) is not a weight of the model"
               for entry in plan if id(entry.variable) not in model_ids]
    return never + foreign
