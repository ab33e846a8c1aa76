"""Simulated clicks for interactive-segmentation evaluation.

- first click: the interior point of the instance farthest from its boundary (Euclidean distance transform; the
  image border counts as boundary), positive;
- further clicks: the largest error region (8-connected component of the false negatives ``gt & ~pred`` or of the
  false positives ``~gt & pred``, by pixel count; a false-negative region wins a tie) gets a click at its own
  farthest-from-boundary point: positive for a false negative, negative for a false positive.

Ties between equally distant pixels go to the first one in row-major order, so clicks are deterministic.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import distance_transform_edt

from segzoo.tasks.promptable_segmentation.prompts import PointPrompt


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """``(x, y)`` of the pixel of a non-empty boolean mask farthest from its boundary.

    The exact Euclidean transform (SciPy's, in float64: OpenCV's precise transform is multi-threaded and can break
    near-ties differently from run to run) runs on the mask's bounding box with a one-pixel background ring: the
    nearest background pixel of any mask pixel is never farther than that ring, so the distances are those of the
    whole image (with the image border as boundary)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, left = int(rows[0]), int(cols[0])
    crop = np.pad(mask[top:rows[-1] + 1, left:cols[-1] + 1], 1)
    distance = distance_transform_edt(crop)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(x) + left, int(y) + top


def first_click(gt: np.ndarray) -> PointPrompt:
    """The positive click of the one-click protocol."""
    x, y = interior_point(gt)
    return PointPrompt(float(x), float(y), 1)


def _largest_region(mask: np.ndarray) -> tuple[int, np.ndarray | None]:
    """Pixel count and boolean mask of the largest 8-connected component (0, None if the mask is empty)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return 0, None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return int(stats[best, cv2.CC_STAT_AREA]), labels == best


def next_click(gt: np.ndarray, pred: np.ndarray) -> PointPrompt | None:
    """The corrective click for a prediction, or None when the prediction is exact."""
    fn_area, fn_region = _largest_region(gt & ~pred)
    fp_area, fp_region = _largest_region(~gt & pred)
    if fn_region is None and fp_region is None:
        return None
    positive = fn_area >= fp_area
    x, y = interior_point(fn_region if positive else fp_region)
    return PointPrompt(float(x), float(y), 1 if positive else 0)
