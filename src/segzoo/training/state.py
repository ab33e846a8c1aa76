"""The resumable state of a training run (``training_state.json``), read without TensorFlow.

Checkpoints (``segzoo.training.callbacks``) write it every epoch, atomically and with its sha256 sidecar;
``training.resume_training_from`` reads it back here: a missing, malformed or damaged state is a ConfigError or
ModelError naming the file, never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

from segzoo.errors import ConfigError
from segzoo.io import verified

STATE_FILE = "training_state.json"
STATE_WEIGHTS = "last_state.weights.h5"
LAST_MODEL = "last_model.keras"


def read_state(saved_dir: Path) -> dict:
    """The state written by Checkpoints; OSError when missing, ValueError when malformed, ModelError when damaged."""
    path = verified(Path(saved_dir) / STATE_FILE)
    state = json.loads(path.read_text(encoding="utf-8"))
    epochs = state.get("epochs_done") if isinstance(state, dict) else None
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 0:
        raise ValueError("no count of epochs done ('epochs_done')")
    best = state.get("best")
    if best is not None and (isinstance(best, bool) or not isinstance(best, (int, float))):
        raise ValueError(f"'best' is not a number: {best!r}")
    return state


def read_resumable_state(source: str | Path, saved_models_dir: str) -> dict:
    """The state of the run directory ``source`` to resume from (``training.resume_training_from``)."""
    saved = Path(source) / saved_models_dir
    try:
        state = read_state(saved)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"training.resume_training_from: {str(source)!r} holds no resumable run "
                          f"({saved / STATE_FILE}: {exc})") from None
    if not (saved / LAST_MODEL).is_file():
        raise ConfigError(f"training.resume_training_from: {saved / LAST_MODEL} is missing")
    return state
