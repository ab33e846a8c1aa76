"""COCO keypoint evaluation: the file checks, OKS against COCO's definition, AP, PCK, mask IoU, reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from segzoo.errors import DataError
from segzoo.tasks.pose_estimation.evaluation import (ImagePrediction, coco_keypoint_ap, keypoint_metrics,
                                                     load_coco_keypoints, mask_iou, oks)
from segzoo.tasks.pose_estimation.keypoints import COCO_FROM_MEDIAPIPE, COCO_KEYPOINTS, COCO_SIGMAS, to_coco
from segzoo.tasks.pose_estimation.pipeline import PoseResult
from segzoo.tasks.pose_estimation.prediction import pose_json, predict_poses, render_poses
from segzoo.tasks.pose_estimation.reports import mlflow_metrics, write_pose_report


def _person_keypoints(x0: float, y0: float) -> list[float]:
    """17 visible keypoints of a stick figure at (x0, y0), COCO's flat [x, y, v] * 17."""
    points = [(x0 + 10 * (k % 3), y0 + 12 * k) for k in range(17)]
    return [v for x, y in points for v in (x, y, 2)]


def _write_dataset(folder: Path, annotations: list[dict] | None = None, images: list[dict] | None = None) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "images" / "a.jpg"), np.zeros((300, 200, 3), np.uint8))
    data = {"images": images if images is not None else [{"id": 7, "file_name": "a.jpg", "width": 200,
                                                          "height": 300}],
            "annotations": annotations if annotations is not None else [
                {"id": 1, "image_id": 7, "keypoints": _person_keypoints(20, 10), "bbox": [20, 10, 20, 192],
                 "area": 4000.0, "iscrowd": 0},
                {"id": 2, "image_id": 7, "keypoints": _person_keypoints(120, 40), "bbox": [120, 40, 20, 192],
                 "area": 2500.0}]}
    path = folder / "keypoints.json"
    path.write_text(json.dumps(data))
    return path


def test_oks_follows_cocos_definition(tmp_path):
    dataset = load_coco_keypoints(_write_dataset(tmp_path), tmp_path / "images")
    person = dataset.images[0].persons[0]
    assert oks(person.keypoints, person) == pytest.approx(1.0)
    moved = person.keypoints.copy()
    moved[:, 0] += 3.0  # every keypoint 3 px off: exp(-9 / (2 * area * (2 sigma)^2)) averaged
    expected = np.mean(np.exp(-9.0 / (2 * 4000.0 * (2 * COCO_SIGMAS) ** 2)))
    assert oks(moved, person) == pytest.approx(expected, rel=1e-9)
    hidden = person.keypoints.copy()
    hidden[5:, 2] = 0  # unlabelled keypoints are not scored, wherever the prediction puts them
    from dataclasses import replace
    partial = replace(person, keypoints=hidden)
    far = moved.copy()
    far[5:, :2] = 1e4
    assert oks(far, partial) == pytest.approx(np.mean(np.exp(-9.0 / (2 * 4000.0 * (2 * COCO_SIGMAS[:5]) ** 2))))
    # pycocotools' own computeOks on the same pair
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    import contextlib, io
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dataset.coco
        gt.createIndex()
        dt = gt.loadRes([{"image_id": 7, "category_id": 1, "keypoints": moved.reshape(-1).tolist(), "score": 1.0}])
        evaluator = COCOeval(gt, dt, iouType="keypoints")
        evaluator.params.imgIds = [7]
        evaluator._prepare()
        table = evaluator.computeOks(7, 1)
    assert table[0, 0] == pytest.approx(oks(moved, person), rel=1e-9)


def test_ap_pck_and_matching_on_hand_made_predictions(tmp_path):
    dataset = load_coco_keypoints(_write_dataset(tmp_path), tmp_path / "images")
    first, second = (p.keypoints for p in dataset.images[0].persons)
    perfect = {7: ImagePrediction(7, np.stack([first, second]), np.array([0.9, 0.8]))}
    metrics = keypoint_metrics(dataset, perfect)
    assert metrics["coco"]["AP"] == pytest.approx(1.0) and metrics["coco"]["AR"] == pytest.approx(1.0)
    assert metrics["mean_oks"] == pytest.approx(1.0) and metrics["pck"] == pytest.approx(1.0)
    assert [m["found"] for m in metrics["per_person"]] == [True, True]

    # one person found with every keypoint 0.3 torso away (PCK 0), the other missed
    torso_px = np.linalg.norm(first[5, :2] - first[12, :2])
    off = first.copy()
    off[:, 1] += 0.3 * torso_px
    one = {7: ImagePrediction(7, off[None], np.array([0.9]))}
    metrics = keypoint_metrics(dataset, one)
    rows = metrics["per_person"]
    assert rows[0]["prediction"] == 0 and rows[0]["found"] and rows[1]["oks"] < 1e-3 and not rows[1]["found"]
    assert metrics["pck"] == 0.0 and metrics["per_keypoint"]["nose"]["mean_error"] == pytest.approx(0.3)
    assert metrics["per_keypoint"]["nose"]["labelled"] == 2
    assert metrics["coco"]["AP"] < 0.5

    # half the keypoints within 0.2 torso: PCK over both persons' 34 keypoints
    half = first.copy()
    half[::2, 1] += 0.5 * torso_px
    metrics = keypoint_metrics(dataset, {7: ImagePrediction(7, np.stack([half, second]), np.array([0.9, 0.8]))})
    assert metrics["pck"] == pytest.approx((8 + 17) / 34)
    assert keypoint_metrics(dataset, {})["coco"]["AP"] == 0.0
    assert coco_keypoint_ap(dataset, {7: ImagePrediction(7, np.zeros((0, 17, 3)), np.zeros(0))})["AP"] == 0.0


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d["annotations"][0].pop("keypoints"), r"annotations\[0\] has no 'keypoints' field"),
    (lambda d: d["annotations"][0].update(keypoints=[1, 2, 3]), r"annotations\[0\].keypoints must be a list of 51"),
    (lambda d: d["annotations"][1].update(keypoints=[0] * 50 + [5]), "visibility flags"),
    (lambda d: d["annotations"][0].update(image_id=99), "image_id 99 names no image"),
    (lambda d: d["annotations"][0].pop("area"), r"annotations\[0\] has no 'area' field"),
    (lambda d: d["annotations"][0].update(bbox="box"), r"annotations\[0\].bbox must be a list of 4"),
    (lambda d: d["images"][0].update(file_name="missing.jpg"), "missing.jpg, which does not exist"),
    (lambda d: d["images"][0].pop("width"), r"images\[0\] has no 'width' field"),
    (lambda d: d.pop("annotations"), "no 'annotations' list"),
])
def test_malformed_keypoint_files_are_data_errors_naming_the_field(tmp_path, change, message):
    path = _write_dataset(tmp_path)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message):
        load_coco_keypoints(path, tmp_path / "images")
    path.write_text("{not json")
    with pytest.raises(DataError, match="not a readable JSON"):
        load_coco_keypoints(path, tmp_path / "images")


def test_real_keypoint_file_and_mapping(keypoints_dir):
    dataset = load_coco_keypoints(keypoints_dir / "person_keypoints.json", keypoints_dir / "images")
    assert len(dataset.images) == 4 and sum(len(im.persons) for im in dataset.images) == 14
    assert dataset.num_persons == 12
    landmarks = np.arange(33 * 2, dtype=float).reshape(33, 2)
    coco = to_coco(landmarks)
    assert coco.shape == (17, 2) and coco[COCO_KEYPOINTS.index("left_hip"), 0] == 2 * 23
    assert [COCO_FROM_MEDIAPIPE[COCO_KEYPOINTS.index(n)] for n in ("left_eye", "right_ear", "right_ankle")] == [2, 8, 28]


def test_mask_iou_counts_and_ignore():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True
    predicted = np.zeros((4, 4), bool)
    predicted[1:3] = True
    valid = np.ones((4, 4), bool)
    assert mask_iou(predicted, truth, valid) == (4, 12)
    valid[2] = False
    assert mask_iou(predicted, truth, valid) == (4, 8)


def _result(height: int = 120, width: int = 160) -> PoseResult:
    landmarks = np.zeros((1, 33, 5), np.float32)
    landmarks[0, :, 0] = np.linspace(20, 140, 33)
    landmarks[0, :, 1] = np.linspace(10, 110, 33)
    landmarks[0, :, 3:] = 0.9
    masks = np.zeros((1, height, width), np.float32)
    masks[0, 10:110, 40:120] = 0.8
    return PoseResult(landmarks, landmarks[:, :2], np.zeros((1, 33, 3), np.float32), np.array([0.95], np.float32),
                      np.array([0.8], np.float32), np.array([[80, 60, 100, 100, 0.1]], np.float32), masks,
                      {"detection/detector": 1.0})


def test_prediction_files_and_overlay(tmp_path):
    image = np.full((120, 160, 3), 200, np.uint8)
    overlay = render_poses(image, _result())
    assert overlay.shape == image.shape and (overlay != image).any()
    assert (overlay[0, 0] == image[0, 0]).all()  # outside the mask and the skeleton
    content = pose_json(_result(), Path("x.jpg"), (120, 160))
    assert content["num_poses"] == 1 and len(content["poses"][0]["landmarks"]) == 33
    assert content["poses"][0]["coco_keypoints"]["left_hip"][0] == pytest.approx(float(np.linspace(20, 140, 33)[23]),
                                                                                 abs=0.01)
    assert content["poses"][0]["mask_pixels"] == 100 * 80
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    cv2.imwrite(str(path), image)
    rows = predict_poses(lambda im: _result(*im.shape[:2]), [path], tmp_path / "out")
    assert rows[0]["poses"] == 1 and json.loads(rows[0]["json"].read_text())["poses"][0]["presence"] == 0.95
    assert cv2.imread(str(rows[0]["overlay"])).shape == (120, 160, 3)
    with pytest.raises(DataError, match="share the name stem"):
        predict_poses(lambda im: _result(), [path, path], tmp_path / "out")


def test_reports_are_written_with_the_figures(tmp_path):
    dataset = load_coco_keypoints(_write_dataset(tmp_path), tmp_path / "images")
    first = dataset.images[0].persons[0].keypoints
    predictions = {7: ImagePrediction(7, first[None], np.array([0.9]))}
    report = {"pipeline": "mediapipe_pose_full", "models": {"detector": "d.tflite"},
              "keypoints": keypoint_metrics(dataset, predictions),
              "masks": {"iou": 0.7, "mean_image_iou": 0.65, "num_images": 3, "threshold": 0.5, "per_image": []}}
    files = write_pose_report(report, tmp_path / "run", dataset=dataset, predictions=predictions, prefix="float_")
    text = files["md"].read_text()
    assert "Mean per-person OKS: 0.5000" in text and "Person-mask IoU: 70.00 %" in text
    assert "| left_hip |" in text
    assert json.loads(files["json"].read_text())["keypoints"]["mean_oks"] == pytest.approx(0.5)
    assert files["keypoint_errors"].stat().st_size > 0 and files["overlay_a"].name == "a.png"
    assert not [p for p in (tmp_path / "run").rglob(".*")]  # no temporary files left
    metrics = mlflow_metrics(report)
    assert metrics["eval_oks"] == pytest.approx(0.5) and metrics["eval_mask_iou"] == 0.7 and "eval_ap" in metrics
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
