"""Prediction from point prompts: for each image a mask, an overlay with the clicks drawn, and per-stage timings.

The images are those of ``prediction.test_files_path``. Each gets the points of its entry in
``prediction.prompts_path`` (a JSON file: image file name -> ``[{"x", "y", "label"}]``), else the points of
``prediction.points``; an image with neither is skipped. An entry of the JSON file naming no image of the folder,
or a point outside its image, is a DataError naming the file and the entry.

Outputs in ``<run>/predictions/``: ``<stem>_mask.png`` (0 background, 255 object), ``<stem>_overlay.png`` (the
mask in colour over the image, its outline, positive clicks green and negative clicks red) and
``predictions.json`` (per image: the points, the mask area, the decoder's predicted IoU, encoder and decoder ms).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from segzoo.errors import DataError
from segzoo.io import write_json, write_with
from segzoo.tasks.promptable_segmentation.prompts import PointPrompt, as_arrays, check_in_image, load_prompts

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.config.schema import Config
    from segzoo.tasks.promptable_segmentation.timing import StageTimes

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MASK_COLOUR = (30, 144, 255)
CLICK_COLOURS = {1: (0, 220, 0), 0: (230, 0, 0)}


@dataclass(frozen=True)
class PromptedImage:
    """One image to segment and its clicks (``source`` says where they come from)."""

    path: Path
    points: list[PointPrompt]
    source: str


def config_points(cfg: Config) -> list[PointPrompt]:
    """``prediction.points`` as prompts (validated with the config)."""
    return [PointPrompt(float(p.x), float(p.y), int(p.label)) for p in cfg.prediction.points]


def prompted_images(cfg: Config) -> list[PromptedImage]:
    """The images of ``prediction.test_files_path`` with their clicks (see the module docstring)."""
    pred = cfg.prediction
    folder = Path(pred.test_files_path)
    images = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"prediction.test_files_path: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    from_file = load_prompts(pred.prompts_path) if pred.prompts_path else {}
    unknown = [name for name in from_file if name not in images]
    if unknown:
        raise DataError(f"{pred.prompts_path}: image '{unknown[0]}' (entry {list(from_file).index(unknown[0])}) is "
                        f"not an image of prediction.test_files_path {folder}; the keys are image file names, "
                        f"e.g. '{next(iter(images))}'")
    fallback = config_points(cfg)
    chosen = []
    for name, path in images.items():
        if name in from_file:
            chosen.append(PromptedImage(path, from_file[name], f"{pred.prompts_path}: image '{name}'"))
        elif fallback:
            chosen.append(PromptedImage(path, fallback, "prediction.points"))
    if not chosen:
        raise DataError(f"prediction: no image of {folder} has prompts: name them in prediction.prompts_path or "
                        f"give prediction.points for every image")
    skipped = len(images) - len(chosen)
    if skipped:
        log.info("%d image(s) of %s have no prompts and are skipped", skipped, folder)
    return chosen[: pred.max_images or None]


def render_overlay(image: np.ndarray, mask: np.ndarray, points: list[PointPrompt], alpha: float) -> np.ndarray:
    """RGB overlay: the mask blended in colour, its outline, and the clicks as filled circles."""
    colour = np.array(MASK_COLOUR, np.float32)
    blended = np.where(mask[..., None], image * (1 - alpha) + colour * alpha, image)
    overlay = np.ascontiguousarray(np.rint(blended).astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(overlay, contours, -1, (255, 255, 255), 1)
    radius = max(3, round(min(image.shape[:2]) / 80))
    for p in points:
        centre = (int(round(p.x)), int(round(p.y)))
        cv2.circle(overlay, centre, radius + 1, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(overlay, centre, radius, CLICK_COLOURS[p.label], -1, cv2.LINE_AA)
    return overlay


def _write_png(path: Path, array: np.ndarray) -> None:
    bgr = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if array.ndim == 3 else array
    write_with(path, lambda tmp: cv2.imwrite(str(tmp), bgr))


def predict_images(predictor: Callable, times: StageTimes, last_iou: Callable[[], float | None],
                   items: list[PromptedImage], out_dir: Path, *, threshold: float, alpha: float) -> list[dict]:
    """Segment every prompted image; write its mask and overlay; one row per image (see the module docstring)."""
    from segzoo.data.loader import read_image

    rows = []
    for item in items:
        image = read_image(item.path)
        check_in_image(item.points, image.shape[:2], item.source)
        coords, labels = as_arrays(item.points)
        mask = np.asarray(predictor(image, coords, labels)) > threshold
        _write_png(out_dir / f"{item.path.stem}_mask.png", mask.astype(np.uint8) * 255)
        _write_png(out_dir / f"{item.path.stem}_overlay.png", render_overlay(image, mask, item.points, alpha))
        row = {"image": item.path.name, "points": [[p.x, p.y, p.label] for p in item.points],
               "mask_pixels": int(mask.sum()), "mask_fraction": float(mask.mean()), "predicted_iou": last_iou(),
               "encoder_ms": times.last("encoder"), "decoder_ms": times.last("decoder")}
        log.info("%s: %d click(s), mask %.1f%% of the image, predicted IoU %s, encoder %.1f ms, decoder %.1f ms",
                 item.path.name, len(item.points), 100 * row["mask_fraction"],
                 "n/a" if row["predicted_iou"] is None else f"{row['predicted_iou']:.2f}", row["encoder_ms"],
                 row["decoder_ms"])
        rows.append(row)
    write_json(out_dir / "predictions.json", {"images": rows, "timings": times.summary()})
    return rows
