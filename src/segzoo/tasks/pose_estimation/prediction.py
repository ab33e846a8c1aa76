"""Pose prediction files: a skeleton overlay PNG and a keypoint JSON per image."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segzoo.data.loader import read_image
from segzoo.errors import DataError
from segzoo.io import write_json, write_with
from segzoo.prediction import check_stems
from segzoo.tasks.pose_estimation.keypoints import COCO_KEYPOINTS, MEDIAPIPE_CONNECTIONS, to_coco
from segzoo.tasks.pose_estimation.pipeline import PoseResult

log = logging.getLogger(__name__)

POSE_COLORS = ((255, 64, 64), (64, 160, 255), (64, 220, 64), (255, 200, 0), (200, 64, 255), (0, 220, 220))
MASK_COLOR = np.array([255, 0, 255], dtype=np.float32)


def draw_skeleton(canvas: np.ndarray, points: np.ndarray, connections: Sequence[tuple[int, int]],
                  color: tuple[int, int, int], shown: np.ndarray | None = None, radius: int = 3) -> np.ndarray:
    """Draw ``[K, 2]`` points and their connections on an RGB uint8 image (in place); ``shown`` hides points."""
    shown = np.ones(len(points), dtype=bool) if shown is None else shown
    thickness = max(1, round(min(canvas.shape[:2]) / 300))
    pts = [tuple(int(round(v)) for v in p) for p in points[:, :2]]
    for a, b in connections:
        if shown[a] and shown[b]:
            cv2.line(canvas, pts[a], pts[b], color, thickness, cv2.LINE_AA)
    for k in np.flatnonzero(shown):
        cv2.circle(canvas, pts[k], radius + thickness, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(canvas, pts[k], radius, color, -1, cv2.LINE_AA)
    return canvas


def render_poses(image: np.ndarray, result: PoseResult, *, min_visibility: float = 0.5,
                 mask_alpha: float = 0.4) -> np.ndarray:
    """The image with the person mask tinted and each pose's 33-landmark skeleton (visible landmarks only)."""
    canvas = image.astype(np.float32)
    if len(result) and mask_alpha > 0:
        weight = (np.clip(result.masks.max(axis=0), 0.0, 1.0) * mask_alpha)[..., None]
        canvas = canvas * (1.0 - weight) + MASK_COLOR * weight
    canvas = np.ascontiguousarray(np.rint(canvas).astype(np.uint8))
    for i, landmarks in enumerate(result.landmarks):
        draw_skeleton(canvas, landmarks, MEDIAPIPE_CONNECTIONS, POSE_COLORS[i % len(POSE_COLORS)],
                      landmarks[:, 3] >= min_visibility)
    return canvas


def pose_json(result: PoseResult, image_path: Path, image_hw: tuple[int, int]) -> dict:
    """The poses of one image: 33 landmarks, COCO's 17 keypoints, scores, ROI and mask area (pixels)."""
    poses = []
    for i in range(len(result)):
        landmarks = result.landmarks[i]
        coco = to_coco(landmarks)
        poses.append({
            "score": round(float(result.scores[i]), 4), "presence": round(float(result.presence[i]), 4),
            "roi": dict(zip(("x_center", "y_center", "width", "height", "rotation"),
                            (round(float(v), 4) for v in result.rois[i]))),
            "landmarks": [dict(zip(("x", "y", "z", "visibility", "presence"), (round(float(v), 3) for v in lm)))
                          for lm in landmarks],
            "coco_keypoints": {name: [round(float(k[0]), 2), round(float(k[1]), 2), round(float(k[3]), 3)]
                               for name, k in zip(COCO_KEYPOINTS, coco)},
            "world_landmarks": np.round(result.world_landmarks[i], 4).tolist(),
            "mask_pixels": int((result.masks[i] > 0.5).sum()),
        })
    return {"image": str(image_path), "height": image_hw[0], "width": image_hw[1], "num_poses": len(poses),
            "poses": poses, "timings_ms": {k: round(v, 3) for k, v in result.timings.items()}}


def predict_poses(estimate: Callable[[np.ndarray], PoseResult], image_paths: Sequence[Path], out_dir: Path, *,
                  min_visibility: float = 0.5, mask_alpha: float = 0.4, skipped: list[dict] | None = None) -> list[dict]:
    """Write ``<stem>_pose.png`` (overlay) and ``<stem>_pose.json`` for each image; one summary row each.

    As for segmentation (``segzoo.prediction``), an unreadable image is logged, appended to ``skipped`` and passed
    over; a DataError only when no image can be read.
    """
    out_dir = Path(out_dir)
    check_stems(list(image_paths))
    unreadable: list[dict] = []
    rows = []
    for path in map(Path, image_paths):
        start = time.perf_counter()
        try:
            image = read_image(path)
        except DataError as exc:
            log.warning("Skipped %s: %s", path, exc)
            unreadable.append({"item": str(path), "reason": str(exc)})
            continue
        result = estimate(image)
        overlay = Image.fromarray(render_poses(image, result, min_visibility=min_visibility, mask_alpha=mask_alpha))
        overlay_path = write_with(out_dir / f"{path.stem}_pose.png", lambda tmp: overlay.save(tmp, format="PNG"),
                                  checksum=False)
        json_path = write_json(out_dir / f"{path.stem}_pose.json", pose_json(result, path, image.shape[:2]),
                               checksum=False)
        rows.append({"image": path, "overlay": overlay_path, "json": json_path, "poses": len(result),
                     "seconds": time.perf_counter() - start})
    if skipped is not None:
        skipped.extend(unreadable)
    if unreadable and not rows:
        raise DataError(f"none of the {len(image_paths)} images can be read; first: {unreadable[0]['reason']}")
    log.info("Predicted poses on %d images into %s", len(rows), out_dir)
    return rows
