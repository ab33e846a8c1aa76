"""Restart state of a run, in ``<run dir>/backup``: relaunching the same command in the same run directory
continues after the last completed epoch.

At the end of every epoch the chief writes the trainer's weights (network and optimizer) to
``backup/epoch_<N>.weights.h5``, then ``backup/state.json`` naming that file, the epoch and the state of the
callbacks that decide how training goes on (best value so far, early-stopping and plateau counters); each file is
written atomically and the previous weights file is removed only after the new state names its successor, so a
crash at any moment leaves a complete state behind. The state stays after training ends: a relaunch of a finished
run trains no further (and with more ``training.epochs`` it continues).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import keras

from segzoo.errors import ModelError
from segzoo.io import atomic_path, sidecar_path, verified, write_json

logger = logging.getLogger(__name__)

BACKUP_DIR = "backup"
STATE_JSON = "state.json"
CALLBACK_STATE: Mapping[str, tuple[str, ...]] = {
    "Checkpoints": ("best", "best_epoch"),
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "ReduceLROnPlateau": ("wait", "best", "cooldown_counter"),
}
"""Callback class name -> the attributes that carry its state from one epoch to the next."""


def _plain(value: Any) -> Any:
    """JSON-safe number: infinities and NaN as strings, NumPy scalars as Python ones."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, str) and value in ("inf", "-inf", "nan") else value


class Backup(keras.callbacks.Callback):
    """Writes the restart state every epoch (put it last among the callbacks; only the chief gets one)."""

    def __init__(self, folder: Path, stateful: Sequence[keras.callbacks.Callback] = (),
                 restored: dict | None = None) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.stateful = [c for c in stateful if type(c).__name__ in CALLBACK_STATE]
        self.restored = restored

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Put back the callbacks' state (they reset it in their own ``on_train_begin``)."""
        saved = (self.restored or {}).get("callbacks", {})
        for callback in self.stateful:
            name = type(callback).__name__
            for attribute, value in saved.get(name, {}).items():
                setattr(callback, attribute, _number(value))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = self.folder / f"epoch_{epoch + 1:04d}.weights.h5"
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        callbacks = {type(c).__name__: {a: _plain(getattr(c, a, None)) for a in CALLBACK_STATE[type(c).__name__]}
                     for c in self.stateful}
        write_json(self.folder / STATE_JSON, {"epochs_done": epoch + 1, "weights": weights.name,
                                              "callbacks": callbacks})
        for old in self.folder.glob("epoch_*.weights.h5"):
            if old != weights:
                old.unlink(missing_ok=True)
                sidecar_path(old).unlink(missing_ok=True)


def read_backup(folder: Path) -> dict | None:
    """The last state written by :class:`Backup`, or None when the folder holds none."""
    path = Path(folder) / STATE_JSON
    if not path.is_file():
        return None
    try:
        state = json.loads(verified(path).read_text())
        weights = Path(folder) / state["weights"]
        int(state["epochs_done"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: not a restart state ({exc}); delete {folder} to train this run from the "
                         "start") from None
    if not weights.is_file():
        raise ModelError(f"{path} names {weights.name}, which is missing; delete {folder} to train this run from "
                         "the start")
    return {**state, "weights_path": weights}


def build_trainer(trainer: keras.Model) -> None:
    """Create the trainer's and its optimizer's variables (in the strategy's scope) before they are restored."""
    trainer(keras.ops.zeros((1, *trainer.network.input_shape[1:])))
    trainer.optimizer.build(trainer.trainable_variables)


def restore_trainer(trainer: keras.Model, weights: Path, hint: str) -> None:
    """Load the trainer's network and optimizer variables (built by :func:`build_trainer`) from a weights file;
    ``hint`` says what to do when it does not fit."""
    verified(weights)
    try:
        trainer.load_weights(weights)
    except Exception as exc:  # noqa: BLE001 - a damaged file, or one of another model
        raise ModelError(f"cannot restore the training state {weights}: {exc}. It belongs to another model, "
                         f"optimizer or precision, or is damaged: {hint}") from exc
