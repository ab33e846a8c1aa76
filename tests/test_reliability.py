"""The failures of issue 14, each on real data: a truncated PNG with ``on_bad_sample: skip``, a prediction folder with
unreadable files, a custom op the board cannot load; plus the orientation rule, sha256 sidecars and exit codes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, shared_path
from PIL import Image
from reliability_helpers import (CAMVID_CLASSES, VOC_CLASSES, conv_model, copy_pairs, flip_byte, mediapipe_model,
                                 run_dir_problems, truncate)

from segzoo.cli import exit_status, run
from segzoo.data.layouts import list_samples
from segzoo.data.loader import load_pair, read_image, scan_samples
from segzoo.data.masks import ClassMapper
from segzoo.errors import EXIT_SKIPPED, ConfigError, DataError, ModelError
from segzoo.io import remove_stale_temporaries, sidecar_path, verified, write_json, write_text

CAMVID_IDS = ["0016E5_07959", "0016E5_07961", "0016E5_07963", "0016E5_07965"]
COCO_IDS = ["000000000009", "000000000025", "000000000030"]


@pytest.fixture
def camvid_copy(tmp_path) -> tuple[Path, Path]:
    """Four real CamVid validation pairs (PNG images, index masks) in a folder of our own."""
    camvid = shared_path("datasets", "camvid", "CamVid")
    return copy_pairs(camvid / "val", camvid / "valannot", CAMVID_IDS, tmp_path / "camvid")


def _evaluation_config(tmp_path: Path, images: Path, masks: Path, model: Path, on_bad: str) -> dict:
    return {"operation_mode": "evaluation",
            "general": {"model_path": str(model)},
            "dataset": {"name": "camvid", "class_names": CAMVID_CLASSES, "test_path": str(images),
                        "test_masks_path": str(masks), "class_mapping": {11: 255}, "on_bad_sample": on_bad},
            "mlflow": {"enabled": False}}


# ---------------------------------------------------------------------------------------- issue failure 1
def test_truncated_png_passes_no_check_and_skip_evaluates_the_others(tmp_path, camvid_copy) -> None:
    """Before: the header-only check let a truncated PNG through and the evaluation stopped with exit 3."""
    images, masks = camvid_copy
    model = conv_model(tmp_path / "camvid11.tflite", classes=11)
    bad = truncate(images / f"{CAMVID_IDS[1]}.png", 0.6)
    samples = list_samples(images, masks)
    mapper = ClassMapper(11, mapping={11: 255})
    with pytest.raises(DataError, match=f"{bad.name}: cannot read image .*truncated"):
        scan_samples(samples, mapper)  # the check decodes the whole image now
    skipped: list[dict] = []
    kept = scan_samples(samples, mapper, "skip", skipped=skipped)
    assert [s.id for s in kept] == [CAMVID_IDS[0], *CAMVID_IDS[2:]]
    assert [s["item"] for s in skipped] == [str(bad)]
    for sample in kept:  # what passes the check is read without error
        load_pair(sample, mapper)

    summary = run(_evaluation_config(tmp_path, images, masks, model, "skip"), run_dir=tmp_path / "run")
    assert exit_status(summary) == EXIT_SKIPPED
    assert [s["item"] for s in summary["skipped"]["items"]] == [str(bad)]
    report = json.loads((tmp_path / "run" / "evaluation_report.json").read_text())
    assert report["num_images"] == 3 and [s["item"] for s in report["skipped"]] == [str(bad)]
    assert bad.name in (tmp_path / "run" / "evaluation_report.md").read_text()

    bad.unlink()  # the same evaluation without the bad pair gives the very same numbers
    (masks / f"{CAMVID_IDS[1]}.png").unlink()
    clean = run(_evaluation_config(tmp_path, images, masks, model, "error"), run_dir=tmp_path / "clean")
    assert exit_status(clean) == 0 and clean["skipped"]["count"] == 0
    assert summary["evaluation"]["miou"] == clean["evaluation"]["miou"]
    assert report["confusion_matrix"] == json.loads((tmp_path / "clean" / "evaluation_report.json").read_text())[
        "confusion_matrix"]


def test_evaluation_error_mode_names_the_truncated_file(tmp_path, camvid_copy) -> None:
    images, masks = camvid_copy
    bad = truncate(images / f"{CAMVID_IDS[2]}.png", 0.3)
    model = conv_model(tmp_path / "camvid11.tflite", classes=11)
    with pytest.raises(SystemExit) as info:
        run(_evaluation_config(tmp_path, images, masks, model, "error"), run_dir=tmp_path / "run")
    assert info.value.code == DataError.exit_code
    assert not (tmp_path / "run" / "evaluation_report.json").exists() and bad.exists()


# ---------------------------------------------------------------------------------------- issue failure 2
def test_prediction_folder_with_bad_files_finishes_the_readable_ones_and_exits_6(tmp_path) -> None:
    """Before: the first unreadable file stopped the run with exit 3 and the MLflow run was marked FAILED."""
    from mlflow.tracking import MlflowClient

    from segzoo.tracking import resolve_store

    coco = shared_path("datasets", "coco128_semseg", "images", "train2017")
    folder = tmp_path / "photos"
    folder.mkdir()
    for image_id in COCO_IDS:
        (folder / f"{image_id}.jpg").write_bytes((coco / f"{image_id}.jpg").read_bytes())
    truncate(folder / f"{COCO_IDS[1]}.jpg", 0.5)
    (folder / "notes.png").write_text("not an image")
    model = conv_model(tmp_path / "voc21.tflite", classes=21, size=64)
    config = {"operation_mode": "prediction", "general": {"model_path": str(model), "project_name": "reliability"},
              "dataset": {"class_names": VOC_CLASSES}, "prediction": {"test_files_path": str(folder)},
              "mlflow": {"uri": str(tmp_path / "mlruns")}}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    done = subprocess.run([sys.executable, str(REPO / "stm32ai_main.py"), "--config-path", str(tmp_path),
                           "--config-name", "predict", f"hydra.run.dir={run_dir}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert done.returncode == EXIT_SKIPPED, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    outputs = sorted(p.name for p in (run_dir / "predictions").iterdir())
    assert outputs == sorted(f"{i}_{kind}.png" for i in (COCO_IDS[0], COCO_IDS[2]) for kind in ("mask", "overlay"))
    report = json.loads((run_dir / "prediction_report.json").read_text())
    assert report["images"] == 2
    assert sorted(Path(s["item"]).name for s in report["skipped"]) == sorted([f"{COCO_IDS[1]}.jpg", "notes.png"])
    log = (run_dir / "stm32ai_main.log").read_text()
    assert "Finished with 2 skipped item(s)" in log and "notes.png" in log
    client = MlflowClient(tracking_uri=resolve_store(str(tmp_path / "mlruns"))[0])
    (mlrun,) = client.search_runs([client.get_experiment_by_name("reliability").experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["skipped_items"] == "2"
    assert run_dir_problems(run_dir, allow_temporaries=False) == []


def test_prediction_of_only_unreadable_files_is_a_data_error(tmp_path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut")
    model = conv_model(tmp_path / "voc21.tflite", classes=21)
    config = {"operation_mode": "prediction", "general": {"model_path": str(model)},
              "dataset": {"class_names": VOC_CLASSES}, "prediction": {"test_files_path": str(folder)},
              "mlflow": {"enabled": False}}
    with pytest.raises(SystemExit) as info:
        run(config, run_dir=tmp_path / "run")
    assert info.value.code == DataError.exit_code


def test_pose_prediction_also_goes_on_past_unreadable_images(tmp_path) -> None:
    from segzoo.tasks.pose_estimation.pipeline import PoseResult
    from segzoo.tasks.pose_estimation.prediction import predict_poses

    def estimate(image: np.ndarray) -> PoseResult:  # no person found: the files are still written
        h, w = image.shape[:2]
        return PoseResult(np.zeros((0, 33, 5), np.float32), np.zeros((0, 33, 2), np.float32),
                          np.zeros((0, 33, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32),
                          np.zeros((0, 5), np.float32), np.zeros((0, h, w), np.float32), {})

    good = tmp_path / "a.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(good)
    bad = tmp_path / "b.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(bad)
    truncate(bad, 0.5)
    skipped: list[dict] = []
    rows = predict_poses(estimate, [good, bad], tmp_path / "out", skipped=skipped)
    assert [r["image"] for r in rows] == [good] and [s["item"] for s in skipped] == [str(bad)]
    with pytest.raises(DataError, match="none of the 1 images"):
        predict_poses(estimate, [bad], tmp_path / "out")


# ---------------------------------------------------------------------------------------- issue failure 3
def test_benchmark_says_a_custom_op_model_is_not_loadable_on_the_board(tmp_path, caplog) -> None:
    """Before: the custom op was placed on the CPU and a latency estimated without a word about loadability."""
    from segzoo.benchmarking.report import benchmark_models, write_benchmark_report

    model = mediapipe_model(tmp_path / "selfie_like.tflite")
    stock = conv_model(tmp_path / "stock.tflite", classes=2, size=16)
    with caplog.at_level(logging.WARNING):
        rows = benchmark_models([model, stock], ["host", "stm32mp2_estimate"], runs=3, warmup=1)
    flagged = {(r["model"], r["target"]): r for r in rows}
    for target in ("host", "stm32mp2_estimate"):
        assert flagged[("selfie_like", target)]["board_loadable"] is False
        assert "Convolution2DTransposeBias" in flagged[("selfie_like", target)]["warnings"][0]
        assert flagged[("stock", target)]["board_loadable"] is True and not flagged[("stock", target)]["warnings"]
    estimate = flagged[("selfie_like", "stm32mp2_estimate")]
    assert estimate["latency_ms"] > 0 and estimate["details"]["unloadable_ops"] == ["Convolution2DTransposeBias"]
    assert any("not loadable on the board" in r.getMessage() for r in caplog.records)
    files = write_benchmark_report(rows, tmp_path / "report")
    markdown = files["md"].read_text()
    assert "not loadable on the board" in markdown and "## Warnings" in markdown
    assert markdown.count("⚠ **not loadable on the board**") == 2  # both rows of the model, none of the other


def test_deployment_refuses_a_model_the_board_cannot_load(tmp_path) -> None:
    from segzoo.deployment.bundle import build_bundle
    from segzoo.preprocess import Preprocessing

    model = mediapipe_model(tmp_path / "selfie_like.tflite")
    with pytest.raises(ModelError, match="Convolution2DTransposeBias"):
        build_bundle(model, tmp_path / "deployment", class_names=["background", "person"],
                     preprocessing=Preprocessing().to_dict())
    assert not (tmp_path / "deployment" / "segzoo_seg").exists()
    config = {"operation_mode": "deployment", "general": {"model_path": str(model)},
              "dataset": {"class_names": ["background", "person"]}, "mlflow": {"enabled": False}}
    with pytest.raises(SystemExit) as info:  # refused by the configuration check, before anything runs
        run(config, run_dir=tmp_path / "run")
    assert info.value.code == ConfigError.exit_code


# ------------------------------------------------------------------------------------------- orientation
def test_exif_orientation_is_never_applied_so_image_and_mask_agree(tmp_path) -> None:
    from segzoo.deployment.bundle import board_app

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees on display"
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    Image.fromarray((pixels[..., 0] % 3).astype(np.uint8)).save(tmp_path / "photo_mask.png")
    from segzoo.data.layouts import Sample

    image, mask = load_pair(Sample("photo", tmp_path / "photo.png", tmp_path / "photo_mask.png"), ClassMapper(3))
    assert np.array_equal(image, pixels) and mask.shape == pixels.shape[:2]
    app = board_app()
    for name in ("photo.png", "photo.jpg"):
        ours = read_image(tmp_path / name)
        assert ours.shape == pixels.shape  # stored grid, not rotated to 40x24
        assert np.array_equal(app.read_image(tmp_path / name), ours)  # the board reads it the same way
    cv2_only = app.Image
    try:  # the board app's OpenCV fallback (no Pillow on the board) must not rotate either
        app.Image = None
        assert np.array_equal(app.read_image(tmp_path / "photo.jpg"), read_image(tmp_path / "photo.jpg"))
    finally:
        app.Image = cv2_only


def test_board_app_reads_16_bit_images_as_segzoo_does(tmp_path) -> None:
    from segzoo.deployment.bundle import board_app

    values = np.arange(0, 65536, 257, dtype=np.uint16)[:240].reshape(12, 20)
    Image.fromarray(values).save(tmp_path / "depth.png")
    assert np.array_equal(board_app().read_image(tmp_path / "depth.png"), read_image(tmp_path / "depth.png"))


# --------------------------------------------------------------------------------------- sha256 sidecars
def test_files_written_by_segzoo_carry_a_sha256_that_detects_damage_anywhere(tmp_path) -> None:
    from segzoo.runners import load_runner

    model = tmp_path / "run" / "model.tflite"
    from segzoo.io import write_with

    write_with(model, lambda tmp: conv_model(tmp, classes=3))
    sidecar = sidecar_path(model)
    assert sidecar.read_text().split() == [__import__("hashlib").sha256(model.read_bytes()).hexdigest(), model.name]
    load_runner(model)
    size = model.stat().st_size
    for offset in (size // 2, size - 1):  # in the weights and at the very end, far from any header
        flip_byte(model, offset)
        with pytest.raises(ModelError, match=r"model.tflite: damaged: its sha256"):
            load_runner(model)
        flip_byte(model, offset)
    load_runner(model)
    good = sidecar.read_bytes()
    for damaged in (b"garbage\n", good[:-1] + b"\x0b", b" " + good):  # also a line end flipped to other whitespace
        sidecar.write_bytes(damaged)
        with pytest.raises(ModelError, match="malformed checksum file"):
            verified(model)
    sidecar.write_bytes(good[:-1])  # written by hand without a line end: still the same checksum
    verified(model)
    sidecar.unlink()  # files without a sidecar (third-party, older runs) load as before
    load_runner(model)


def test_resume_refuses_a_damaged_training_state(tmp_path) -> None:
    from segzoo.training.state import read_state

    saved = tmp_path / "saved_models"
    write_json(saved / "training_state.json", {"epochs_done": 3, "best": 0.5})
    assert read_state(saved)["epochs_done"] == 3
    text = (saved / "training_state.json").read_text().replace('"epochs_done": 3', '"epochs_done": 8')
    (saved / "training_state.json").write_text(text)
    with pytest.raises(ModelError, match="training_state.json: damaged"):
        read_state(saved)


def test_a_rerun_removes_the_temporaries_of_an_interrupted_one(tmp_path) -> None:
    write_text(tmp_path / "report.md", "kept\n")
    left = [tmp_path / ".best_model.keras.segzoo-tmp-abc.keras", tmp_path / "sub" / ".x.json.segzoo-tmp-1.json"]
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half")
    stage = tmp_path / "deployment" / ".segzoo_seg.segzoo-tmp-q1"
    stage.mkdir(parents=True)
    (stage / "labels.txt").write_text("a\n")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([*left, stage])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment", "report.md", "report.md.sha256", "sub"]


# -------------------------------------------------------------------------------------------- disk full
def test_disk_full_is_a_clear_error_and_leaves_nothing_half_written(tmp_path, monkeypatch) -> None:
    """A run directory on a full disk: simulated here by a writer that fails with ENOSPC after some bytes (the
    heavy suite uses a real 1 MB tmpfs)."""
    import errno

    from segzoo.io import write_with

    target = tmp_path / "run" / "big.bin"

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            handle.write(b"x" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    from segzoo.errors import OutputError

    with pytest.raises(OutputError, match=r"big.bin: cannot write it: No space left on device"):
        write_with(target, writer)
    assert list((tmp_path / "run").iterdir()) == []
