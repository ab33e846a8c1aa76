"""Keras callbacks: atomic best/last checkpoints with resumable state, MLflow metrics."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import keras

from segzoo.io import atomic_path, write_json

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"


class Checkpoints(keras.callbacks.Callback):
    """Save ``last_model.keras`` every epoch and ``best_model.keras`` on improvement, atomically.

    ``training_state.json`` beside them records the epochs done and the best value so that
    ``training.resume_training_from`` continues where a run stopped.
    """

    def __init__(self, saved_dir: Path, monitor: str, best: float | None = None) -> None:
        super().__init__()
        self.saved_dir, self.monitor = Path(saved_dir), monitor
        self.mode_max = not monitor.endswith("loss")
        self.best = best
        self.best_epoch: int | None = None

    @property
    def best_path(self) -> Path:
        return self.saved_dir / "best_model.keras"

    @property
    def last_path(self) -> Path:
        return self.saved_dir / "last_model.keras"

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode_max else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            logger.warning("checkpoint monitor %r missing or not finite at epoch %d", self.monitor, epoch + 1)
        elif self._improved(float(value)):
            logger.info("epoch %d: %s improved to %.4f, saving %s", epoch + 1, self.monitor, value, self.best_path)
            self.best, self.best_epoch = float(value), epoch + 1
            _save(self.model, self.best_path)
        _save(self.model, self.last_path)
        write_json(self.saved_dir / STATE_FILE, {"epochs_done": epoch + 1, "monitor": self.monitor,
                                                 "best": self.best, "best_epoch": self.best_epoch})


def _save(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


def read_state(saved_dir: Path) -> dict:
    """The state written by Checkpoints, or an error naming the missing file."""
    path = Path(saved_dir) / STATE_FILE
    return json.loads(path.read_text())


class MlflowMetrics(keras.callbacks.Callback):
    """Send each epoch's logs (and the learning rate) to the tracker."""

    def __init__(self, tracker) -> None:
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = {k: float(v) for k, v in (logs or {}).items()}
        try:
            metrics["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except (AttributeError, TypeError, ValueError):
            pass
        self.tracker.log_metrics(metrics, step=epoch + 1)
