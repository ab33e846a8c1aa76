"""A run directory written by segzoo 0.1 (before families became packages) still works: its configuration
validates, its models load and evaluate, and training resumes from it (``tests/data/legacy_run_v0_1``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny_training_config

LEGACY = Path(__file__).parent / "data" / "legacy_run_v0_1"


def test_legacy_config_still_validates():
    from segzoo.config import load_config

    cfg = load_config(yaml.safe_load((LEGACY / "config.yaml").read_text()))
    assert cfg.training.model.name == "deeplab_v3" and cfg.training.model.input_shape == [64, 64, 3]


def test_legacy_models_load_in_a_fresh_runner():
    import subprocess
    import sys

    # A fresh process: nothing imported beforehand registers the custom layer (segzoo>ChannelReLU).
    code = ("import numpy as np; from segzoo.runners import load_runner; "
            f"r = load_runner({str(LEGACY / 'saved_models' / 'best_model.keras')!r}); "
            "y = r.predict(np.zeros((1, 64, 64, 3), np.float32)); assert y.shape == (1, 64, 64, 5), y.shape")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.slow
def test_legacy_run_resumes(tmp_path, dataset_root):
    from segzoo.cli import run

    old = tmp_path / "old_run"
    shutil.copytree(LEGACY, old)
    cfg = tiny_training_config(tmp_path, dataset_root, epochs=2, resume_training_from=str(old), steps_per_epoch=4)
    cfg["evaluation"]["max_images"] = 4
    results = run(cfg, run_dir=tmp_path / "resumed")
    assert results["training"]["epochs"] == 2
    log = (tmp_path / "resumed" / "logs" / "training_log.csv").read_text().strip().splitlines()
    assert [line.split(",")[0] for line in log[1:]] == ["0", "1"]  # epoch 1 carried over, epoch 2 trained here
    assert np.isfinite(results["evaluation"]["miou"])
