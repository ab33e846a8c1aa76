"""The board-loadability check covers every .tflite of a multi-network bundle: a pose pipeline (detector +
landmark model) or a SAM2 pair (encoder + decoder) whose second network has a custom op the board's runtime
lacks is refused by the configuration check, by the bundle builders, and flagged in the per-frame benchmark row."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import conv_model, mediapipe_model

from segzoo.benchmarking.estimate import check_bundle_loadable
from segzoo.benchmarking.report import benchmark_models, frame_rows, write_benchmark_report
from segzoo.config import load_config
from segzoo.errors import ConfigError, ModelError

CUSTOM = "Convolution2DTransposeBias"


def _pair(folder: Path, first: str, second: str) -> tuple[Path, Path]:
    """A stock first network and a second one with MediaPipe's custom op, under the given names."""
    folder.mkdir(parents=True, exist_ok=True)
    return conv_model(folder / first, classes=2, size=16), mediapipe_model(folder / second)


def _config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return str(info.value)


def test_the_check_names_each_unloadable_file_of_a_bundle(tmp_path):
    stock, custom = _pair(tmp_path, "a.tflite", "b.tflite")
    check_bundle_loadable([stock, stock])
    with pytest.raises(ModelError) as info:
        check_bundle_loadable([stock, custom])
    assert f"{custom} is not loadable on the board: custom op(s) {CUSTOM}" in str(info.value)
    assert str(stock) not in str(info.value)


def test_pose_pipeline_whose_landmark_model_has_a_custom_op(tmp_path):
    from segzoo.deployment.bundle import build_pose_bundle
    from segzoo.tasks.pose_estimation.preset import MEDIAPIPE_POSE_FULL

    folder = tmp_path / "pose"
    detector, landmark = _pair(folder, *MEDIAPIPE_POSE_FULL.files)
    data = {"operation_mode": "deployment", "mlflow": {"enabled": False},
            "general": {"pipeline": MEDIAPIPE_POSE_FULL.name, "model_path": str(folder)}}
    message = _config_error(data)
    assert f"general.model_path: {landmark} is not loadable on the board: custom op(s) {CUSTOM}" in message
    assert f"{detector} is not loadable" not in message
    with pytest.raises(ModelError, match=f"{landmark.name} is not loadable on the board"):
        build_pose_bundle(MEDIAPIPE_POSE_FULL, detector, landmark, tmp_path / "bundle")
    assert not (tmp_path / "bundle" / "segzoo_pose").exists()


def test_sam2_pair_whose_decoder_has_a_custom_op(tmp_path):
    from segzoo.deployment.point_bundle import build_point_bundle

    folder = tmp_path / "sam2"
    encoder, decoder = _pair(folder, "encoder_int8.tflite", "decoder_int8.tflite")
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    data = {"operation_mode": "deployment", "mlflow": {"enabled": False}, "general": {"model_path": str(folder)},
            "dataset": {"layout": "yolo_seg", "test_path": str(tmp_path / "images"),
                        "test_masks_path": str(tmp_path / "labels")},
            "training": {"model": {"name": "sam2", "input_shape": [64, 64, 3]}}}
    message = _config_error(data)
    assert f"general.model_path: {decoder} is not loadable on the board: custom op(s) {CUSTOM}" in message
    assert f"{encoder} is not loadable" not in message
    with pytest.raises(ModelError, match=f"{decoder.name} is not loadable on the board"):
        build_point_bundle(encoder, decoder, tmp_path / "bundle", resize_mode="longest_side", threshold=0.0)
    assert not (tmp_path / "bundle" / "segzoo_sam2").exists()


def test_per_frame_benchmark_row_is_not_loadable_when_one_network_is_not(tmp_path):
    stock, custom = _pair(tmp_path, "detector.tflite", "landmark.tflite")
    names = ["pipe/detector", "pipe/landmark"]
    rows = benchmark_models([stock, custom], ["stm32mp2_estimate"], names=names)
    frame = frame_rows(rows, {"pipe": names})
    assert len(frame) == 1 and frame[0]["error"] is None and frame[0]["latency_ms"] > 0
    assert frame[0]["board_loadable"] is False
    assert any(f"pipe/landmark is not loadable on the board: custom op(s) {CUSTOM}" in w
               for w in frame[0]["warnings"])
    markdown = write_benchmark_report(rows + frame, tmp_path / "report")["md"].read_text()
    assert markdown.count("⚠ **not loadable on the board**") == 2  # the landmark row and the frame row
    clean = benchmark_models([stock, stock], ["stm32mp2_estimate"], names=names)
    assert frame_rows(clean, {"pipe": names})[0]["board_loadable"] is True
