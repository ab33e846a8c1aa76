"""End to end: training lowers the loss and writes checkpoints, reports and MLflow records; resume; CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, shared_path, tiny_training_config
from segzoo.cli import run


def read_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "logs" / "training_log.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_training_lowers_loss_and_writes_outputs(trained_run) -> None:
    run_dir, results, _ = trained_run
    rows = read_log(run_dir)
    assert len(rows) == 3
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    for name in ("best_model.keras", "last_model.keras", "training_state.json"):
        assert (run_dir / "saved_models" / name).is_file()
    report = json.loads((run_dir / "evaluation_report.json").read_text())
    assert 0.0 < report["miou"] <= 1.0
    assert report["miou"] == pytest.approx(results["evaluation"]["miou"])
    assert set(report["per_class_iou"]) == {"background", *report["class_names"][1:]}
    for name in ("confusion_matrix.png", "per_class_iou.png", "training_curves.png", "config.yaml"):
        assert (run_dir / name).stat().st_size > 0


@pytest.mark.slow
def test_mlflow_holds_params_metrics_and_artifacts(trained_run) -> None:
    from mlflow.tracking import MlflowClient

    from segzoo.tracking import resolve_store

    run_dir, results, cfg = trained_run
    client = MlflowClient(tracking_uri=resolve_store(cfg["mlflow"]["uri"])[0])
    experiment = client.get_experiment_by_name(cfg["general"]["project_name"])
    (mlrun,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = '{run_dir.name}'")
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["training.epochs"] == "3"
    assert mlrun.data.params["dataset.name"] == "synthetic_shapes"
    assert mlrun.data.metrics["eval_miou"] == pytest.approx(results["evaluation"]["miou"])
    history = client.get_metric_history(mlrun.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert "config.yaml" in artifacts
    evaluation = {a.path for a in client.list_artifacts(mlrun.info.run_id, "evaluation")}
    assert "evaluation/evaluation_report.json" in evaluation and "evaluation/confusion_matrix.png" in evaluation


@pytest.mark.slow
def test_resume_continues_where_it_stopped(trained_run, tmp_path, dataset_root) -> None:
    first_dir, _, _ = trained_run
    # the epoch trained here needs few steps: what is checked is where the run starts and how it counts
    cfg = tiny_training_config(tmp_path, dataset_root, epochs=4, resume_training_from=str(first_dir), steps_per_epoch=4)
    cfg["mlflow"]["enabled"] = False
    cfg["evaluation"]["max_images"] = 4
    run_dir = tmp_path / "resumed"
    run(cfg, run_dir=run_dir)
    rows = read_log(run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    state = json.loads((run_dir / "saved_models" / "training_state.json").read_text())
    assert state["epochs_done"] == 4


@pytest.mark.slow
def test_evaluation_mode_on_trained_keras_model_matches_training_report(trained_run, tmp_path, dataset_root) -> None:
    first_dir, results, _ = trained_run
    cfg = tiny_training_config(tmp_path, dataset_root)
    cfg.update(operation_mode="evaluation")
    cfg["general"]["model_path"] = str(first_dir / "saved_models" / "best_model.keras")
    cfg["mlflow"]["enabled"] = False
    again = run(cfg, run_dir=tmp_path / "eval")
    assert again["evaluation"]["miou"] == pytest.approx(results["evaluation"]["miou"], abs=1e-9)


@pytest.mark.slow
def test_evaluation_of_the_configured_model_with_pretrained_weights(trained_run, tmp_path, dataset_root) -> None:
    """No general.model_path: training.model is built with its pretrained_weights, saved in the run, evaluated."""
    first_dir, results, _ = trained_run
    cfg = tiny_training_config(tmp_path, dataset_root)
    cfg.update(operation_mode="evaluation")
    cfg["training"]["model"]["pretrained_weights"] = str(first_dir / "saved_models" / "best_model.keras")
    cfg["mlflow"]["enabled"] = False
    again = run(cfg, run_dir=tmp_path / "imported")
    assert again["evaluation"]["model"] == str(tmp_path / "imported" / "saved_models" / "imported_model.keras")
    assert again["evaluation"]["miou"] == pytest.approx(results["evaluation"]["miou"], abs=1e-9)


def test_cli_prediction_with_real_model(tmp_path) -> None:
    """The entry point, as a user runs it, on ST's real int8 model and real COCO photos."""
    shared_path("pretrained")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "stm32ai_main.py", "--config-path", "config_file_examples",
                           "--config-name", "prediction", "prediction.max_images=2", "mlflow.enabled=false",
                           f"hydra.run.dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = sorted((out / "predictions").glob("*_mask.png"))
    overlays = sorted((out / "predictions").glob("*_overlay.png"))
    assert len(masks) == 2 and len(overlays) == 2
    assert json.loads((out / "results.json").read_text())["prediction"]["images"] == 2
    assert not (out / ".hydra").exists()  # Hydra's unredacted copy of the config is not written


def test_cli_bad_data_path_exits_nonzero(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "stm32ai_main.py", "operation_mode=evaluation",
                           "general.model_path=nowhere.tflite", f"hydra.run.dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "general.model_path: 'nowhere.tflite' does not exist" in proc.stdout + proc.stderr
