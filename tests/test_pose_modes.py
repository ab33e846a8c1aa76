"""MediaPipe Pose through the operation modes (``general.pipeline: mediapipe_pose_full``), on the real files and
real COCO photos: config checks, evaluation, prediction, benchmarking, deployment to a loopback SSH board, and
(slow) quantization of both networks with the float-vs-int8 comparison per stage."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sshd import sshd_server  # noqa: F401  (fixture)

from conftest import REPO, shared_path
from segzoo.cli import run
from segzoo.config import load_config
from segzoo.errors import ConfigError

PIPELINE = "mediapipe_pose_full"


def pose_config(tmp: Path, mode: str, **sections) -> dict:
    """A pose run on the real files: 2 keypoint images, 3 person-mask photos, 3 poses per image, no MLflow."""
    models = shared_path("pretrained", "mediapipe_pose")
    keypoints = shared_path("datasets", "coco_keypoints_mmpose")
    coco = shared_path("datasets", "coco128_semseg")
    cfg = {"operation_mode": mode,
           "general": {"project_name": "pose_test", "pipeline": PIPELINE, "model_path": str(models)},
           "dataset": {"test_path": str(keypoints / "images"),
                       "test_annotations_path": str(keypoints / "person_keypoints.json"),
                       "quantization_path": str(coco / "images" / "train2017")},
           "evaluation": {"max_images": 2},
           "pose_estimation": {"num_poses": 3, "person_masks": {
               "images_path": str(coco / "images" / "train2017"),
               "masks_path": str(coco / "semantic_segmentation" / "masks" / "train2017"), "max_images": 3}},
           "mlflow": {"enabled": False, "uri": str(tmp / "mlruns")}}
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def config_errors(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ config checks

def test_pose_config_checks(tmp_path):
    data = pose_config(tmp_path, "evaluation")
    cfg = load_config(data)
    assert cfg.pose_estimation.num_poses == 3 and cfg.general.pipeline == PIPELINE

    file_instead_of_folder = pose_config(tmp_path, "evaluation")
    file_instead_of_folder["general"]["model_path"] += "/pose_detection.tflite"
    assert "it is the folder of pose_detection.tflite, pose_landmark_full.tflite, not a file" in config_errors(
        file_instead_of_folder)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "pose_detection.tflite").write_bytes(b"")
    half = pose_config(tmp_path, "evaluation", general={"model_path": str(tmp_path / "half")})
    assert "has no pose_landmark_full.tflite" in config_errors(half)

    no_annotations = pose_config(tmp_path, "chain_eqe")
    del no_annotations["dataset"]["test_annotations_path"]
    message = config_errors(no_annotations)
    assert "dataset.test_annotations_path: required when dataset.test_path is set" in message
    assert "chain_eqe needs COCO keypoint annotations" in message

    training = pose_config(tmp_path, "chain_tqe")
    message = config_errors(training)
    assert "chain_tqe runs train, which the pose_estimation task does not support" in message
    assert "its modes are evaluation, prediction, quantization, chain_eqe" in message

    quantize = pose_config(tmp_path, "quantization", quantization={"calibration_data": "random", "mixed_precision": {
        "float_layers": ["model_1_model_conv_poseflag"]}})
    del quantize["dataset"]["quantization_path"]
    message = config_errors(quantize)
    assert "dataset.quantization_path: quantization needs calibration photos of people" in message
    assert "quantization.calibration_data: random gives the landmark model no person crop" in message
    assert "['model_1_model_conv_poseflag'] must name their network: 'detector/<layer>'" in message

    mismatch = pose_config(tmp_path, "evaluation", general={"task": "semantic_segmentation"})
    assert "general.pipeline mediapipe_pose_full is a pose_estimation pipeline" in config_errors(mismatch)
    typo = pose_config(tmp_path, "evaluation", general={"pipeline": "mediapipe_pose_ful"})
    assert "unknown pipeline 'mediapipe_pose_ful'; did you mean mediapipe_pose_full?" in config_errors(typo)

    values = pose_config(tmp_path, "evaluation", pose_estimation={"num_poses": 0, "min_visibility": 2.0})
    values["pose_estimation"]["person_masks"].update(ignore_values=[0, 1])
    message = config_errors(values)
    assert "pose_estimation.num_poses: must be at least 1, got 0" in message
    assert "pose_estimation.min_visibility: must be in [0, 1], got 2.0" in message
    assert "pose_estimation.person_masks: values [1] are both person_values and ignore_values" in message
    one_folder = pose_config(tmp_path, "evaluation")
    del one_folder["pose_estimation"]["person_masks"]["masks_path"]
    assert "pose_estimation.person_masks.masks_path: required with the other person_masks folder" in config_errors(
        one_folder)

    # no general.model_path: the files are found (or downloaded), not required
    located = pose_config(tmp_path, "deployment", general={"model_path": None})
    assert load_config(located).general.model_path is None


def test_qat_is_a_config_error_before_tensorflow_loads(tmp_path):
    """A float .tflite pipeline has no training: ``quantization_type: qat`` is refused at validation, with the key
    and the allowed values, and nothing has imported TensorFlow by then."""
    data = pose_config(tmp_path, "chain_eqe", quantization={"quantization_type": "qat"})
    code = ("import json, sys; from segzoo.config import load_config; from segzoo.errors import ConfigError\n"
            "try:\n    load_config(json.loads(sys.argv[1]))\nexcept ConfigError as exc:\n    print(exc)\n"
            "else:\n    raise SystemExit('no ConfigError')\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'tensorflow imported'")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(data)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert ("quantization.quantization_type: the pose_estimation task quantizes published float .tflite files, "
            "which have no training to fine-tune (no qat); allowed values: ptq, got 'qat'") in done.stdout
    data["quantization"]["quantization_type"] = "ptq"
    assert load_config(data).quantization.quantization_type == "ptq"
    evaluation = pose_config(tmp_path, "evaluation", quantization={"quantization_type": "qat"})
    assert load_config(evaluation).operation_mode == "evaluation"  # only a run that quantizes is concerned


@pytest.mark.parametrize("name", ["evaluation_mediapipe_pose", "chain_eqe_mediapipe_pose", "deployment_mediapipe_pose"])
def test_pose_example_configs_are_complete(name, monkeypatch):
    """The examples pass every check of their mode when run from the repository root, as the README says."""
    shared_path("pretrained", "mediapipe_pose")
    monkeypatch.chdir(REPO)
    data = yaml.safe_load((REPO / "config_file_examples" / f"{name}.yaml").read_text())
    data.pop("hydra", None)
    cfg = load_config(data)
    assert cfg.general.pipeline == PIPELINE


def test_pipeline_files_found_in_weights_dirs(tmp_path, mediapipe_dir):
    """Without general.model_path the files come from general.weights_dirs (gathered when in two folders)."""
    from segzoo.steps.context import RunContext
    from segzoo.tracking import Tracker

    cfg = load_config(pose_config(tmp_path, "deployment", general={
        "model_path": None, "weights_dirs": [str(mediapipe_dir)]}))
    ctx = RunContext(cfg=cfg, run_dir=tmp_path / "run", tracker=Tracker(None, "x", "x", enabled=False))
    assert ctx.model() == mediapipe_dir
    for name, folder in (("pose_detection.tflite", "a"), ("pose_landmark_full.tflite", "b")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).symlink_to(mediapipe_dir / name)
    cfg = load_config(pose_config(tmp_path, "deployment", general={
        "model_path": None, "weights_dirs": [str(tmp_path / "a"), str(tmp_path / "b")]}))
    ctx = RunContext(cfg=cfg, run_dir=tmp_path / "run", tracker=Tracker(None, "x", "x", enabled=False))
    gathered = ctx.model()
    assert gathered == tmp_path / "run" / "saved_models" / PIPELINE
    assert (gathered / "pose_landmark_full.tflite").read_bytes() == (mediapipe_dir / "pose_landmark_full.tflite"
                                                                     ).read_bytes()


# --------------------------------------------------------------------------------------------------- evaluation

def test_evaluation_mode_reports_oks_ap_pck_and_mask_iou(tmp_path, mediapipe_dir, keypoints_dir, coco_dir):
    from mlflow.tracking import MlflowClient

    from segzoo.tasks.pose_estimation.evaluation import (evaluate_keypoints, evaluate_person_masks,
                                                         load_coco_keypoints, person_mask_samples)
    from segzoo.tasks.pose_estimation.pipeline import load_pose_pipeline
    from segzoo.tasks.pose_estimation.preset import MEDIAPIPE_POSE_FULL
    from segzoo.tracking import resolve_store

    cfg = pose_config(tmp_path, "evaluation", mlflow={"enabled": True})
    results = run(cfg, run_dir=tmp_path / "eval")
    summary = results["evaluation"]

    # the same figures straight from the pipeline, without the modes
    pipeline = load_pose_pipeline(MEDIAPIPE_POSE_FULL.with_options(num_poses=3), mediapipe_dir, num_threads=2)
    dataset = load_coco_keypoints(keypoints_dir / "person_keypoints.json", keypoints_dir / "images")
    expected, _ = evaluate_keypoints(pipeline.estimate, dataset, max_images=2)
    masks = evaluate_person_masks(pipeline.estimate, person_mask_samples(
        coco_dir / "images" / "train2017", coco_dir / "semantic_segmentation" / "masks" / "train2017", max_images=3))
    assert summary["mean_oks"] == pytest.approx(expected["mean_oks"], abs=1e-9)
    assert summary["ap"] == pytest.approx(expected["coco"]["AP"], abs=1e-9)
    assert summary["pck"] == pytest.approx(expected["pck"], abs=1e-9)
    assert summary["mask_iou"] == pytest.approx(masks["iou"], abs=1e-9)
    assert summary["num_images"] == 2 and summary["num_persons"] >= 2 and 0.2 < summary["mean_oks"] < 1.0
    assert 0.4 < summary["mask_iou"] < 1.0

    out = tmp_path / "eval"
    report = json.loads((out / "pose_evaluation_report.json").read_text())
    assert report["pipeline"] == PIPELINE and report["models"]["landmark"].endswith("pose_landmark_full.tflite")
    assert "Mean per-person OKS" in (out / "pose_evaluation_report.md").read_text()
    assert (out / "keypoint_errors.png").is_file() and len(list((out / "keypoint_overlays").glob("*.png"))) == 2

    client = MlflowClient(tracking_uri=resolve_store(cfg["mlflow"]["uri"])[0])
    experiment = client.get_experiment_by_name("pose_test")
    (mlrun,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'eval'")
    metrics = mlrun.data.metrics
    assert metrics["eval_oks"] == pytest.approx(summary["mean_oks"]) and metrics["eval_ap"] == pytest.approx(
        summary["ap"])
    assert metrics["eval_pck"] == pytest.approx(summary["pck"])
    assert metrics["eval_mask_iou"] == pytest.approx(summary["mask_iou"])


def test_keypoint_file_errors_name_the_field(tmp_path, keypoints_dir, caplog):
    data = json.loads((keypoints_dir / "person_keypoints.json").read_text())
    del data["annotations"][1]["bbox"]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps(data))
    data = json.loads((keypoints_dir / "person_keypoints.json").read_text())
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:50]
    malformed = tmp_path / "malformed.json"
    malformed.write_text(json.dumps(data))
    for path, text in ((missing, "annotations[1] has no 'bbox' field"),
                       (malformed, "annotations[0].keypoints must be a list of 51 finite numbers")):
        cfg = pose_config(tmp_path, "evaluation", dataset={"test_annotations_path": str(path)})
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="segzoo"), pytest.raises(SystemExit) as info:
            run(cfg, run_dir=tmp_path / path.stem)
        assert info.value.code == 3
        assert text in caplog.text and str(path) in caplog.text


# --------------------------------------------------------------------------------------------------- prediction

def test_prediction_mode_writes_poses_and_handles_an_image_without_person(tmp_path, keypoints_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.full((240, 320, 3), 90, np.uint8)).save(folder / "empty_room.png")
    source = sorted((keypoints_dir / "images").glob("*.jpg"))[0]
    (folder / source.name).write_bytes(source.read_bytes())
    results = run(pose_config(tmp_path, "prediction", prediction={"test_files_path": str(folder)}),
                  run_dir=tmp_path / "pred")
    assert results["prediction"]["images"] == 2
    out = tmp_path / "pred" / "predictions"
    empty = json.loads((out / "empty_room_pose.json").read_text())
    assert empty["num_poses"] == 0 and empty["poses"] == []
    assert Image.open(out / "empty_room_pose.png").size == (320, 240)
    person = json.loads((out / f"{source.stem}_pose.json").read_text())
    assert person["num_poses"] >= 1 and len(person["poses"][0]["landmarks"]) == 33
    assert results["prediction"]["poses"] == person["num_poses"]
    assert set(person["poses"][0]["coco_keypoints"]) >= {"nose", "left_ankle"}


# ------------------------------------------------------------------------------------------------- benchmarking

def test_benchmarking_mode_rows_for_both_networks_and_a_frame_sum(tmp_path):
    cfg = pose_config(tmp_path, "benchmarking", benchmarking={"runs": 2, "warmup": 1,
                                                               "targets": ["host", "stm32mp2_estimate"]})
    run(cfg, run_dir=tmp_path / "bench")
    rows = json.loads((tmp_path / "bench" / "benchmark_report.json").read_text())["rows"]
    by_key = {(r["model"], r["target"]): r for r in rows}
    names = ["mediapipe_pose/pose_detection", "mediapipe_pose/pose_landmark_full"]
    frame = "mediapipe_pose per frame (pose_detection + pose_landmark_full)"
    for target in ("host", "stm32mp2_estimate"):
        parts = [by_key[(name, target)] for name in names]
        total = by_key[(frame, target)]
        assert not total["error"] and all(not r["error"] for r in parts)
        assert total["latency_ms"] == pytest.approx(sum(r["latency_ms"] for r in parts))
        assert total["frame_of"] == names
    estimate = by_key[(frame, "stm32mp2_estimate")]
    parts = [by_key[(name, "stm32mp2_estimate")] for name in names]
    assert estimate["npu_pct"] == pytest.approx(sum(r["npu_pct"] * r["latency_ms"] for r in parts)
                                                / estimate["latency_ms"])
    assert frame in (tmp_path / "bench" / "benchmark_report.md").read_text()


# --------------------------------------------------------------------------------------------------- deployment

def test_deployment_mode_pushes_and_launches_the_pose_app_on_a_board(tmp_path, keypoints_dir, sshd_server):
    images = tmp_path / "board photos"
    images.mkdir()
    for path in sorted((keypoints_dir / "images").glob("*.jpg"))[:2]:
        (images / path.name).write_bytes(path.read_bytes())
    deploy_path = str(sshd_server.board_root / "segzoo pose")
    cfg = pose_config(tmp_path, "deployment", deployment=sshd_server.deployment(deploy_path, str(images)))
    summary = run(cfg, run_dir=tmp_path / "dep")["deployment"]
    assert summary["verified"] is True and summary["launched"] is True
    manifest = json.loads((Path(deploy_path) / "manifest.json").read_text())
    assert manifest["entry"] == "pose.py" and manifest["models"] == {"detector": "pose_detection.tflite",
                                                                     "landmark": "pose_landmark_full.tflite"}
    assert json.loads((Path(deploy_path) / "pose_config.json").read_text())["num_poses"] == 3
    lines = [line for line in summary["launch_output"] if " pose(s), total " in line]
    assert len(lines) == 2
    for path in images.iterdir():
        result = json.loads((Path(deploy_path + "_results") / f"{path.stem}_pose.json").read_text())
        assert result["num_poses"] >= 1 and len(result["poses"][0]["landmarks"]) == 33


# ------------------------------------------------------------------------------------------------- quantization

@pytest.fixture(scope="module")
def quantized_run(tmp_path_factory) -> tuple[Path, dict]:
    """chain_eqe on the real files: 6 calibration photos, 4 keypoint images, 3 person-mask photos."""
    tmp = tmp_path_factory.mktemp("pose_eqe")
    cfg = pose_config(tmp, "chain_eqe", evaluation={"max_images": 4}, quantization={"calibration_images": 6})
    return tmp / "eqe", run(cfg, run_dir=tmp / "eqe")


@pytest.mark.slow
def test_chain_eqe_quantizes_both_networks_per_tensor_and_compares_per_stage(quantized_run):
    run_dir, results = quantized_run
    folder = run_dir / "quantized_models" / "mediapipe_pose_full_int8_per_tensor"
    models = sorted(p for p in folder.iterdir() if p.suffix == ".tflite")
    assert [p.name for p in models] == ["pose_detection.tflite", "pose_landmark_full.tflite"]
    assert all(p.with_name(p.name + ".sha256").is_file() for p in models)  # checked when read back
    assert results["quantization"]["model"] == str(folder)
    assert results["quantized_evaluation"]["model"] == str(folder)
    report = json.loads((run_dir / "quantization_report.json").read_text())
    assert report["metric"] == "mean_oks" and report["granularity"] == "per_tensor"
    assert report["float"]["mean_oks"] == pytest.approx(results["evaluation"]["mean_oks"])
    assert report["quantized"]["mean_oks"] == pytest.approx(results["quantized_evaluation"]["mean_oks"])
    assert report["metric_drop_points"] == pytest.approx(
        100 * (report["float"]["mean_oks"] - report["quantized"]["mean_oks"]))
    stages = [(r["detector"], r["landmark"]) for r in report["per_stage"]]
    assert stages == [("float", "float"), ("int8", "float"), ("float", "int8"), ("int8", "int8")]
    assert report["per_stage"][0]["mean_oks"] == report["float"]["mean_oks"]
    networks = {network["name"]: network for network in report["networks"]}
    assert list(networks) == ["detector", "landmark"]
    for network in networks.values():
        assert network["npu_ready"] and Path(network["model"]).parent == folder
        assert network["stm32mp2_estimate"]["npu_pct"] >= 95.0
        assert network["calibration"]["images"] >= 1
    assert networks["detector"]["calibration"]["images"] == 6
    assert report["npu_ready"] and report["has_per_channel"] is False
    assert report["quantized"]["size_bytes"] == sum(p.stat().st_size for p in models)
    assert all(row["tensor"].split("/")[0] in ("detector", "landmark") for row in report["worst_layers"])
    markdown = (run_dir / "quantization_report.md").read_text()
    assert "## detector: `pose_detection.tflite`" in markdown and "| int8 | float |" in markdown
    assert (run_dir / "quantized_pose_evaluation_report.json").is_file()


@pytest.mark.slow
def test_the_quantized_folder_benchmarks_and_deploys(quantized_run, tmp_path, keypoints_dir, sshd_server):
    run_dir, results = quantized_run
    folder = Path(results["quantization"]["model"])
    cfg = pose_config(tmp_path, "benchmarking", general={"model_path": str(folder)},
                      benchmarking={"targets": ["stm32mp2_estimate"]})
    run(cfg, run_dir=tmp_path / "bench")
    rows = json.loads((tmp_path / "bench" / "benchmark_report.json").read_text())["rows"]
    assert len(rows) == 3 and all(r["npu_pct"] >= 95.0 and r["precision"] for r in rows)
    image = sorted((keypoints_dir / "images").glob("*.jpg"))[0]
    deploy_path = str(sshd_server.board_root / "pose int8")
    cfg = pose_config(tmp_path, "deployment", general={"model_path": str(folder)},
                      deployment=sshd_server.deployment(deploy_path, str(image)))
    summary = run(cfg, run_dir=tmp_path / "dep")["deployment"]
    assert summary["launched"] and any(f"{image.name}:" in line for line in summary["launch_output"])
    assert (Path(deploy_path) / "pose_landmark_full.tflite").read_bytes() == (
        folder / "pose_landmark_full.tflite").read_bytes()


@pytest.mark.heavy
def test_example_quantization_config_meets_the_per_tensor_targets(tmp_path, monkeypatch, keypoints_dir, sshd_server):
    """``chain_eqe_mediapipe_pose`` as the README runs it (31 calibration photos, the 4 keypoint images, 20
    person-mask photos): both networks int8 per tensor keep the mean OKS within 3 points of float and the person
    mask IoU within 2 points, with outlier channels split in the landmark model, and each network runs >= 95% on
    the STM32MP257's NPU (estimate); the board app finds a pose on a keypoint photo with that folder."""
    shared_path("pretrained", "mediapipe_pose")
    monkeypatch.chdir(REPO)
    data = yaml.safe_load((REPO / "config_file_examples" / "chain_eqe_mediapipe_pose.yaml").read_text())
    data.pop("hydra", None)
    data["mlflow"] = {"enabled": False, "uri": str(tmp_path / "mlruns")}
    run(data, run_dir=tmp_path / "eqe")
    report = json.loads((tmp_path / "eqe" / "quantization_report.json").read_text())
    both = report["per_stage"][-1]
    assert (both["detector"], both["landmark"]) == ("int8", "int8")
    assert 100 * (report["float"]["mean_oks"] - both["mean_oks"]) <= 3.0
    assert 100 * (report["float"]["mask_iou"] - both["mask_iou"]) <= 2.0
    networks = {network["name"]: network for network in report["networks"]}
    assert sum(networks["landmark"]["formatting"]["outlier_splits"].values()) > 0
    assert all(network["stm32mp2_estimate"]["npu_pct"] >= 95.0 for network in networks.values())
    folder = tmp_path / "eqe" / "quantized_models" / "mediapipe_pose_full_int8_per_tensor"
    image = sorted((keypoints_dir / "images").glob("*.jpg"))[0]
    cfg = pose_config(tmp_path, "deployment", general={"model_path": str(folder)},
                      deployment=sshd_server.deployment(str(sshd_server.board_root / "pose"), str(image)))
    summary = run(cfg, run_dir=tmp_path / "dep")["deployment"]
    lines = [line for line in summary["launch_output"] if f"{image.name}:" in line]
    logging.getLogger(__name__).info("board app: %s", lines)
    assert summary["launched"] and lines and " 0 pose" not in lines[0]
