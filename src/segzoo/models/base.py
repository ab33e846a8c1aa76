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
- ``file_importer``: ``"module:function"``, ``(model, path, params) -> None``: loads a weights file the user gives
  as ``pretrained_weights`` (a path rather than a name).
- ``custom_objects``: ``"module:attribute"``, the dict of custom Keras classes needed to load the family's saved
  models.
- ``presets``: named variants, ``name -> {param: value, ..., "num_classes": n}`` (listed by
  ``python -m segzoo.models``, built by the registry-driven tests at ``tiny_input_shape``, the smallest input the
  family accepts).
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
    """An official checkpoint a user can import: where it is published, how to verify it, what it needs.

    ``file_name``, ``alternatives`` and ``url`` are templates filled with the model params (``{alpha}``) and, for
    ``url``, ``{file_name}``. ``alternatives`` are other file names that hold the same weights (searched after
    ``file_name``). ``params``/``num_classes``: what the checkpoint requires of the model (checked before import).
    ``importer``: ``"module:function"``, ``(model, path, params) -> None``. ``cache``: ``"segzoo"`` or ``"keras"``
    (Keras's own cache, for Keras application weights).
    """

    name: str
    file_name: str
    url: str | None
    importer: str
    sha256: str | None = None
    alternatives: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    cache: str = "segzoo"
    description: str = ""

    def file_names(self, params: ModelParams) -> list[str]:
        """The acceptable file names for ``params``, best first."""
        values = params.to_dict()
        names = [template.format(**values) for template in (self.file_name, *self.alternatives)]
        return list(dict.fromkeys(names))

    def download_url(self, params: ModelParams) -> str | None:
        """Where the file of ``params`` is published."""
        if self.url is None:
            return None
        return self.url.format(file_name=self.file_names(params)[0], **params.to_dict())


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
    file_importer: str | None = None
    custom_objects: str | None = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tiny_input_shape: tuple[int, int, int] = (64, 64, 3)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"family {self.name}: unknown task {self.task!r}")
        object.__setattr__(self, "weights", MappingProxyType(dict(self.weights)))
        object.__setattr__(self, "presets", MappingProxyType({k: MappingProxyType(dict(v))
                                                              for k, v in self.presets.items()}))


def resolve(target: str) -> Any:
    """The object named by ``"package.module:attribute"`` (imported on demand)."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)
