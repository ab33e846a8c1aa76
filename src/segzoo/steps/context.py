"""The state shared by the steps of one invocation: configuration, run directory, tracker, the task, and the
run's named model artifacts and results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segzoo.config.schema import Config
from segzoo.errors import ConfigError
from segzoo.tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.quantization.quantize import QuantizationResult
    from segzoo.tasks.base import Task

MODEL = "model"
"""Role of the model the run starts from: ``general.model_path``, or the exported model of a training step."""
QUANTIZED = "quantized"
"""Role of the model written by a quantize step."""


@dataclass
class RunContext:
    """What the steps of one operation mode share.

    ``models`` maps a role (:data:`MODEL`, :data:`QUANTIZED`) to a model file, or to a folder for a model made of
    several networks (``general.pipeline``); ``current`` is the role the next
    evaluate step works on (the latest model produced). ``checkpoint`` is the training checkpoint with its
    training-only heads. ``evaluations`` holds each role's evaluation summary, so that a later comparison reuses it.
    ``summary`` is what ``results.json`` reports, one entry per step; steps never read it. ``skipped`` lists the
    items a step left out (unreadable images, bad pairs with ``dataset.on_bad_sample: skip``): the run goes on and
    reports them at the end (exit code 6).
    """

    cfg: Config
    run_dir: Path
    tracker: Tracker
    models: dict[str, Path] = field(default_factory=dict)
    current: str = MODEL
    checkpoint: Path | None = None
    quantization: QuantizationResult | None = None
    evaluations: dict[str, dict] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    _task: Task | None = None

    @property
    def task(self) -> Task:
        """The task of this run (built once; it owns the data of the run)."""
        if self._task is None:
            from segzoo.tasks import make_task

            self._task = make_task(self)
        return self._task

    def model(self, role: str | None = None) -> Path:
        """The model of ``role`` (default: the current one). For :data:`MODEL`: ``general.model_path``, else the
        files of ``general.pipeline`` found or downloaded, else ``training.model`` built with its pretrained
        weights (imported once, saved in the run)."""
        role = role or self.current
        if role in self.models:
            return self.models[role]
        if role == MODEL and self.cfg.general.model_path:
            return Path(self.cfg.general.model_path)
        if role == MODEL and (self.cfg.general.pipeline or self.cfg.training.model.pretrained_weights):
            self.models[MODEL] = self.task.import_model()
            return self.models[MODEL]
        raise ConfigError("general.model_path: required (no model was trained in this run, and "
                          "training.model.pretrained_weights names no weights to import)")

    def record_skipped(self, step: str, entries: list[dict]) -> None:
        """Add items a step left out (each ``{"item", "reason", ...}``) to the run's list."""
        self.skipped.extend({"step": step, **entry} for entry in entries)

    def add_model(self, role: str, path: Path) -> None:
        """Record a model produced by a step; it becomes the current model."""
        self.models[role] = Path(path)
        self.current = role
