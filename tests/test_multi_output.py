"""Training a family with training-only heads: weighted loss terms per output, an extra target from the data
pipeline, mIoU on the main output, checkpoints with the heads, exported and evaluated models without them."""

from __future__ import annotations

import csv
from types import MappingProxyType

import numpy as np
import pytest

from conftest import tiny_training_config


@pytest.fixture
def toy_registered(monkeypatch):
    """Register the test family ``toy_heads`` (tests/toy_family) and its ``edge`` target."""
    from segzoo.config import validate
    from segzoo.data import targets
    from segzoo.models import registry

    monkeypatch.setattr(registry, "FAMILY_PACKAGES",
                        MappingProxyType({**registry.FAMILY_PACKAGES, "toy_heads": "toy_family"}))
    monkeypatch.setattr(targets, "TARGETS", MappingProxyType({"edge": "toy_family.model:edge_target"}))
    registry._load.cache_clear()
    validate.all_key_paths.cache_clear()
    yield
    registry._load.cache_clear()
    validate.all_key_paths.cache_clear()


def _toy_config(tmp_path, dataset_root, **training):
    cfg = tiny_training_config(tmp_path, dataset_root, **{"epochs": 2, "steps_per_epoch": 4, **training})
    cfg["training"]["model"] = {"name": "toy_heads", "input_shape": [32, 32, 3], "aux_weight": 0.5}
    cfg["training"]["optimizer"] = {"name": "adam", "learning_rate": 0.01}
    return cfg


def test_several_outputs_train_with_their_losses_and_export_without_heads(toy_registered, tmp_path, dataset_root):
    import keras

    from segzoo.cli import run
    from segzoo.models.registry import custom_objects

    results = run(_toy_config(tmp_path, dataset_root), run_dir=tmp_path / "run")
    saved = tmp_path / "run" / "saved_models"
    with open(tmp_path / "run" / "logs" / "training_log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for column in ("loss_main", "loss_aux", "loss_edge", "val_loss_edge", "miou", "val_miou"):
        assert column in rows[0], column
    for row in rows:  # the total is the weighted sum of the terms (weights 1, 0.5 from the config, 2)
        total = float(row["loss_main"]) + 0.5 * float(row["loss_aux"]) + 2.0 * float(row["loss_edge"])
        assert float(row["loss"]) == pytest.approx(total, rel=1e-3)
    checkpoint = keras.saving.load_model(saved / "best_checkpoint.keras", compile=False)
    exported = keras.saving.load_model(saved / "best_model.keras", compile=False, custom_objects=custom_objects())
    assert sorted(checkpoint.output) == ["aux", "edge", "logits"]
    assert not isinstance(exported.output, dict) and exported.output.shape[-1] == 5
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(exported(x), checkpoint(x)["logits"], atol=1e-6)
    assert results["training"]["best_model"] == str(saved / "best_model.keras")
    assert results["evaluation"]["model"] == str(saved / "best_model.keras")
    best_epoch = max(range(2), key=lambda i: float(rows[i]["val_miou"]))
    assert results["training"]["best_val_miou"] == pytest.approx(float(rows[best_epoch]["val_miou"]), abs=1e-6)


@pytest.mark.slow
def test_several_outputs_resume_with_optimizer_state(toy_registered, tmp_path, dataset_root):
    import keras

    from segzoo.cli import run

    first = tmp_path / "first"
    run(_toy_config(tmp_path, dataset_root, epochs=1), run_dir=first)
    assert (first / "saved_models" / "state_epoch_0001.weights.h5").is_file()
    resumed = run(_toy_config(tmp_path, dataset_root, epochs=2, resume_training_from=str(first)),
                  run_dir=tmp_path / "second")
    assert resumed["training"]["epochs"] == 2
    with open(tmp_path / "second" / "logs" / "training_log.csv") as handle:
        assert [r["epoch"] for r in csv.DictReader(handle)] == ["0", "1"]
    last = keras.saving.load_model(tmp_path / "second" / "saved_models" / "last_model.keras", compile=False)
    assert sorted(last.output) == ["aux", "edge", "logits"]


def test_exported_model_cannot_be_fine_tuned_with_head_losses(toy_registered, tmp_path, dataset_root):
    import keras

    from segzoo.cli import run

    inputs = keras.Input((32, 32, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(5, 1, name="logits")(inputs))
    plain.save(tmp_path / "plain.keras")
    cfg = _toy_config(tmp_path, dataset_root)
    cfg["general"] = {"model_path": str(tmp_path / "plain.keras")}
    with pytest.raises(SystemExit) as exit_info:
        run(cfg, run_dir=tmp_path / "ft")
    assert exit_info.value.code == 4
