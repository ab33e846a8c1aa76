"""The resumable state of a training run (``training_state.json``), read without TensorFlow.

Checkpoints (``segzoo.training.callbacks``) write, every epoch, the trainer's weights (network and optimizer) to an
epoch-stamped ``state_epoch_<N>.weights.h5``, then ``training_state.json`` naming that file and its sha256, last;
the previous weights file is removed only after the new state names its successor. A kill at any moment therefore
leaves a state and the weights of the same epoch: never the weights of epoch N+1 with the state of epoch N.
``training.resume_training_from`` reads the pair back here: a missing, malformed, damaged or mismatched state is a
ConfigError or ModelError naming the file, never a traceback. Runs written before the weights were epoch-stamped
(``last_state.weights.h5``, no name in the state) still resume, and 0.1 runs (no weights file) resume from their
compiled checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from segzoo.errors import ConfigError, ModelError
from segzoo.io import sha256_file, verified

STATE_FILE = "training_state.json"
STATE_WEIGHTS = "last_state.weights.h5"
"""The state's weights in runs written before they were epoch-stamped (read only)."""
STATE_WEIGHTS_GLOB = "state_epoch_*.weights.h5"
LAST_MODEL = "last_model.keras"
_STAMPED = re.compile(r"state_epoch_\d{4,}\.weights\.h5")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def state_weights_name(epochs_done: int) -> str:
    """The name of the weights file that goes with the state after ``epochs_done`` epochs."""
    return f"state_epoch_{epochs_done:04d}.weights.h5"


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
    if "weights" in state or "weights_sha256" in state:
        weights, digest = state.get("weights"), state.get("weights_sha256")
        if not isinstance(weights, str) or not _STAMPED.fullmatch(weights):
            raise ValueError(f"'weights' is not the name of a state weights file: {weights!r}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(f"'weights_sha256' is not a sha256: {digest!r}")
    return state


def state_weights(saved_dir: Path, state: dict) -> Path | None:
    """The weights file that belongs to ``state`` (checked against the sha256 the state records), the unpaired
    ``last_state.weights.h5`` of an older run, or None (a 0.1 run: its compiled checkpoint holds the optimizer)."""
    saved_dir = Path(saved_dir)
    if "weights" not in state:
        legacy = saved_dir / STATE_WEIGHTS
        return legacy if legacy.is_file() else None
    weights = saved_dir / state["weights"]
    if not weights.is_file():
        raise ModelError(f"{saved_dir / STATE_FILE} names {weights.name}, which is missing: the run directory "
                         "was changed after training wrote it; resume from a complete copy of the run, or train "
                         "from the start")
    if sha256_file(weights) != state["weights_sha256"]:
        raise ModelError(f"{weights}: its sha256 differs from the one {STATE_FILE} records for epoch "
                         f"{state['epochs_done']}: the file is damaged or from another run; resume from a complete "
                         "copy of the run, or train from the start")
    return weights


def read_resumable_state(source: str | Path, saved_models_dir: str) -> dict:
    """The state of the run directory ``source`` to resume from (``training.resume_training_from``), with
    ``weights_path``: the weights of the same epoch (see :func:`state_weights`)."""
    saved = Path(source) / saved_models_dir
    try:
        state = read_state(saved)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"training.resume_training_from: {str(source)!r} holds no resumable run "
                          f"({saved / STATE_FILE}: {exc})") from None
    if not (saved / LAST_MODEL).is_file():
        raise ConfigError(f"training.resume_training_from: {saved / LAST_MODEL} is missing")
    return {**state, "weights_path": state_weights(saved, state)}
