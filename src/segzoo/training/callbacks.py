"""Keras callbacks: atomic best/last checkpoints with resumable state, MLflow metrics."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import keras

from segzoo.io import atomic_path, recorded_sha256, sidecar_path, write_json
from segzoo.training.state import STATE_FILE, STATE_WEIGHTS, STATE_WEIGHTS_GLOB, state_weights_name

logger = logging.getLogger(__name__)


class Checkpoints(keras.callbacks.Callback):
    """Atomic checkpoints of the trained network, every epoch, with the state to resume from.

    Every epoch: ``last_model.keras`` (the network, with any training-only heads), ``state_epoch_<N>.weights.h5``
    (the network and the optimizer's variables) and, last, ``training_state.json`` (epochs done, best value, the
    name and sha256 of that weights file); the previous weights file is removed after the state names the new one,
    so a kill at any point leaves a state and weights of the same epoch (``segzoo.training.state``). On improvement of
    ``monitor``: ``best_model.keras``, the exported model (training heads dropped) that evaluation, quantization and
    deployment use, and, for networks with training heads, ``best_checkpoint.keras`` (the network itself).
    """

    def __init__(self, saved_dir: Path, monitor: str, best: float | None = None,
                 export: Callable[[keras.Model], keras.Model] | None = None) -> None:
        super().__init__()
        self.saved_dir, self.monitor = Path(saved_dir), monitor
        self.mode_max = not monitor.endswith("loss")
        self.best = best
        self.best_epoch: int | None = None
        self.export = export

    @property
    def best_path(self) -> Path:
        return self.saved_dir / "best_model.keras"

    @property
    def best_checkpoint_path(self) -> Path:
        return self.saved_dir / "best_checkpoint.keras" if self.export else self.best_path

    @property
    def last_path(self) -> Path:
        return self.saved_dir / "last_model.keras"

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode_max else value < self.best

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        network = getattr(self.model, "network", self.model)
        value = logs.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            logger.warning("checkpoint monitor %r missing or not finite at epoch %d", self.monitor, epoch + 1)
        elif self._improved(float(value)):
            logger.info("epoch %d: %s improved to %.4f, saving %s", epoch + 1, self.monitor, value, self.best_path)
            self.best, self.best_epoch = float(value), epoch + 1
            if self.export is not None:
                _save(network, self.best_checkpoint_path)
                _save(self.export(network), self.best_path)
            else:
                _save(network, self.best_path)
        _save(network, self.last_path)
        self._save_state(epoch + 1)

    def _save_state(self, epochs_done: int) -> None:
        """The weights of this epoch, then the state that names them (written last), then the older weights go."""
        weights = self.saved_dir / state_weights_name(epochs_done)
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        write_json(self.saved_dir / STATE_FILE, {"epochs_done": epochs_done, "monitor": self.monitor,
                                                 "best": self.best, "best_epoch": self.best_epoch,
                                                 "weights": weights.name, "weights_sha256": recorded_sha256(weights)})
        for old in [*self.saved_dir.glob(STATE_WEIGHTS_GLOB), self.saved_dir / STATE_WEIGHTS]:
            if old != weights:
                old.unlink(missing_ok=True)
                sidecar_path(old).unlink(missing_ok=True)


def _save(model: keras.Model, path: Path) -> None:
    with atomic_path(path) as tmp:
        model.save(tmp)


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
