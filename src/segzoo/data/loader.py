"""Read image+mask pairs as arrays, and check a whole dataset before heavy work starts.

No TensorFlow here. Images are read with Pillow, which reports truncated or corrupt files as errors
(OpenCV silently returns grey pixels). The check decodes every image and mask completely, with the very
functions training, evaluation and prediction read them with, so a file that passes the check is read
without error later.

**Orientation rule**: EXIF orientation is never applied, to images or to masks, by any reader of segzoo
(this module, ``segzoo.data.masks``, the training pipeline, calibration, prediction, and the board
application): an image and its mask always share the stored pixel grid, on which annotation tools draw
masks. A photo whose EXIF tag says "rotate on display" is processed, and its prediction written, in its
stored orientation (:func:`exif_orientation` tells which images carry such a tag).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from segzoo.data.layouts import Sample
from segzoo.data.masks import ClassMapper, read_mask
from segzoo.errors import DataError

logger = logging.getLogger(__name__)

ON_BAD_SAMPLE = ("error", "skip")
_PIL_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_REASONS_SHOWN = 5
_EXIF_ORIENTATION = 0x0112


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """High-bit-depth gray pixels to uint8: integers are taken as 16-bit (high byte), floats as 0..1."""
    if values.dtype.kind == "f":
        return np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)
    return np.clip(values.astype(np.int64) >> 8, 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 HxWx3 (grayscale, palette, RGBA, CMYK, 16-bit all converted)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode.startswith(("I", "F")):
                gray = _to_uint8(np.array(im))
                return np.repeat(gray[..., None], 3, axis=2)
            return np.array(im if im.mode == "RGB" else im.convert("RGB"))  # a writable copy
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the image header only, or a DataError naming the file (does not prove the file whole:
    :func:`read_image` does)."""
    try:
        with Image.open(path) as im:
            width, height = im.size
    except _PIL_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc
    return height, width


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image (1 = as stored; 2..8 = mirrored or rotated on display), 1 if none.

    segzoo never applies it (see the module docstring); prediction counts the images that carry one.
    """
    try:
        with Image.open(path) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_ERRORS:
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def _check_size(sample: Sample, image_hw: tuple[int, int], mask_hw: tuple[int, ...]) -> None:
    if tuple(image_hw) != tuple(mask_hw[:2]):
        raise DataError(
            f"{sample.mask_path}: mask size {mask_hw[1]}x{mask_hw[0]} (WxH) differs from image {sample.image_path} "
            f"size {image_hw[1]}x{image_hw[0]}")


def _read_mapped_mask(sample: Sample, mapper: ClassMapper) -> np.ndarray:
    if sample.mask_path is None:
        raise DataError(f"{sample.image_path}: sample '{sample.id}' has no mask")
    mapped = mapper.apply(read_mask(sample.mask_path))
    mapper.check(mapped, sample.mask_path)
    return mapped


def load_pair(sample: Sample, mapper: ClassMapper) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 image and its mapped, checked uint8 mask of the same size."""
    image = read_image(sample.image_path)
    mask = _read_mapped_mask(sample, mapper)
    _check_size(sample, image.shape[:2], mask.shape)
    return image, mask


def _problem(sample: Sample, mapper: ClassMapper) -> DataError | None:
    """Why a sample is unusable (image and mask fully decoded, mask values, sizes), or None when it is fine."""
    try:
        image_hw = read_image(sample.image_path).shape[:2]
        mask = _read_mapped_mask(sample, mapper)
        _check_size(sample, image_hw, mask.shape)
    except DataError as exc:
        return exc
    return None


def _problems(samples: list[Sample], mapper: ClassMapper, stop_at_first: bool, desc: str) -> list[DataError | None]:
    """The problem of every sample, in order; with ``stop_at_first`` the list ends at the first problem."""
    results: list[DataError | None] = []
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    try:
        futures = [pool.submit(_problem, s, mapper) for s in samples]
        for future in tqdm(futures, desc=desc, unit="sample", disable=None, leave=False):
            results.append(future.result())
            if stop_at_first and results[-1] is not None:
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def skipped_entry(sample: Sample, problem: DataError) -> dict:
    """How a skipped sample is listed in reports and ``results.json``."""
    return {"item": str(sample.image_path), "mask": None if sample.mask_path is None else str(sample.mask_path),
            "reason": str(problem)}


def scan_samples(samples: list[Sample], mapper: ClassMapper, on_bad_sample: str = "error",
                 desc: str = "Checking dataset", skipped: list[dict] | None = None) -> list[Sample]:
    """Check every pair (image and mask fully decoded, mask values, sizes) before training or evaluation.

    ``on_bad_sample="error"`` raises the first problem in list order; ``"skip"`` drops bad samples
    with one warning (count and first reasons) and raises only when nothing is left. The skipped samples
    are appended to ``skipped`` (see :func:`skipped_entry`) when it is given.
    """
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ValueError(f"on_bad_sample must be one of {list(ON_BAD_SAMPLE)}, got {on_bad_sample!r}")
    problems = _problems(samples, mapper, on_bad_sample == "error", desc)
    bad = [p for p in problems if p is not None]
    if not bad:
        return list(samples)
    if on_bad_sample == "error":
        raise bad[0]
    reasons = [str(p) for p in bad]
    listed = "\n  ".join(reasons[:_REASONS_SHOWN])
    if len(reasons) == len(samples):
        raise DataError(f"all {len(samples)} samples are unusable; first reasons:\n  {listed}")
    logger.warning("Skipped %d of %d samples (on_bad_sample=skip); first reasons:\n  %s",
                   len(reasons), len(samples), listed)
    if skipped is not None:
        skipped.extend(skipped_entry(s, p) for s, p in zip(samples, problems) if p is not None)
    return [s for s, p in zip(samples, problems) if p is None]
