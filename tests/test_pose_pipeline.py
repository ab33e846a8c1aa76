"""The whole float MediaPipe Pose pipeline on real COCO photos: keypoints, masks, tracking, any runner."""

from __future__ import annotations

import numpy as np
import pytest

from segzoo.data.loader import read_image
from segzoo.runtime.base import FunctionRunner, NamedRunner, TensorSpec
from segzoo.runtime.litert import LiteRTRunner
from segzoo.tasks.pose_estimation.evaluation import (evaluate_keypoints, evaluate_person_masks, load_coco_keypoints,
                                                     person_mask_samples)
from segzoo.tasks.pose_estimation.pipeline import PosePipeline, PoseTracker, load_pose_pipeline
from segzoo.tasks.pose_estimation.preset import MEDIAPIPE_POSE_FULL

PRESET = MEDIAPIPE_POSE_FULL.with_options(num_poses=4)


@pytest.fixture(scope="module")
def pipeline() -> PosePipeline:
    from conftest import shared_path

    return load_pose_pipeline(PRESET, shared_path("pretrained", "mediapipe_pose"), num_threads=2)


@pytest.fixture(scope="module")
def person_image() -> np.ndarray:
    from conftest import shared_path

    return read_image(shared_path("datasets", "coco_keypoints_mmpose", "images", "000000000785.jpg"))


def test_float_pipeline_oks_ap_and_pck_on_real_coco_images(pipeline, keypoints_dir):
    dataset = load_coco_keypoints(keypoints_dir / "person_keypoints.json", keypoints_dir / "images")
    metrics, predictions = evaluate_keypoints(pipeline.estimate, dataset)
    assert metrics["num_images"] == 4 and metrics["num_persons"] == 12  # 14 annotated, 2 without keypoints
    found = sorted((m["oks"] for m in metrics["per_person"] if m["oks"] > 0.1), reverse=True)
    # the detector finds the main person of each image (MediaPipe reports one person per detection)
    assert len(found) == 4
    np.testing.assert_allclose(found, [0.904, 0.840, 0.685, 0.529], atol=0.02)
    assert 0.15 < metrics["coco"]["AP"] < 0.3 and metrics["coco"]["AP50"] > 0.3
    assert 0.2 < metrics["pck"] < 0.4  # most persons are missed: their keypoints count as wrong
    per_kp = metrics["per_keypoint"]
    assert per_kp["left_shoulder"]["pck"] >= 0.2 and per_kp["left_hip"]["mean_error"] < 0.3
    assert all(len(p.scores) <= PRESET.num_poses for p in predictions.values())


def test_person_mask_iou_on_real_coco_person_photos(pipeline, coco_dir):
    samples = person_mask_samples(coco_dir / "images" / "train2017",
                                  coco_dir / "semantic_segmentation" / "masks" / "train2017", max_images=8)
    result = evaluate_person_masks(pipeline.estimate, samples)
    assert result["num_images"] == 8
    assert 0.6 < result["iou"] < 0.85
    found = [r for r in result["per_image"] if r["poses"] > 0]
    assert len(found) >= 4 and np.mean([r["iou"] for r in found]) > 0.6


def test_pipeline_is_a_named_runner_with_stage_timings(pipeline, person_image):
    assert isinstance(pipeline, NamedRunner)
    assert [s.name for s in pipeline.inputs] == ["image"]
    out = pipeline.predict({"image": person_image})
    assert out["landmarks"].shape == (1, 33, 5) and out["masks"].shape == (1, *person_image.shape[:2])
    result = pipeline.estimate(person_image)
    assert {"detection/detector", "detection/detector_preprocess", "detection/detector_postprocess",
            "landmarking/landmark", "landmarking/landmark_preprocess", "landmarking/landmark_postprocess",
            "landmarking/mask_postprocess"} <= set(result.timings)
    landmarks = result.landmarks[0]
    assert (landmarks[:, 3:] >= 0).all() and (landmarks[:, 3:] <= 1).all()
    height, width = person_image.shape[:2]
    assert (landmarks[:, 0] > -0.5 * width).all() and (landmarks[:, 0] < 1.5 * width).all()
    mask = result.person_mask()
    assert mask.dtype == bool and 0.02 < mask.mean() < 0.5


def test_images_without_any_person(pipeline, coco_dir):
    for image in (np.full((240, 320, 3), 128, np.uint8),
                  read_image(coco_dir / "images" / "train2017" / "000000000009.jpg")):  # food, no person
        result = pipeline.estimate(image)
        assert len(result) == 0 and result.landmarks.shape == (0, 33, 5)
        assert result.masks.shape == (0, *image.shape[:2]) and not result.person_mask().any()


def test_tracking_runs_the_detector_only_when_tracking_is_lost(pipeline, person_image, mediapipe_dir):
    tracker = PoseTracker(load_pose_pipeline(MEDIAPIPE_POSE_FULL, mediapipe_dir, num_threads=2))
    single = pipeline.estimate(person_image)
    shifted = np.roll(person_image, 6, axis=1)
    frames = [person_image, shifted, person_image, np.full_like(person_image, 128), person_image]
    results = [tracker(frame) for frame in frames]
    assert [r.detector_ran for r in results] == [True, False, False, False, True]
    assert [len(r) for r in results] == [1, 1, 1, 0, 1]
    np.testing.assert_allclose(results[0].landmarks, single.landmarks[:1], atol=1e-4)
    # tracked frames: the crop comes from the previous landmarks, the body stays where it is (or moves with it)
    visible = single.landmarks[0, :, 3] > 0.5
    moved = results[1].landmarks[0, visible, 0] - single.landmarks[0, visible, 0]
    assert abs(np.median(moved) - 6) < 3
    assert np.median(np.abs(results[2].landmarks[0, visible, :2] - single.landmarks[0, visible, :2])) < 6
    assert "landmarking/landmark" in results[1].timings and "detection/detector" not in results[1].timings


class _Renamed:
    """A model runner seen under other tensor names, outputs in another order (as an imported model may be)."""

    def __init__(self, runner: NamedRunner) -> None:
        self.runner, self.name = runner, f"renamed_{runner.name}"
        self.inputs = tuple(TensorSpec(f"in_{i}", s.shape) for i, s in enumerate(runner.inputs))
        self.outputs = tuple(TensorSpec(f"out_{s.name}", s.shape) for s in reversed(runner.outputs))

    def predict(self, feeds):
        out = self.runner.predict({s.name: feeds[f"in_{i}"] for i, s in enumerate(self.runner.inputs)})
        return {f"out_{k}": v for k, v in out.items()}


def test_the_pipeline_takes_any_runner_of_the_two_models(pipeline, person_image, mediapipe_dir):
    detector = LiteRTRunner(mediapipe_dir / "pose_detection.tflite", 2)
    landmark = LiteRTRunner(mediapipe_dir / "pose_landmark_full.tflite", 2)
    other = PosePipeline(PRESET, _Renamed(detector), _Renamed(landmark))
    expected, got = pipeline.estimate(person_image), other.estimate(person_image)
    np.testing.assert_array_equal(got.landmarks, expected.landmarks)
    np.testing.assert_array_equal(got.masks, expected.masks)
    from segzoo.errors import ModelError

    wrong = FunctionRunner("wrong", lambda x: {"y": x}, (TensorSpec("x", (1, 224, 224, 3)),),
                           (TensorSpec("y", (1, 224, 224, 3)),))
    with pytest.raises(ModelError, match="no output of shape"):
        PosePipeline(PRESET, wrong, landmark)


def test_calibration_inputs_are_each_models_own_preprocessing(pipeline, coco_dir):
    from segzoo.errors import DataError
    from segzoo.tasks.pose_estimation.calibration import calibration_inputs

    photos = coco_dir / "images" / "train2017"
    batches = calibration_inputs(pipeline, [photos / "000000000036.jpg", photos / "000000000009.jpg"])
    detector, landmark = batches["detector"], batches["landmark"]
    assert detector.shape == (2, 224, 224, 3) and detector.min() >= -1.0 and detector.max() <= 1.0
    assert (detector[:, 0, 0] == -1.0).all()  # letterbox padding is black, i.e. -1
    assert landmark.shape == (1, 256, 256, 3)  # one person in the first photo, none in the food photo
    assert landmark.min() >= 0.0 and landmark.max() <= 1.0 and landmark.std() > 0.1
    with pytest.raises(DataError, match="found no person"):
        calibration_inputs(pipeline, [photos / "000000000009.jpg"])


@pytest.mark.slow  # imports TensorFlow and rebuilds both models in Keras
def test_imported_keras_models_give_the_same_poses(pipeline, person_image, mediapipe_dir):
    from segzoo.litert.importer import import_tflite
    from segzoo.runtime.keras import KerasNamedRunner

    detector, landmark = (KerasNamedRunner(import_tflite(path)) for path in PRESET.paths(mediapipe_dir))
    expected, got = pipeline.estimate(person_image), PosePipeline(PRESET, detector, landmark).estimate(person_image)
    assert len(got) == len(expected) == 1
    np.testing.assert_allclose(got.landmarks[..., :2], expected.landmarks[..., :2], atol=0.5)
    np.testing.assert_allclose(got.presence, expected.presence, atol=1e-3)
    assert np.mean(got.person_mask() == expected.person_mask()) > 0.999
