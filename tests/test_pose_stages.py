"""Each stage of the MediaPipe Pose pipeline against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segzoo.tasks.pose_estimation import crop
from segzoo.tasks.pose_estimation.anchors import SsdAnchorOptions, layer_scale, ssd_anchors
from segzoo.tasks.pose_estimation.decode import (DetectionDecoding, Detections, decode_detections, remove_letterbox,
                                                 sigmoid, weighted_nms)
from segzoo.tasks.pose_estimation.landmarks import decode_landmarks, project_landmarks, refine_with_heatmap
from segzoo.tasks.pose_estimation.pipeline import associate, world_to_image_axes
from segzoo.tasks.pose_estimation.preset import MEDIAPIPE_POSE_FULL, get_preset


# ------------------------------------------------------------------------------------------------------ anchors

def test_anchor_count_and_order_match_mediapipe():
    anchors = ssd_anchors(SsdAnchorOptions())
    assert anchors.shape == (2254, 4)  # 28*28*2 + 14*14*2 + 7*7*(3 layers * 2)
    # stride 8: 2 anchors per cell, x fastest, then rows
    np.testing.assert_allclose(anchors[0], [0.5 / 28, 0.5 / 28, 1, 1])
    np.testing.assert_allclose(anchors[1], anchors[0])
    np.testing.assert_allclose(anchors[2], [1.5 / 28, 0.5 / 28, 1, 1])
    np.testing.assert_allclose(anchors[2 * 28], [0.5 / 28, 1.5 / 28, 1, 1])
    np.testing.assert_allclose(anchors[1567], [27.5 / 28, 27.5 / 28, 1, 1])
    # stride 16 starts at 1568
    np.testing.assert_allclose(anchors[1568], [0.5 / 14, 0.5 / 14, 1, 1])
    # the three stride-32 layers are merged: 6 anchors per cell of the 7x7 grid
    np.testing.assert_allclose(anchors[1960:1966], np.tile([0.5 / 7, 0.5 / 7, 1, 1], (6, 1)))
    np.testing.assert_allclose(anchors[1966], [1.5 / 7, 0.5 / 7, 1, 1])
    np.testing.assert_allclose(anchors[-1], [6.5 / 7, 6.5 / 7, 1, 1])


def test_anchor_sizes_when_not_fixed():
    options = SsdAnchorOptions(fixed_anchor_size=False)
    anchors = ssd_anchors(options)
    s0, s1 = 0.1484375, 0.1484375 + (0.75 - 0.1484375) / 4
    assert layer_scale(options, 1) == pytest.approx(s1)
    np.testing.assert_allclose(anchors[0, 2:], [s0, s0], rtol=1e-6)  # aspect ratio 1
    np.testing.assert_allclose(anchors[1, 2:], [math.sqrt(s0 * s1)] * 2, rtol=1e-6)  # interpolated scale
    s2, s3, s4 = (0.1484375 + (0.75 - 0.1484375) * i / 4 for i in (2, 3, 4))
    expected = [s2, math.sqrt(s2 * s3), s3, math.sqrt(s3 * s4), s4, math.sqrt(s4 * 1.0)]
    np.testing.assert_allclose(anchors[1960:1966, 2], expected, rtol=1e-6)
    assert len(ssd_anchors(SsdAnchorOptions(strides=(8,), interpolated_scale_aspect_ratio=0.0))) == 28 * 28


# ----------------------------------------------------------------------------------------------------- decoding

def _raw(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


def test_box_and_keypoint_decoding_relative_to_anchor():
    anchors = np.array([[0.5, 0.5, 1, 1], [0.25, 0.75, 1, 1], [0.5, 0.5, 1, 1]], np.float32)
    row = [22.4, -11.2, 44.8, 22.4, 0.0, 0.0, 11.2, 22.4, -22.4, 0.0, 0.0, -44.8]
    raw = _raw([row, row, row])
    logits = np.array([[0.0], [1000.0], [-0.01]], np.float32)  # 0.5 (kept), clipped to 100 (kept), < 0.5
    found = decode_detections(raw, logits, anchors, DetectionDecoding())
    assert len(found) == 2
    np.testing.assert_allclose(found.scores, [0.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(found.boxes[0], [0.5, 0.4, 0.7, 0.5], atol=1e-6)
    np.testing.assert_allclose(found.boxes[1], [0.25, 0.65, 0.45, 0.75], atol=1e-6)
    np.testing.assert_allclose(found.keypoints[0], [[0.5, 0.5], [0.55, 0.6], [0.4, 0.5], [0.5, 0.3]], atol=1e-6)


def test_negative_size_boxes_are_dropped_and_sigmoid_is_stable():
    anchors = np.array([[0.5, 0.5, 1, 1]], np.float32)
    raw = _raw([[0, 0, -1.0, 10.0] + [0] * 8])
    assert len(decode_detections(raw, np.array([[5.0]]), anchors, DetectionDecoding())) == 0
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_allclose(sigmoid(np.array([-1000.0, 0.0, 1000.0])), [0.0, 0.5, 1.0])


def test_weighted_nms_merges_overlapping_detections_by_score():
    dets = Detections(np.array([0.6, 0.9, 0.8], np.float32),
                      np.array([[0.1, 0, 1.1, 1], [0, 0, 1, 1], [2, 2, 3, 3]], np.float32),
                      np.array([[[1, 1]], [[0, 0]], [[5, 5]]], np.float32))
    out = weighted_nms(dets, 0.3)  # IoU(A, B) = 0.9 / 1.1 > 0.3; C overlaps nothing
    np.testing.assert_allclose(out.scores, [0.9, 0.8])
    np.testing.assert_allclose(out.boxes[0], [0.04, 0.0, 1.04, 1.0], atol=1e-6)  # (0.9*A + 0.6*B) / 1.5
    np.testing.assert_allclose(out.keypoints[0], [[0.4, 0.4]], atol=1e-6)
    np.testing.assert_allclose(out.boxes[1], [2, 2, 3, 3])
    assert len(weighted_nms(dets, 0.85)) == 3  # below the threshold nothing merges
    assert len(weighted_nms(Detections.empty(4), 0.3)) == 0


def test_letterbox_removal():
    dets = Detections(np.array([0.9], np.float32), np.array([[0.2, 0.25, 0.6, 0.5]], np.float32),
                      np.array([[[0.5, 0.75]]], np.float32))
    out = remove_letterbox(dets, np.array([0.0, 0.25, 0.0, 0.25]))  # a landscape 2:1 image
    np.testing.assert_allclose(out.boxes[0], [0.2, 0.0, 0.6, 0.5])
    np.testing.assert_allclose(out.keypoints[0, 0], [0.5, 1.0])
    np.testing.assert_array_equal(Detections.from_array(out.to_array()).boxes, out.boxes)


# --------------------------------------------------------------------------------------------------------- crops

@pytest.mark.parametrize(("end", "rotation"), [((100, 100), 0.0), ((200, 200), math.pi / 2), ((100, 300), -math.pi),
                                               ((0, 200), -math.pi / 2)])
def test_roi_from_a_synthetic_detection(end, rotation):
    roi = crop.alignment_roi(np.array([100.0, 200.0]), np.array(end, float))
    np.testing.assert_allclose(roi, [100, 200, 200, 200, rotation], atol=1e-6)
    np.testing.assert_allclose(crop.expand_roi(roi, 1.25), [100, 200, 250, 250, rotation], atol=1e-5)
    np.testing.assert_allclose(crop.expand_roi(np.array([0, 0, 10, 40, 0.3]), 1.5), [0, 0, 60, 60, 0.3], atol=1e-6)


def test_normalize_radians_wraps_to_minus_pi_pi():
    assert crop.normalize_radians(3 * math.pi / 2) == pytest.approx(-math.pi / 2)
    assert crop.normalize_radians(math.pi) == pytest.approx(-math.pi)
    assert crop.normalize_radians(-0.5) == pytest.approx(-0.5)


def test_letterbox_roi_pads_to_square():
    roi, padding = crop.letterbox_roi((480, 640), (224, 224))
    np.testing.assert_allclose(roi, [320, 240, 640, 640, 0])
    np.testing.assert_allclose(padding, [0, 0.125, 0, 0.125])
    roi, padding = crop.letterbox_roi((500, 250), (224, 224))
    np.testing.assert_allclose(roi, [125, 250, 500, 500, 0])
    np.testing.assert_allclose(padding, [0.25, 0, 0.25, 0])


def test_roi_corners_and_inverse_are_identity_on_points():
    matrix = crop.roi_to_image(np.array([100, 200, 250, 250, 0.0]), (256, 256))
    np.testing.assert_allclose(crop.apply(matrix, [[0, 0], [256, 256], [128, 128]]),
                               [[-25, 75], [225, 325], [100, 200]])
    turned = crop.roi_to_image(np.array([100, 200, 250, 250, math.pi / 2]), (256, 256))
    np.testing.assert_allclose(crop.apply(turned, [[0, 0]]), [[225, 75]], atol=1e-9)  # crop's top is image right
    rng = np.random.default_rng(0)
    for _ in range(5):
        roi = np.array([*rng.uniform(0, 500, 2), *([rng.uniform(50, 400)] * 2), rng.uniform(-math.pi, math.pi)])
        m = crop.roi_to_image(roi, (256, 256))
        points = rng.uniform(-50, 300, (20, 2))
        np.testing.assert_allclose(crop.apply(crop.invert(m), crop.apply(m, points)), points, atol=1e-9)


def test_crop_pixels_follow_the_rotated_roi_and_uncrop_returns_them():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    # a 64-pixel ROI centred on (200, 150) with a 64 input: one image pixel per input pixel, exactly
    roi = np.array([200, 150, 64, 64, 0.0])
    out = crop.crop(image, crop.roi_to_image(roi, (64, 64)), (64, 64), "zero")
    np.testing.assert_array_equal(out, image[118:182, 168:232])
    turned = crop.crop(image, crop.roi_to_image(np.array([200, 150, 64, 64, math.pi / 2]), (64, 64)), (64, 64), "zero")
    v, u = np.mgrid[0:64, 0:64]
    # corner-based like MediaPipe: crop (u, v) samples image (x, y) = (232 - v, 118 + u); image right is crop top
    np.testing.assert_array_equal(turned, image[118 + u, 232 - v])
    # outside the image: zero border (the detector's letterbox) or replicated edge (the landmark crop)
    corner = crop.roi_to_image(np.array([0, 0, 64, 64, 0.0]), (64, 64))
    assert (crop.crop(image, corner, (64, 64), "zero")[:30, :30] == 0).all()
    np.testing.assert_array_equal(crop.crop(image, corner, (64, 64), "replicate")[:30, :30],
                                  np.broadcast_to(image[0, 0], (30, 30, 3)))
    values = rng.random((64, 64)).astype(np.float32)
    back = crop.uncrop(values, crop.roi_to_image(roi, (64, 64)), (300, 400))
    np.testing.assert_allclose(back[118:182, 168:232], values, atol=1e-6)
    assert back[:100].max() == 0.0
    np.testing.assert_allclose(crop.to_range(np.array([0, 255], np.uint8), (-1.0, 1.0)), [-1.0, 1.0])


# ----------------------------------------------------------------------------------------------------- landmarks

def test_landmark_decoding_refinement_and_projection():
    raw = np.zeros((39, 5), np.float32)
    raw[0] = [128, 64, 25.6, 0.0, 100.0]
    decoded = decode_landmarks(raw.reshape(-1), 39, 256)
    np.testing.assert_allclose(decoded[0], [0.5, 0.25, 0.1, 0.5, 1.0], atol=1e-6)

    heatmap = np.full((64, 64, 2), -30.0, np.float32)
    heatmap[20, 10, 0], heatmap[20, 11, 0] = math.log(0.8 / 0.2), math.log(0.6 / 0.4)
    heatmap[40, 40, 1] = math.log(0.4 / 0.6)  # below min_confidence: landmark 1 keeps its position
    points = np.zeros((2, 5), np.float32)
    points[0, :2] = [10.5 / 64, 20.5 / 64]
    points[1, :2] = [40.2 / 64, 40.2 / 64]
    refined = refine_with_heatmap(points, heatmap, 7, 0.5)
    np.testing.assert_allclose(refined[0, :2], [(10 * 0.8 + 11 * 0.6) / 1.4 / 64, 20 / 64], atol=1e-6)
    np.testing.assert_allclose(refined[1], points[1])
    outside = points.copy()
    outside[0, 0] = 1.2
    np.testing.assert_allclose(refine_with_heatmap(outside, heatmap, 7, 0.5)[0], outside[0])

    matrix = crop.roi_to_image(np.array([300, 200, 512, 512, math.pi / 2]), (256, 256))
    projected = project_landmarks(decoded[:1], matrix, 256)
    # crop (128, 64) is 64 input pixels above the centre; with the crop's top at image right: +128 image x
    np.testing.assert_allclose(projected[0, :3], [428, 200, 51.2], atol=1e-4)
    np.testing.assert_allclose(world_to_image_axes(np.array([[1.0, 0, 2]], np.float32), math.pi / 2), [[0, 1, 2]],
                               atol=1e-6)


def test_tracking_roi_and_association():
    roi = crop.expand_roi(crop.alignment_roi(np.array([300.0, 400.0]), np.array([300.0, 300.0])), 1.25)
    np.testing.assert_allclose(roi, [300, 400, 250, 250, 0], atol=1e-5)
    tracked = np.array([[100, 100, 50, 50, 0.0]], np.float32)
    detected = np.array([[105, 100, 50, 50, 0.2], [400, 400, 80, 80, 0.0]], np.float32)
    rois, scores = associate(tracked, np.array([0.7]), detected, np.array([0.9, 0.8]), 0.5)
    np.testing.assert_allclose(rois, detected)  # the overlapping detection replaces the tracked ROI
    np.testing.assert_allclose(scores, [0.9, 0.8])
    far = np.array([[300, 100, 50, 50, 0.0]], np.float32)
    rois, _ = associate(tracked, np.array([0.7]), far, np.array([0.9]), 0.5)
    np.testing.assert_allclose(rois, np.concatenate([tracked, far]))
    assert crop.roi_iou(tracked[0], detected[0]) == pytest.approx(45 * 50 / (2 * 2500 - 45 * 50))


def test_preset_registry_and_options():
    assert get_preset("mediapipe_pose_full") is MEDIAPIPE_POSE_FULL
    assert MEDIAPIPE_POSE_FULL.detector_input.value_range == (-1.0, 1.0)
    assert MEDIAPIPE_POSE_FULL.landmark_input.value_range == (0.0, 1.0)
    assert MEDIAPIPE_POSE_FULL.with_options(num_poses=4).num_poses == 4
    from segzoo.errors import ConfigError, ModelError
    with pytest.raises(ConfigError, match="unknown pose pipeline preset 'blazepose'"):
        get_preset("blazepose")
    with pytest.raises(ConfigError, match="num_poses must be >= 1"):
        MEDIAPIPE_POSE_FULL.with_options(num_poses=0)
    with pytest.raises(ConfigError, match="unknown option"):
        MEDIAPIPE_POSE_FULL.with_options(num_pose=2)
    with pytest.raises(ModelError, match="pose_detection.tflite"):
        MEDIAPIPE_POSE_FULL.paths("/nonexistent")


def test_preset_has_what_the_pipelines_registry_asks(mediapipe_dir):
    assert MEDIAPIPE_POSE_FULL.task == "pose_estimation"
    assert MEDIAPIPE_POSE_FULL.files == ("pose_detection.tflite", "pose_landmark_full.tflite")
    assert [p.name for p in MEDIAPIPE_POSE_FULL.paths(mediapipe_dir)] == list(MEDIAPIPE_POSE_FULL.files)
