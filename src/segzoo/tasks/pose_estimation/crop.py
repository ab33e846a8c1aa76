"""Rotated regions of interest and the affine crops between an image and a model input.

A ROI is ``(x_center, y_center, width, height, rotation)`` in image pixels (rotation in radians,
clockwise on screen since y points down), as MediaPipe's ``NormalizedRect`` scaled by the image size.

- :func:`alignment_roi` is ``AlignmentPointsRectsCalculator``: centre on the start keypoint, size twice the
  distance to the end keypoint, rotation ``target - atan2(-(y1 - y0), x1 - x0)`` wrapped to [-pi, pi).
- :func:`expand_roi` is ``RectTransformationCalculator`` without shifts: square on the long side, scaled.
- :func:`roi_to_image` is the affine map of ``ImageToTensorCalculator``: model-input pixel ``(u, v)`` in
  ``[0, size]`` to image pixel, the ROI's corners going to the input's corners; :func:`crop` warps the image
  through it (bilinear, as OpenCV does in MediaPipe's CPU path) and :func:`uncrop` warps a model output back
  onto the image (``WarpAffineCalculator`` with the inverse matrix, zero border).
- :func:`letterbox_roi` is ``PadRoi``: the whole image padded to the input's aspect ratio, and the padding
  as fractions ``(left, top, right, bottom)`` for ``DetectionLetterboxRemovalCalculator``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from segzoo.tasks.pose_estimation.decode import box_iou

BORDERS = {"zero": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}


def normalize_radians(angle: float) -> float:
    """Wrap an angle to [-pi, pi)."""
    return angle - 2 * math.pi * math.floor((angle + math.pi) / (2 * math.pi))


def alignment_roi(start: np.ndarray, end: np.ndarray, target_angle: float = math.pi / 2) -> np.ndarray:
    """ROI ``[5]`` from two keypoints in image pixels: centre ``start``, side ``2 * |end - start|``."""
    x0, y0 = float(start[0]), float(start[1])
    x1, y1 = float(end[0]), float(end[1])
    size = 2.0 * math.hypot(x1 - x0, y1 - y0)
    rotation = normalize_radians(target_angle - math.atan2(-(y1 - y0), x1 - x0))
    return np.array([x0, y0, size, size, rotation], dtype=np.float32)


def expand_roi(roi: np.ndarray, scale: float, square_long: bool = True) -> np.ndarray:
    """ROI made square on its long side (when asked) and scaled about its centre."""
    cx, cy, w, h, rotation = (float(v) for v in roi)
    if square_long:
        w = h = max(w, h)
    return np.array([cx, cy, w * scale, h * scale, rotation], dtype=np.float32)


def letterbox_roi(image_hw: tuple[int, int], input_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(ROI of the whole image padded to the input's aspect ratio, padding ``(left, top, right, bottom)``)."""
    height, width = image_hw
    tensor_ratio = input_hw[0] / input_hw[1]
    roi_ratio = height / width
    if tensor_ratio > roi_ratio:
        new_w, new_h = float(width), width * tensor_ratio
        vertical, horizontal = (1.0 - roi_ratio / tensor_ratio) / 2.0, 0.0
    else:
        new_w, new_h = height / tensor_ratio, float(height)
        vertical, horizontal = 0.0, (1.0 - tensor_ratio / roi_ratio) / 2.0
    roi = np.array([0.5 * width, 0.5 * height, new_w, new_h, 0.0], dtype=np.float32)
    return roi, np.array([horizontal, vertical, horizontal, vertical], dtype=np.float32)


def roi_to_image(roi: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    """float64 ``[2, 3]`` affine map from model-input pixels to image pixels for ``roi``."""
    cx, cy, w, h, rotation = (float(v) for v in roi)
    c, s = math.cos(rotation), math.sin(rotation)
    sx, sy = w / input_hw[1], h / input_hw[0]
    return np.array([[c * sx, -s * sy, cx - 0.5 * w * c + 0.5 * h * s],
                     [s * sx, c * sy, cy - 0.5 * w * s - 0.5 * h * c]], dtype=np.float64)


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``[2, 3]`` affine map."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Affine map applied to ``[..., 2]`` points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def crop(image: np.ndarray, matrix: np.ndarray, input_hw: tuple[int, int], border: str) -> np.ndarray:
    """The model-input-sized crop of ``image`` (uint8, bilinear) through the input -> image map ``matrix``."""
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}; expected one of {sorted(BORDERS)}")
    return cv2.warpAffine(image, np.asarray(matrix, np.float64), (input_hw[1], input_hw[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=BORDERS[border], borderValue=0)


def uncrop(values: np.ndarray, matrix: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """A model-input-sized map (e.g. a mask) warped back onto the image (bilinear, 0 outside the ROI)."""
    return cv2.warpAffine(np.asarray(values, np.float32), invert(matrix), (image_hw[1], image_hw[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def to_range(pixels: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """uint8 pixels to float32 values in ``value_range`` (0 -> low, 255 -> high)."""
    low, high = value_range
    return pixels.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)


def roi_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the axis-aligned boxes of two ROIs, rotation ignored (MediaPipe's rect association)."""
    boxes = np.array([[r[0] - r[2] / 2, r[1] - r[3] / 2, r[0] + r[2] / 2, r[1] + r[3] / 2] for r in (a, b)],
                     dtype=np.float64)
    return float(box_iou(boxes[0], boxes[1:])[0])
