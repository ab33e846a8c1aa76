"""Predict label maps for images: a palette mask PNG at the original size and an overlay with a legend.

An image that cannot be read does not stop a folder: the others are segmented, and the unreadable ones are listed
in ``prediction_report.json``/``.md`` and the log (the run then exits with code 6). Images are segmented in their
stored orientation (EXIF orientation is not applied, see ``segzoo.data.loader``). Per-image outputs carry no
sha256 sidecar (they are results, not inputs segzoo reads back).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from segzoo.data.loader import exif_orientation, read_image
from segzoo.errors import DataError, ModelError
from segzoo.io import write_json, write_text, write_with
from segzoo.palette import flat_palette, voc_palette
from segzoo.preprocess import Preprocessing, to_model_input
from segzoo.runners import Runner, check_output_classes, to_labels

log = logging.getLogger(__name__)

VOID = 255
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def predict_labels(runner: Runner, image: np.ndarray, pp: Preprocessing, num_classes: int) -> np.ndarray:
    """uint8 label map at the size of ``image`` (RGB uint8); pixels outside an aspect-ratio crop are 255."""
    x, placement = to_model_input(image, runner.input_hw, pp)
    output = runner.predict(x[None])[0]
    check_output_classes(runner, output, num_classes)
    labels = to_labels(output, runner.output_kind, placement)
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ModelError(f"model predicts class {low if low < 0 else high} but there are {num_classes} class names")
    full = np.full(image.shape[:2], VOID, dtype=np.uint8)
    y, x0, h, w = placement.crop
    full[y : y + h, x0 : x0 + w] = labels
    return full


def _text_size(text: str, scale: float, thickness: int) -> tuple[int, int]:
    (width, height), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    return width, height + baseline


def legend_panel(class_ids: list[int], class_names: list[str], height: int) -> np.ndarray:
    """White RGB panel with one colour swatch + name per class, at least ``height`` pixels high."""
    palette = voc_palette()
    scale, thickness, row, pad, swatch = 0.5, 1, 22, 8, 14
    names = [f"{i} {class_names[i]}" for i in class_ids]
    width = pad * 3 + swatch + max((_text_size(n, scale, thickness)[0] for n in names), default=0)
    panel = np.full((max(height, pad * 2 + row * len(names)), width, 3), 255, dtype=np.uint8)
    for k, (class_id, name) in enumerate(zip(class_ids, names)):
        top = pad + k * row
        colour = tuple(int(c) for c in palette[class_id])
        cv2.rectangle(panel, (pad, top + 2), (pad + swatch, top + 2 + swatch), colour, thickness=-1)
        cv2.rectangle(panel, (pad, top + 2), (pad + swatch, top + 2 + swatch), (0, 0, 0), thickness=1)
        cv2.putText(panel, name, (2 * pad + swatch, top + 14), _FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return panel


def render_overlay(image: np.ndarray, labels: np.ndarray, class_names: list[str], alpha: float = 0.5) -> np.ndarray:
    """RGB image blended with the class colours (void left as is) plus a legend of the classes present."""
    colours = voc_palette()[labels].astype(np.float32)
    blended = image.astype(np.float32) * (1.0 - alpha) + colours * alpha
    labelled = (labels != VOID)[..., None]
    overlay = np.where(labelled, np.rint(blended), image).astype(np.uint8)
    present = [int(c) for c in np.unique(labels) if c != VOID]
    panel = legend_panel(present, class_names, overlay.shape[0])
    if panel.shape[0] > overlay.shape[0]:
        fill = np.full((panel.shape[0] - overlay.shape[0], overlay.shape[1], 3), 255, dtype=np.uint8)
        overlay = np.concatenate([overlay, fill])
    return np.concatenate([overlay, panel], axis=1)


def _save_png(array: np.ndarray, path: Path, palette: bool = False) -> Path:
    """Save an RGB image, or a 2-D uint8 index array as a palette (mode P) PNG, atomically."""
    image = Image.fromarray(array)
    if palette:
        image.putpalette(flat_palette())  # turns the mode L image into mode P
    return write_with(path, lambda tmp: image.save(tmp, format="PNG"), checksum=False)


def check_stems(image_paths: list[Path]) -> None:
    """DataError when two inputs share a file stem (their outputs would overwrite each other)."""
    repeated = [stem for stem, n in Counter(Path(p).stem for p in image_paths).items() if n > 1]
    if repeated:
        raise DataError(f"several input images share the name stem {repeated[0]!r}: their outputs would overwrite "
                        "each other; rename them or predict them into separate folders")


def predict_images(runner: Runner, image_paths: list[Path], out_dir: Path, pp: Preprocessing, class_names: list[str],
                   *, alpha: float = 0.5, skipped: list[dict] | None = None) -> list[dict]:
    """Write ``<stem>_mask.png`` (palette PNG of class indices) and ``<stem>_overlay.png`` for each image.

    An unreadable image is logged, appended to ``skipped`` (``{"item", "reason"}``) and passed over; a DataError
    only when no image at all can be read. Model problems stop at once (ModelError).
    """
    out_dir = Path(out_dir)
    check_stems(image_paths)
    unreadable: list[dict] = []
    rows, rotated = [], 0
    for path in tqdm(image_paths, desc="Predicting", unit="img"):
        path = Path(path)
        start = time.perf_counter()
        try:
            image = read_image(path)
        except DataError as exc:
            log.warning("Skipped %s: %s", path, exc)
            unreadable.append({"item": str(path), "reason": str(exc)})
            continue
        rotated += exif_orientation(path) != 1
        labels = predict_labels(runner, image, pp, len(class_names))
        mask_path = _save_png(labels, out_dir / f"{path.stem}_mask.png", palette=True)
        overlay = render_overlay(image, labels, class_names, alpha)
        overlay_path = _save_png(overlay, out_dir / f"{path.stem}_overlay.png")
        rows.append({
            "image": path,
            "mask": mask_path,
            "overlay": overlay_path,
            "classes_present": [class_names[c] for c in np.unique(labels) if c != VOID],
            "seconds": time.perf_counter() - start,
        })
    if skipped is not None:
        skipped.extend(unreadable)
    if unreadable and not rows:
        raise DataError(f"none of the {len(image_paths)} images can be read; first: {unreadable[0]['reason']}")
    if rotated:
        log.warning("%d image(s) carry an EXIF orientation tag (shown rotated or mirrored by viewers): they are "
                    "segmented, and their outputs written, in their stored orientation", rotated)
    log.info("Predicted %d images into %s", len(rows), out_dir)
    return rows


def write_prediction_report(run_dir: Path, rows: list[dict], skipped: list[dict], model: Path) -> dict[str, Path]:
    """``prediction_report.json``/``.md``: every image with its outputs and classes, then the skipped ones."""
    report = {"model": str(model), "images": len(rows), "skipped": skipped,
              "predictions": [{k: (str(v) if isinstance(v, Path) else v) for k, v in row.items()} for row in rows]}
    lines = ["# Prediction report", "", f"- Model: `{model}`", f"- Images segmented: {len(rows)}",
             f"- Images skipped (unreadable): {len(skipped)}", ""]
    if skipped:
        lines += ["## Skipped", "", "| image | reason |", "|---|---|"]
        lines += [f"| `{s['item']}` | {str(s['reason']).replace('|', '/')} |" for s in skipped] + [""]
    lines += ["## Predictions", "", "| image | mask | classes present |", "|---|---|---|"]
    lines += [f"| `{Path(r['image']).name}` | `{Path(r['mask']).name}` | {', '.join(r['classes_present'])} |"
              for r in rows]
    return {"json": write_json(Path(run_dir) / "prediction_report.json", report),
            "md": write_text(Path(run_dir) / "prediction_report.md", "\n".join(lines) + "\n")}
