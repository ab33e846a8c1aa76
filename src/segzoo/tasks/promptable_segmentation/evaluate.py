"""Click-based mIoU on instance masks for any promptable predictor.

A predictor is ``predictor(image, coords, labels) -> logits``: ``image`` RGB uint8 ``[H, W, 3]`` (the same array
object for every call on one image, so a predictor may cache its image embedding), ``coords`` float32 ``[K, 2]``
image-pixel ``(x, y)``, ``labels`` int32 ``[K]`` (1 positive, 0 negative), ``logits`` float ``[H, W]``; a pixel is
predicted as the object when its logit is above ``threshold`` (0: SAM's ``mask_threshold``).

Protocol (``num_clicks = 1`` is one-click mIoU; 3 is the 3-click protocol): instances whose mask has fewer than
``min_area`` pixels (default 1024, 32x32) are skipped and counted. For every other instance: the first click is
the interior point farthest from the boundary (:func:`~.clicks.first_click`); after each prediction, the next
click goes to the centre of the largest error region (:func:`~.clicks.next_click`) and the predictor is called
again with all clicks so far. The IoU of each instance is recorded after every click (an exact prediction stops
the clicks and keeps its IoU). ``miou_at[k]`` is the mean over instances of the IoU after ``k + 1`` clicks.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from segzoo.errors import ConfigError, ModelError
from segzoo.tasks.promptable_segmentation.clicks import first_click, next_click
from segzoo.tasks.promptable_segmentation.dataset import InstanceSample, iter_instances
from segzoo.tasks.promptable_segmentation.prompts import PointPrompt, as_arrays

log = logging.getLogger(__name__)

Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
MIN_AREA = 1024


@dataclass
class InstanceResult:
    """One evaluated instance: where it comes from, its clicks and the IoU after each click."""

    image: str
    line: int
    class_id: int
    area: int
    clicks: list[PointPrompt] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.count_nonzero(pred | gt)
    return float(np.count_nonzero(pred & gt) / union) if union else 1.0


def _predict(predictor: Predictor, image: np.ndarray, clicks: list[PointPrompt], threshold: float) -> np.ndarray:
    coords, labels = as_arrays(clicks)
    logits = np.asarray(predictor(image, coords, labels))
    if logits.shape != image.shape[:2]:
        raise ModelError(f"the predictor returned logits of shape {list(logits.shape)} for a "
                         f"{image.shape[1]}x{image.shape[0]} image; it must return [H, W] at image size")
    return logits > threshold


def evaluate_instance(predictor: Predictor, image: np.ndarray, gt: np.ndarray, result: InstanceResult,
                      num_clicks: int, threshold: float) -> InstanceResult:
    """Run the click protocol on one instance, filling ``result.clicks`` and ``result.ious``."""
    click: PointPrompt | None = first_click(gt)
    while click is not None and len(result.clicks) < num_clicks:
        result.clicks.append(click)
        pred = _predict(predictor, image, result.clicks, threshold)
        result.ious.append(iou(pred, gt))
        click = next_click(gt, pred) if len(result.clicks) < num_clicks else None
    result.ious += [result.ious[-1]] * (num_clicks - len(result.ious))
    return result


def _check(num_clicks: int, min_area: int) -> None:
    if not isinstance(num_clicks, int) or num_clicks < 1:
        raise ConfigError(f"num_clicks must be a positive integer, got {num_clicks!r}")
    if not isinstance(min_area, int) or min_area < 1:
        raise ConfigError(f"min_area must be a positive integer (pixels), got {min_area!r}")


def evaluate_clicks(samples: Iterable[InstanceSample], predictor: Predictor, *, num_clicks: int = 1,
                    min_area: int = MIN_AREA, threshold: float = 0.0, max_images: int | None = None) -> dict:
    """Click-based mIoU over the instances of ``samples`` (see the module docstring); the result dict of
    :func:`summarize`."""
    _check(num_clicks, min_area)
    samples = list(samples)[:max_images] if max_images else list(samples)
    results: list[InstanceResult] = []
    skipped = 0
    start = time.perf_counter()
    for sample, image, masks in iter_instances(samples):
        for polygon, gt in zip(sample.polygons, masks, strict=True):
            area = int(np.count_nonzero(gt))
            if area < min_area:
                skipped += 1
                continue
            result = InstanceResult(sample.image_path.name, polygon.line, polygon.class_id, area)
            results.append(evaluate_instance(predictor, image, gt, result, num_clicks, threshold))
    seconds = time.perf_counter() - start
    summary = summarize(results, num_clicks=num_clicks, min_area=min_area, threshold=threshold,
                        num_images=len(samples), skipped_small=skipped, seconds=seconds)
    log.info("%d instances (%d smaller than %d px skipped) on %d images: mIoU %s", len(results), skipped,
             min_area, len(samples), ", ".join(f"{k + 1} click(s) {100 * v:.2f}%" for k, v in
                                               enumerate(summary["miou_at"]) if v is not None))
    return summary


def summarize(results: list[InstanceResult], *, num_clicks: int, min_area: int, threshold: float, num_images: int,
              skipped_small: int, seconds: float) -> dict:
    """The evaluation as plain data: mIoU after each click, per class, and every instance."""
    ious = np.array([r.ious for r in results], dtype=np.float64).reshape(len(results), num_clicks)
    miou_at = [float(v) for v in ious.mean(axis=0)] if results else [None] * num_clicks
    by_class: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(results):
        by_class[r.class_id].append(i)
    return {
        "num_clicks": num_clicks,
        "miou": miou_at[-1],
        "one_click_miou": miou_at[0],
        "miou_at": miou_at,
        "num_images": num_images,
        "num_instances": len(results),
        "skipped_small": skipped_small,
        "min_area": min_area,
        "threshold": threshold,
        "per_class": {str(c): {"instances": len(idx), "miou_at": [float(v) for v in ious[idx].mean(axis=0)]}
                      for c, idx in sorted(by_class.items())},
        "instances": [{"image": r.image, "line": r.line, "class_id": r.class_id, "area": r.area,
                       "clicks": [[c.x, c.y, c.label] for c in r.clicks], "ious": r.ious} for r in results],
        "seconds": seconds,
    }
