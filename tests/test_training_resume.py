"""The state a killed training resumes from is one epoch's: a kill between writing the weights and the state that
names them (``training.resume_training_from``) resumes from the previous epoch's pair, never from weights of epoch
N+1 with the state of epoch N.

The quick tests drive the real ``Checkpoints`` callback on a tiny model and stop it at each write in turn (a
monkeypatched write raising where a kill would land). The ``heavy`` ones kill real trainings with SIGKILL: at the
publication of the state of epoch 2 (``--kill-at-publish-of``), during an epoch and during a checkpoint write, then
relaunch the same command in the same ``hydra.run.dir`` (restart state in ``<run dir>/backup``) or resume with
``training.resume_training_from``; the result is compared with an uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from segzoo.errors import ModelError
from segzoo.training import callbacks as callbacks_module
from segzoo.training.callbacks import Checkpoints
from segzoo.training.state import STATE_FILE, read_resumable_state, state_weights_name


class Killed(BaseException):
    """Where SIGKILL would have landed (a BaseException: nothing in segzoo catches it)."""


def _model() -> keras.Model:
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(inputs))
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def _epoch(checkpoints: Checkpoints, model: keras.Model, epoch: int, value: float) -> np.ndarray:
    """Give the model this epoch's weights (a recognisable constant) and end the epoch."""
    kernel = np.full((4, 3), float(epoch + 1), np.float32)
    model.get_layer("dense").kernel.assign(kernel)
    checkpoints.on_epoch_end(epoch, {"val_miou": value})
    return kernel


def _restored_kernel(weights: Path) -> np.ndarray:
    model = _model()
    model.load_weights(weights)
    return keras.ops.convert_to_numpy(model.get_layer("dense").kernel)


def _checkpoints(tmp_path: Path) -> tuple[Checkpoints, keras.Model, Path]:
    saved = tmp_path / "run" / "saved_models"
    model = _model()
    checkpoints = Checkpoints(saved, "val_miou")
    checkpoints.set_model(model)
    return checkpoints, model, saved


def test_killed_between_the_weights_and_the_state_resumes_from_the_previous_epochs_pair(tmp_path, monkeypatch):
    checkpoints, model, saved = _checkpoints(tmp_path)
    first = _epoch(checkpoints, model, 0, 0.3)

    def killed(path, data, **kwargs):  # noqa: ANN001, ANN003 - write_json's signature
        raise Killed(path)

    monkeypatch.setattr(callbacks_module, "write_json", killed)
    with pytest.raises(Killed, match=STATE_FILE):
        _epoch(checkpoints, model, 1, 0.4)
    assert (saved / state_weights_name(2)).is_file()  # the weights of epoch 2 are in place, its state is not
    state = read_resumable_state(tmp_path / "run", "saved_models")
    assert state["epochs_done"] == 1 and state["best"] == pytest.approx(0.3)
    assert state["weights_path"] == saved / state_weights_name(1)
    np.testing.assert_array_equal(_restored_kernel(state["weights_path"]), first)


def test_killed_after_the_state_before_the_old_weights_went_resumes_from_the_new_pair(tmp_path, monkeypatch):
    checkpoints, model, saved = _checkpoints(tmp_path)
    _epoch(checkpoints, model, 0, 0.3)
    original = Path.unlink

    def unlink(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - Path.unlink's signature
        if self.name == state_weights_name(1):
            raise Killed(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(Killed):
        _epoch(checkpoints, model, 1, 0.2)
    monkeypatch.setattr(Path, "unlink", original)
    state = read_resumable_state(tmp_path / "run", "saved_models")
    assert state["epochs_done"] == 2 and state["best"] == pytest.approx(0.3) and state["best_epoch"] == 1
    assert state["weights_path"] == saved / state_weights_name(2)
    np.testing.assert_array_equal(_restored_kernel(state["weights_path"]), np.full((4, 3), 2.0, np.float32))
    # The next epoch removes the leftover: one pair in the folder.
    _epoch(checkpoints, model, 2, 0.5)
    assert sorted(p.name for p in saved.glob("state_epoch_*.weights.h5")) == [state_weights_name(3)]


def test_a_state_whose_weights_are_missing_or_of_another_epoch_is_refused(tmp_path):
    checkpoints, model, saved = _checkpoints(tmp_path)
    _epoch(checkpoints, model, 0, 0.3)
    first = (saved / state_weights_name(1)).read_bytes()
    _epoch(checkpoints, model, 1, 0.4)
    named = saved / state_weights_name(2)
    named.write_bytes(first)  # another epoch's weights under the name the state gives
    (saved / (named.name + ".sha256")).unlink()
    with pytest.raises(ModelError, match=r"state_epoch_0002.weights.h5: its sha256 differs .* epoch 2"):
        read_resumable_state(tmp_path / "run", "saved_models")
    named.unlink()
    with pytest.raises(ModelError, match="names state_epoch_0002.weights.h5, which is missing"):
        read_resumable_state(tmp_path / "run", "saved_models")


def test_a_run_written_before_the_weights_were_epoch_stamped_still_resumes(tmp_path):
    saved = tmp_path / "run" / "saved_models"
    saved.mkdir(parents=True)
    (saved / "training_state.json").write_text(json.dumps({"epochs_done": 3, "best": 0.5}))
    (saved / "last_model.keras").write_bytes(b"stand-in")
    assert read_resumable_state(tmp_path / "run", "saved_models")["weights_path"] is None  # a 0.1 run
    (saved / "last_state.weights.h5").write_bytes(b"stand-in")
    assert read_resumable_state(tmp_path / "run", "saved_models")["weights_path"] == saved / "last_state.weights.h5"
