"""Detector outputs to detections, as MediaPipe's ``TensorsToDetectionsCalculator``,
``NonMaxSuppressionCalculator`` (WEIGHTED) and ``DetectionLetterboxRemovalCalculator`` do.

Detections are kept as arrays: ``scores [N]``, ``boxes [N, 4]`` (xmin, ymin, xmax, ymax) and
``keypoints [N, K, 2]`` (x, y), coordinates normalized to the detector input (then, after letterbox removal,
to the image).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DetectionDecoding:
    """Options of the decoding (defaults: MediaPipe's pose detector).

    ``box_format`` ``xywh`` is MediaPipe's ``reverse_output_order: true``: each row is
    ``x, y, w, h, kp0x, kp0y, ...`` in pixels of the input, relative to the anchor centre.
    """

    num_keypoints: int = 4
    x_scale: float = 224.0
    y_scale: float = 224.0
    w_scale: float = 224.0
    h_scale: float = 224.0
    box_format: str = "xywh"
    score_clipping: float = 100.0
    min_score: float = 0.5

    def to_dict(self) -> dict:
        """Plain dict (board configuration, reports)."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Detections:
    """Detections as arrays (see the module docstring)."""

    scores: np.ndarray
    boxes: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray | list[int] | slice) -> Detections:
        """The detections at ``index``."""
        return Detections(self.scores[index], self.boxes[index], self.keypoints[index])

    def to_array(self) -> np.ndarray:
        """float32 ``[N, 5 + 2K]``: score, box, keypoints (how a pipeline carries them)."""
        n = len(self)
        return np.concatenate([self.scores[:, None], self.boxes, self.keypoints.reshape(n, 2 * self.keypoints.shape[1])], axis=1).astype(
            np.float32)

    @staticmethod
    def from_array(array: np.ndarray) -> Detections:
        """Inverse of :meth:`to_array`."""
        array = np.asarray(array, dtype=np.float32)
        return Detections(array[:, 0], array[:, 1:5], array[:, 5:].reshape(len(array), -1, 2))

    @staticmethod
    def empty(num_keypoints: int) -> Detections:
        """No detection."""
        return Detections(np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                          np.zeros((0, num_keypoints, 2), np.float32))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in float32 without overflow warnings."""
    x = np.asarray(x, dtype=np.float32)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)


def detection_scores(raw_scores: np.ndarray, clipping: float) -> np.ndarray:
    """Score per anchor: the best class's sigmoid of the logit clipped to +-``clipping``."""
    raw = np.asarray(raw_scores, dtype=np.float32).reshape(raw_scores.shape[-2], -1)
    return sigmoid(np.clip(raw, -clipping, clipping)).max(axis=1)


def decode_boxes(raw_boxes: np.ndarray, anchors: np.ndarray, decoding: DetectionDecoding) -> tuple[np.ndarray,
                                                                                                  np.ndarray]:
    """``([N, 4]`` boxes, ``[N, K, 2]`` keypoints) decoded relative to the anchors (normalized coordinates)."""
    raw = np.asarray(raw_boxes, dtype=np.float32).reshape(len(anchors), -1)
    ax, ay, aw, ah = (anchors[:, i] for i in range(4))
    if decoding.box_format == "xywh":
        x, y, w, h = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
        kx, ky = raw[:, 4 : 4 + 2 * decoding.num_keypoints : 2], raw[:, 5 : 5 + 2 * decoding.num_keypoints : 2]
    elif decoding.box_format == "yxhw":
        y, x, h, w = raw[:, 0], raw[:, 1], raw[:, 2], raw[:, 3]
        ky, kx = raw[:, 4 : 4 + 2 * decoding.num_keypoints : 2], raw[:, 5 : 5 + 2 * decoding.num_keypoints : 2]
    else:
        raise ValueError(f"unknown box format {decoding.box_format!r}; expected xywh or yxhw")
    xc = x / np.float32(decoding.x_scale) * aw + ax
    yc = y / np.float32(decoding.y_scale) * ah + ay
    hh = h / np.float32(decoding.h_scale) * ah
    ww = w / np.float32(decoding.w_scale) * aw
    boxes = np.stack([xc - ww / 2, yc - hh / 2, xc + ww / 2, yc + hh / 2], axis=1)
    keypoints = np.stack([kx / np.float32(decoding.x_scale) * aw[:, None] + ax[:, None],
                          ky / np.float32(decoding.y_scale) * ah[:, None] + ay[:, None]], axis=2)
    return boxes.astype(np.float32), keypoints.astype(np.float32)


def decode_detections(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                      decoding: DetectionDecoding) -> Detections:
    """Detections with score >= ``min_score`` and a box of non-negative size, in anchor order."""
    scores = detection_scores(raw_scores, decoding.score_clipping)
    boxes, keypoints = decode_boxes(raw_boxes, anchors, decoding)
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (scores >= decoding.min_score) & (width >= 0) & (height >= 0) & ~np.isnan(width) & ~np.isnan(height)
    return Detections(scores[keep], boxes[keep], keypoints[keep])


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``(xmin, ymin, xmax, ymax)`` box with each of ``boxes``; 0 when the
    union is empty."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.where((iw >= 0) & (ih >= 0), iw * ih, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter, dtype=np.float64), where=union > 0)


def weighted_nms(detections: Detections, iou_threshold: float) -> Detections:
    """MediaPipe's WEIGHTED non-maximum suppression.

    Repeatedly take the best remaining detection; every remaining detection whose IoU with it exceeds the
    threshold (itself included) is merged into it: box corners and keypoints become the score-weighted means
    of the group, the score stays the best one's. The output is in decreasing score order.
    """
    if len(detections) == 0:
        return detections
    order = np.argsort(-detections.scores, kind="stable")
    remaining = list(order)
    scores, boxes, keypoints = [], [], []
    while remaining:
        top = remaining[0]
        rest = np.asarray(remaining)
        overlaps = box_iou(detections.boxes[top], detections.boxes[rest]) > iou_threshold
        group = rest[overlaps]
        if len(group) == 0:  # a degenerate box overlaps nothing, not even itself: kept as it is, and the end
            scores.append(detections.scores[top])
            boxes.append(detections.boxes[top])
            keypoints.append(detections.keypoints[top])
            break
        weights = detections.scores[group].astype(np.float32)
        total = weights.sum()
        scores.append(detections.scores[top])
        boxes.append((detections.boxes[group] * weights[:, None]).sum(axis=0) / total)
        keypoints.append((detections.keypoints[group] * weights[:, None, None]).sum(axis=0) / total)
        remaining = list(rest[~overlaps])
    return Detections(np.asarray(scores, np.float32), np.asarray(boxes, np.float32),
                      np.asarray(keypoints, np.float32))


def remove_letterbox(detections: Detections, padding: np.ndarray) -> Detections:
    """Coordinates on the letterboxed input to coordinates on the image; ``padding`` is
    ``(left, top, right, bottom)`` as fractions of the input."""
    left, top, right, bottom = (float(p) for p in padding)
    sx, sy = 1.0 - left - right, 1.0 - top - bottom
    boxes = detections.boxes.copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - left) / sx
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - top) / sy
    keypoints = detections.keypoints.copy()
    keypoints[..., 0] = (keypoints[..., 0] - left) / sx
    keypoints[..., 1] = (keypoints[..., 1] - top) / sy
    return Detections(detections.scores, boxes.astype(np.float32), keypoints.astype(np.float32))
