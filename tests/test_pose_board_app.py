"""The board application's pose mode (board_app/pose.py): no TensorFlow or segzoo, same poses as segzoo."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from segzoo.data.loader import read_image
from segzoo.deployment.bundle import BOARD_APP_DIR, build_pose_bundle, verify_bundle
from segzoo.io import write_json
from segzoo.tasks.pose_estimation.anchors import ssd_anchors
from segzoo.tasks.pose_estimation.pipeline import PoseTracker, load_pose_pipeline
from segzoo.tasks.pose_estimation.preset import MEDIAPIPE_POSE_FULL

BLOCK_IMPORTS = "import runpy, sys; sys.modules.update(segzoo=None, tensorflow=None, keras=None); "
PRESET = MEDIAPIPE_POSE_FULL.with_options(num_poses=3)


def _app():
    spec = importlib.util.spec_from_file_location("segzoo_board_pose", BOARD_APP_DIR / "pose.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(app, mediapipe_dir: Path, config: Path, *extra: str):
    return app.parse_args(["--input", "x", "--detector", str(mediapipe_dir / "pose_detection.tflite"),
                           "--landmark", str(mediapipe_dir / "pose_landmark_full.tflite"), "--config", str(config),
                           "--runtime", "cpu", "--threads", "2", *extra])


@pytest.fixture
def bundle(mediapipe_dir, tmp_path) -> Path:
    """A pose bundle of the float models with the preset (up to 3 poses)."""
    detector, landmark = PRESET.paths(mediapipe_dir)
    return build_pose_bundle(PRESET, detector, landmark, tmp_path / "deployment")


def _run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    code = BLOCK_IMPORTS + f"sys.argv = {[str(folder / 'pose.py'), *args]!r}; " \
        "runpy.run_path(sys.argv[0], run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)


def test_pose_app_equals_segzoos_pipeline_on_real_images(mediapipe_dir, keypoints_dir, coco_dir, tmp_path):
    app = _app()
    config = write_json(tmp_path / "pose_config.json", PRESET.to_dict())
    board = app.open_pipeline(_args(app, mediapipe_dir, config))
    ours = load_pose_pipeline(PRESET, mediapipe_dir, num_threads=2)
    np.testing.assert_array_equal(board.anchors, ssd_anchors(PRESET.anchors))
    paths = sorted((keypoints_dir / "images").glob("*.jpg")) + [coco_dir / "images" / "train2017" / "000000000009.jpg"]
    for path in paths:
        image = read_image(path)
        expected = ours.estimate(image)
        poses, times = board.estimate(image)
        assert len(poses["landmarks"]) == len(expected), path.name
        np.testing.assert_allclose(poses["landmarks"], expected.landmarks, atol=1e-3, rtol=0)
        np.testing.assert_allclose(poses["rois"], expected.rois, atol=1e-3, rtol=0)
        np.testing.assert_allclose(poses["masks"], expected.masks, atol=1e-4, rtol=0)
        np.testing.assert_allclose(poses["presence"], expected.presence, atol=1e-6)
        assert times["detector_ms"] > 0 and times["total_ms"] >= times["detector_ms"]
    # tracking: the same frames give the same crops, and the detector runs on the same frames
    image = read_image(paths[0])
    frames = [image, np.roll(image, 8, axis=1), np.full_like(image, 128), image]
    tracker = PoseTracker(load_pose_pipeline(PRESET.with_options(num_poses=1), mediapipe_dir, num_threads=2))
    board.num_poses = 1
    board.reset()
    for frame in frames:
        expected = tracker(frame)
        poses, times = board.track(frame)
        assert times["detector_ran"] == expected.detector_ran
        np.testing.assert_allclose(poses["landmarks"], expected.landmarks, atol=1e-3, rtol=0)


def test_pose_app_runs_on_images_and_a_video_without_segzoo(bundle, keypoints_dir, tmp_path):
    assert _run(bundle, "--verify").returncode == 0
    images = sorted((keypoints_dir / "images").glob("*.jpg"))[:2]
    out = tmp_path / "results"
    result = _run(bundle, "--input", *map(str, images), "--output", str(out), "--runtime", "cpu", "--num-poses", "2")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if " pose(s), total " in line]
    assert [line.split(":")[0] for line in lines] == [p.name for p in images]
    assert all("[detector]" in line and "landmark " in line and "[ai_edge_litert / cpu]" in line for line in lines)
    for path in images:
        content = json.loads((out / f"{path.stem}_pose.json").read_text())
        assert content["num_poses"] >= 1 and len(content["poses"][0]["landmarks"]) == 33
        assert "left_hip" in content["poses"][0]["coco_keypoints"] and content["timings_ms"]["landmark_ms"] > 0
        assert cv2.imread(str(out / f"{path.stem}_pose.png")).shape[:2] == (content["height"], content["width"])

    video = tmp_path / "clip.avi"
    first = cv2.imread(str(images[0]))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (first.shape[1], first.shape[0]))
    for shift in (0, 4, 8, 12):
        writer.write(np.roll(first, shift, axis=1))
    writer.release()
    result = _run(bundle, "--video", str(video), "--output", str(tmp_path / "frames"), "--num-poses", "1")
    assert result.returncode == 0, result.stderr
    frames = [line for line in result.stdout.splitlines() if line.startswith("frame ")]
    assert len(frames) == 4 and "[detector]" in frames[0] and all("[tracked]" in f for f in frames[1:])
    assert len(list((tmp_path / "frames").glob("frame_*_pose.json"))) == 4

    bench = _run(bundle, "--benchmark", "2", "--warmup", "0", "--runtime", "cpu")
    rows = [json.loads(line) for line in bench.stdout.splitlines()]
    assert [r["model"] for r in rows] == [PRESET.detector_file, PRESET.landmark_file]
    assert all(r["median_ms"] > 0 for r in rows)


def test_pose_app_errors(bundle, tmp_path):
    result = _run(bundle, "--input", "x.jpg", "--detector", str(tmp_path / "none.tflite"))
    assert result.returncode == 4 and "none.tflite not found" in result.stderr
    result = _run(bundle, "--input", str(tmp_path / "nothing.jpg"), "--runtime", "cpu")
    assert result.returncode == 5 and "no such file" in result.stderr
    (bundle / "pose_config.json").write_text("{}")
    result = _run(bundle, "--input", str(tmp_path), "--runtime", "cpu")
    assert result.returncode == 4 and "missing key(s)" in result.stderr
    assert _run(bundle, "--verify").returncode == 1  # the configuration no longer matches the manifest


def test_pose_bundle_contents_launcher_and_checks(bundle, mediapipe_dir, keypoints_dir, tmp_path):
    names = sorted(p.name for p in bundle.iterdir())
    assert names == sorted(["pose_detection.tflite", "pose_landmark_full.tflite", "pose_config.json", "pose.py",
                            "common.py", "segment.py", "launch.sh", "manifest.json"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["entry"] == "pose.py" and manifest["models"] == {"detector": "pose_detection.tflite",
                                                                     "landmark": "pose_landmark_full.tflite"}
    assert json.loads((bundle / "pose_config.json").read_text())["num_poses"] == 3
    assert verify_bundle(bundle) == [] and [p.name for p in bundle.parent.iterdir()] == ["segzoo_pose"]
    image = sorted((keypoints_dir / "images").glob("*.jpg"))[0]
    result = subprocess.run(["sh", str(bundle / "launch.sh"), "--input", str(image), "--runtime", "cpu"],
                            capture_output=True, text=True, timeout=180, env={"PATH": "/usr/bin:/bin",
                                                                             "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    assert "verify: OK" in result.stdout and f"{image.name}: 1 pose(s)" in result.stdout

    from segzoo.errors import ConfigError, ModelError
    detector, landmark = PRESET.paths(mediapipe_dir)
    with pytest.raises(ModelError, match="no output of shape"):
        build_pose_bundle(PRESET, landmark, detector, tmp_path / "swapped")
    with pytest.raises(ConfigError, match="unknown role"):
        build_pose_bundle(PRESET, detector, landmark, tmp_path / "x", nb_models={"heatmap": detector})
    assert not (tmp_path / "swapped" / "segzoo_pose").exists()
