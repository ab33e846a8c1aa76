"""What a model family provides to the pipeline (no TensorFlow here: the config validator reads it).

A family is one package under ``segzoo.models`` whose ``__init__`` defines ``FAMILY = Family(...)``:

- ``params``: a dataclass extending :class:`ModelParams`, the single source of the family's ``training.model`` keys,
  their defaults and allowed values (``Literal`` types list the choices; ``check()`` adds cross-field rules).
- ``builder``: ``"module:function"``, ``(params, num_classes) -> keras.Model``, the *training* graph. A family with
  training-only heads returns a model whose outputs are a dict ``{"logits": main, <head>: ...}``; a family with one
  output returns the logits tensor itself.
- ``exporter``: ``"module:function"``, ``(model, params) -> keras.Model``, the inference graph (training-only heads
  dropped, one ``logits`` output). ``None``: the trained model is already the inference model.
- ``losses``: ``"module:function"``, ``(params, num_classes, ignore_index, class_weights) -> list[LossTerm]``.
  ``None``: ignore-aware cross-entropy on ``logits``.
- ``targets``: the training targets the data pipeline must produce besides ``"labels"`` (e.g. ``"boundary"``).
- ``weights``: named official checkpoints (:class:`WeightSource`), selectable as ``training.model.pretrained_weights``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

TASKS: tuple[str, ...] = ("semantic_segmentation", "pose_estimation", "promptable_segmentation")


@dataclass
class ModelParams:
    """``training.model`` keys common to every family; a family's params dataclass extends this one."""

    name: str = ""
    input_shape: list[int] = field(default_factory=lambda: [128, 128, 3])
    pretrained_weights: str | None = None

    def check(self) -> list[str]:
        """Cross-field problems, each as ``"<key>: <what is wrong>"`` (keys relative to ``training.model``)."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """The params as a plain dict (for reports and logs)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class LossTerm:
    """One weighted training loss: ``fn(targets, outputs) -> scalar``.

    ``targets`` holds ``"labels"`` (int32 ``[B,H,W]``, ignored pixels at the ignore index) and the family's extra
    targets; ``outputs`` is the training model's output dict (``{"logits": ...}`` for single-output models).
    """

    name: str
    weight: float
    fn: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


@dataclass(frozen=True)
class WeightSource:
    """An official checkpoint a user can import: where it is published, how to verify it, what it needs."""

    name: str
    file_name: str
    url: str | None
    importer: str
    sha256: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    description: str = ""


@dataclass(frozen=True)
class Family:
    """One model family (see the module docstring)."""

    name: str
    params: type[ModelParams]
    builder: str
    description: str
    task: str = "semantic_segmentation"
    exporter: str | None = None
    losses: str | None = None
    targets: tuple[str, ...] = ()
    weights: Mapping[str, WeightSource] = field(default_factory=dict)
    custom_objects: str | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"family {self.name}: unknown task {self.task!r}")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))


def resolve(target: str) -> Any:
    """The object named by ``"package.module:attribute"`` (imported on demand)."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
