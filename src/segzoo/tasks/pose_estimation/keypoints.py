"""Keypoint topologies: COCO's 17 keypoints and MediaPipe Pose's 33 body landmarks, and how one maps to the other.

MediaPipe's landmarks (``pose_landmark_cpu.pbtxt``): 0 nose, 1-3 left eye inner/centre/outer, 4-6 right eye,
7/8 ears, 9/10 mouth, 11/12 shoulders, 13/14 elbows, 15/16 wrists, 17-22 pinky/index/thumb, 23/24 hips,
25/26 knees, 27/28 ankles, 29/30 heels, 31/32 foot index (left first). COCO keypoint k is MediaPipe landmark
``COCO_FROM_MEDIAPIPE[k]``: the eye centres (2, 5) stand for COCO's eyes; the other 16 landmarks have no COCO
counterpart and are not evaluated.
"""

from __future__ import annotations

import numpy as np

COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")

COCO_FROM_MEDIAPIPE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)

COCO_SIGMAS = np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87,
                        0.89, 0.89]) / 10.0
"""Per-keypoint OKS constants of the COCO API (``cocoeval.py``)."""

COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8), (7, 9),
                 (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
"""COCO's skeleton, 0-based."""

MEDIAPIPE_CONNECTIONS = ((0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12), (11, 13),
                         (13, 15), (15, 17), (15, 19), (15, 21), (17, 19), (12, 14), (14, 16), (16, 18), (16, 20),
                         (16, 22), (18, 20), (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28),
                         (27, 29), (28, 30), (29, 31), (30, 32), (27, 31), (28, 32))
"""The 33-landmark skeleton MediaPipe draws."""

LEFT_SHOULDER, RIGHT_HIP = COCO_KEYPOINTS.index("left_shoulder"), COCO_KEYPOINTS.index("right_hip")


def to_coco(landmarks: np.ndarray) -> np.ndarray:
    """``[..., 33, C]`` MediaPipe landmarks to ``[..., 17, C]`` COCO keypoints."""
    return np.asarray(landmarks)[..., list(COCO_FROM_MEDIAPIPE), :]
