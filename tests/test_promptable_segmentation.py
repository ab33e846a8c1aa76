"""Promptable segmentation: prompts file, YOLO-seg instances, preprocessing, simulated clicks and the click mIoU
evaluator, on the real COCO instances of ../shared with oracle and whole-image predictors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from conftest import shared_path
from segzoo.errors import DataError
from segzoo.tasks.promptable_segmentation.clicks import first_click, interior_point, next_click
from segzoo.tasks.promptable_segmentation.dataset import instance_samples, rasterize, read_polygons
from segzoo.tasks.promptable_segmentation.evaluate import evaluate_clicks, iou
from segzoo.tasks.promptable_segmentation.preprocess import (frame, logits_to_image, model_image, normalize,
                                                               points_to_model)
from segzoo.tasks.promptable_segmentation.prompts import PointPrompt, load_prompts
from segzoo.tasks.promptable_segmentation.reports import write_report


@pytest.fixture(scope="module")
def coco_instances():
    root = shared_path("datasets", "coco128_semseg")
    return instance_samples(root / "images" / "train2017", root / "instance_segmentation" / "labels" / "train2017")


# ---------------------------------------------------------------------------------------------------- prompts
def test_prompts_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"a.jpg": [{"x": 10, "y": 20.5, "label": 1}, {"x": 3, "y": 4, "label": 0}]}))
    assert load_prompts(path) == {"a.jpg": [PointPrompt(10.0, 20.5, 1), PointPrompt(3.0, 4.0, 0)]}


@pytest.mark.parametrize(("entry", "message"), [
    ({"x": 1, "y": 2}, "missing label"),
    ({"x": 1, "y": 2, "label": 2}, "'label' must be 1 (positive) or 0 (negative), got 2"),
    ({"x": 1, "y": 2, "label": True}, "'label' must be 1"),
    ({"x": "1", "y": 2, "label": 1}, "'x' must be a finite number"),
    ({"x": 1, "y": 2, "label": 1, "z": 0}, "unknown field(s) z"),
    ([1, 2, 1], "expected an object"),
])
def test_bad_prompt_entries_name_file_and_entry(tmp_path, entry, message):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"b.jpg": [{"x": 0, "y": 0, "label": 1}, entry]}))
    with pytest.raises(DataError) as info:
        load_prompts(path)
    assert str(path) in str(info.value) and "image 'b.jpg', point 1" in str(info.value)
    assert message in str(info.value)


def test_bad_prompt_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_prompts(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read the prompts file as JSON"):
        load_prompts(tmp_path / "bad.json")
    (tmp_path / "empty.json").write_text('{"c.jpg": []}')
    with pytest.raises(DataError, match="image 'c.jpg': expected a non-empty list"):
        load_prompts(tmp_path / "empty.json")


# ---------------------------------------------------------------------------------------------------- dataset
def test_yolo_seg_lines_and_errors(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("3 0.1 0.1 0.5 0.1 0.5 0.5\n\n7 0 0 1 0 1 1 0 1\n")
    polygons = read_polygons(good)
    assert [(p.class_id, p.line, p.vertices.shape) for p in polygons] == [(3, 1, (3, 2)), (7, 3, (4, 2))]
    for text, message in (("1 0.1 0.2 0.3\n", "even number of coordinates"), ("1 0.1 0.2\n", "at least 3"),
                          ("1 0.1 0.2 0.3 0.4 1.5 0.2\n", "normalized to [0, 1]"), ("x 0 0 1 0 1 1\n", "numbers")):
        bad = tmp_path / "bad.txt"
        bad.write_text("2 0 0 1 0 1 1\n" + text)
        with pytest.raises(DataError, match=f"bad.txt, line 2: .*{message[:12]}"):
            read_polygons(bad)


def test_rasterize_square_and_triangle():
    square = rasterize(np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]]), (40, 80))
    rows, cols = np.nonzero(square)
    # vertices at x 19.5..59.5, y 9.5..29.5 (pixel centres at integers); OpenCV fills the boundary pixels, the
    # half-pixel right/bottom edges round up: the same pixels as YOLO's int32-vertex fillPoly (x 20..60, y 10..30)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 30, 20, 60)
    triangle = rasterize(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), (100, 100))
    assert abs(int(triangle.sum()) - 5000) < 150


def test_real_instances(coco_instances):
    assert len(coco_instances) == 100
    assert sum(len(s.polygons) for s in coco_instances) == 746
    sample = coco_instances[0]
    image = sample.image()
    masks = sample.masks(image.shape[:2])
    assert len(masks) == len(sample.polygons) and all(m.shape == image.shape[:2] and m.any() for m in masks)


def test_orphan_label_is_an_error(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "lost.txt").write_text("1 0 0 1 0 1 1\n")
    with pytest.raises(DataError, match="without an image.*lost"):
        instance_samples(tmp_path / "images", tmp_path / "labels")


# ------------------------------------------------------------------------------------------------ preprocess
def test_longest_side_frame_points_and_logits():
    rgb = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    tensor, where = model_image(rgb, 128)
    assert where.content_hw == (128, 85) and tensor.shape == (1, 128, 128, 3)
    assert np.all(tensor[0, :, 85:] == 0)
    np.testing.assert_allclose(tensor[0, :128, :85], normalize(cv2.resize(rgb, (85, 128))), atol=1e-6)
    np.testing.assert_allclose(normalize(np.array([[[124, 116, 104]]], np.uint8)), 0.0, atol=0.01)
    np.testing.assert_allclose(points_to_model(np.array([[100.0, 150.0]]), where), [[42.5, 64.0]])
    # a step edge in model pixels comes back at the same place in the image
    logits = np.where(np.arange(32)[None, :] < 10, 5.0, -5.0).repeat(32, 0).astype(np.float32)
    back = logits_to_image(logits, where)
    assert back.shape == (300, 200)
    edge = np.argmax(back[150] < 0)
    assert abs(edge - 40 * 200 / 85) <= 2  # x = 40 model pixels (10 logit cells) -> 94 image pixels


def test_stretch_frame():
    where = frame((300, 200), 64, "stretch")
    assert where.content_hw == (64, 64)
    np.testing.assert_allclose(points_to_model(np.array([[100.0, 150.0]]), where), [[32.0, 32.0]])
    assert logits_to_image(np.zeros((16, 16), np.float32), where).shape == (300, 200)


# ----------------------------------------------------------------------------------------------------- clicks
def test_interior_point_is_the_deepest_pixel():
    mask = np.zeros((50, 60), bool)
    mask[10:31, 5:46] = True  # 21 x 41 box: the centre row 20, columns 15..35 are all 11 px deep
    x, y = interior_point(mask)
    assert y == 20 and 15 <= x <= 35
    edge = np.zeros((20, 20), bool)
    edge[:, :5] = True  # touching the image border: the border counts as boundary
    assert interior_point(edge)[0] == 2


def test_interior_point_on_the_bounding_box_equals_the_whole_image():
    rng = np.random.default_rng(7)
    for _ in range(20):
        mask = cv2.GaussianBlur(rng.random((64, 80)), (0, 0), 4) > 0.52
        if not mask.any():
            continue
        full = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(full), full.shape)
        assert interior_point(mask) == (x, y)


def test_corrective_clicks():
    gt = np.zeros((40, 40), bool)
    gt[5:35, 5:35] = True
    pred = gt.copy()
    pred[5:35, 5:15] = False  # a 30 x 10 miss
    pred[0:3, 0:40] = True  # a 3 x 40 false alarm
    click = next_click(gt, pred)
    assert click.label == 1 and 5 <= click.x < 15 and 5 <= click.y < 35 and gt[int(click.y), int(click.x)]
    pred2 = gt.copy()
    pred2[36:40, :] = True
    click2 = next_click(gt, pred2)
    assert click2.label == 0 and click2.y >= 36
    assert next_click(gt, gt) is None
    assert first_click(gt) == PointPrompt(19.0, 19.0, 1)  # centre 19.5: the first of the four deepest pixels


# -------------------------------------------------------------------------------------------------- evaluator
def _key(image: np.ndarray, x: float, y: float) -> tuple:
    return image.shape, hash(image[::16, ::16].tobytes()), float(x), float(y)


def _oracle(samples):
    """A predictor returning the ground-truth instance whose first click is the first point (IoU 1)."""
    table = {}
    for sample in samples:
        image = sample.image()
        for mask in sample.masks(image.shape[:2]):
            click = first_click(mask)
            table[_key(image, click.x, click.y)] = mask

    def predictor(image, coords, labels):
        return np.where(table[_key(image, coords[0, 0], coords[0, 1])], 10.0, -10.0).astype(np.float32)

    return predictor


def test_oracle_scores_one_and_whole_image_scores_area_fraction(coco_instances):
    samples = coco_instances[:40]
    result = evaluate_clicks(samples, _oracle(samples), num_clicks=1)
    assert result["num_instances"] > 100 and result["skipped_small"] > 0
    assert result["one_click_miou"] == 1.0 and all(r["ious"] == [1.0] for r in result["instances"])

    whole = evaluate_clicks(samples, lambda image, c, l: np.ones(image.shape[:2], np.float32), num_clicks=1)
    expected = []
    for sample in samples:
        for mask in sample.masks():
            if mask.sum() >= 1024:
                expected.append(mask.sum() / mask.size)
    assert whole["num_instances"] == result["num_instances"] == len(expected)
    assert whole["one_click_miou"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert all(r["area"] >= 1024 for r in whole["instances"])


def test_three_clicks_improve_a_scripted_predictor(coco_instances):
    """A predictor that returns the union of 15-pixel discs around its positive clicks minus discs around negative
    ones: the corrective clicks must raise its mIoU."""

    def discs(image, coords, labels):
        out = np.zeros(image.shape[:2], np.uint8)
        for (x, y), label in zip(coords, labels):
            if label == 1:
                cv2.circle(out, (int(x), int(y)), 15, 1, -1)
        for (x, y), label in zip(coords, labels):
            if label == 0:
                cv2.circle(out, (int(x), int(y)), 15, 0, -1)
        return out.astype(np.float32) - 0.5

    result = evaluate_clicks(coco_instances[:10], discs, num_clicks=3)
    first, second, third = result["miou_at"]
    assert 0.0 < first < second < third < 1.0
    assert all(len(r["clicks"]) == 3 and r["clicks"][1][2] == 1 for r in result["instances"]
               if r["ious"][0] < r["ious"][1])


def test_iou_and_report(tmp_path):
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert iou(a, b) == pytest.approx(4 / 12) and iou(a & False, b & False) == 1.0
    result = {"num_clicks": 2, "miou": 0.5, "one_click_miou": 0.25, "miou_at": [0.25, 0.5], "num_images": 1,
              "num_instances": 2, "skipped_small": 1, "min_area": 1024, "threshold": 0.0,
              "per_class": {"1": {"instances": 2, "miou_at": [0.25, 0.5]}}, "instances": [], "seconds": 1.0}
    paths = write_report(result, tmp_path, model={"encoder": "e.tflite"}, dataset={"name": "coco128"},
                         class_names={1: "person"})
    saved = json.loads(paths["json"].read_text())
    assert saved["per_class"]["1"]["name"] == "person" and saved["miou_at"] == [0.25, 0.5]
    text = paths["md"].read_text()
    assert "One-click mIoU: 25.00 %" in text and "after 2 clicks: 50.00 %" in text and "| person | 2 |" in text
