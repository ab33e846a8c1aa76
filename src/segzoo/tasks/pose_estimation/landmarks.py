"""Landmark-model tensors to landmarks in image pixels, as MediaPipe's ``TensorsToLandmarksCalculator``,
``RefineLandmarksFromHeatmapCalculator`` and ``LandmarkProjectionCalculator`` do.

Landmarks are float32 ``[L, 5]``: x, y (pixels), z (same scale as x), visibility, presence (both
probabilities: MediaPipe applies a sigmoid to the model's raw values).
"""

from __future__ import annotations

import numpy as np

from segzoo.tasks.pose_estimation.crop import apply
from segzoo.tasks.pose_estimation.decode import sigmoid


def decode_landmarks(raw: np.ndarray, num_landmarks: int, input_size: int) -> np.ndarray:
    """``[L, 5]`` landmarks with x, y, z normalized by the model input size and sigmoid visibility/presence."""
    values = np.asarray(raw, dtype=np.float32).reshape(num_landmarks, -1)
    if values.shape[1] < 5:
        raise ValueError(f"expected 5 values per landmark, got {values.shape[1]}")
    out = np.empty((num_landmarks, 5), dtype=np.float32)
    out[:, :3] = values[:, :3] / np.float32(input_size)
    out[:, 3] = sigmoid(values[:, 3])
    out[:, 4] = sigmoid(values[:, 4])
    return out


def refine_with_heatmap(landmarks: np.ndarray, heatmap: np.ndarray, kernel_size: int,
                        min_confidence: float) -> np.ndarray:
    """x, y replaced by the sigmoid-weighted mean position of the ``kernel_size`` window of each landmark's
    heatmap channel around it, when the window's largest confidence reaches ``min_confidence``.

    Landmarks outside the heatmap keep their position; windows are cut at the heatmap's edges.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim == 4:
        heatmap = heatmap[0]
    hm_h, hm_w, channels = heatmap.shape
    if channels != len(landmarks):
        raise ValueError(f"heatmap has {channels} channels for {len(landmarks)} landmarks")
    out = landmarks.copy()
    offset = (kernel_size - 1) // 2
    for k in range(len(landmarks)):
        col = int(np.float32(landmarks[k, 0]) * np.float32(hm_w))  # truncation toward zero, as C++ int()
        row = int(np.float32(landmarks[k, 1]) * np.float32(hm_h))
        if col < 0 or col >= hm_w or row < 0 or row >= hm_h:
            continue
        r0, r1 = max(0, row - offset), min(hm_h, row + offset + 1)
        c0, c1 = max(0, col - offset), min(hm_w, col + offset + 1)
        confidence = sigmoid(heatmap[r0:r1, c0:c1, k])
        total = float(confidence.sum(dtype=np.float32))
        if float(confidence.max()) >= min_confidence and total > 0:
            rows, cols = np.mgrid[r0:r1, c0:c1]
            out[k, 0] = float((cols * confidence).sum(dtype=np.float32)) / hm_w / total
            out[k, 1] = float((rows * confidence).sum(dtype=np.float32)) / hm_h / total
    return out


def project_landmarks(landmarks: np.ndarray, matrix: np.ndarray, input_size: int) -> np.ndarray:
    """Normalized crop landmarks to image pixels through the crop's input -> image map; z scaled like x."""
    out = landmarks.copy()
    out[:, :2] = apply(matrix, landmarks[:, :2] * np.float32(input_size)).astype(np.float32)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))  # image pixels per input pixel
    out[:, 2] = landmarks[:, 2] * np.float32(input_size * scale)
    return out
