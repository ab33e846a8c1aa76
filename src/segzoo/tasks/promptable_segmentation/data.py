"""Which instance images a run uses: the evaluation set and the calibration set, from the ``dataset`` keys.

Instance datasets use ``dataset.layout: yolo_seg``: each ``dataset.<split>_path`` is an image folder and its
``dataset.<split>_masks_path`` the folder of YOLO-seg label files (``labels/*.txt``) paired by file stem; an optional
``dataset.<split>_files_path`` lists the ids to keep (one per line, the first word of each line).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from segzoo.errors import ConfigError, DataError
from segzoo.tasks.promptable_segmentation.dataset import InstanceSample, instance_samples

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.config.schema import Config

log = logging.getLogger(__name__)

LAYOUT = "yolo_seg"
EVALUATION_ORDER = {"auto": ("test", "validation", "training"), "test": ("test",), "validation": ("validation",)}
"""``evaluation.split`` -> the splits tried, in order (the first with images and labels is used)."""


def _ids(path: str) -> set[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the id list ({exc})") from exc
    return {Path(line.split()[0]).stem for line in lines if line.strip()}


def split_samples(cfg: Config, split: str) -> list[InstanceSample] | None:
    """The instance samples of ``dataset.<split>_*`` (None when the split has no images and labels)."""
    ds = cfg.dataset
    images, labels = getattr(ds, f"{split}_path"), getattr(ds, f"{split}_masks_path")
    if not images or not labels:
        return None
    samples = instance_samples(images, labels)
    files = getattr(ds, f"{split}_files_path")
    if files:
        keep = _ids(files)
        samples = [s for s in samples if s.id in keep]
    if not samples:
        raise DataError(f"dataset.{split}_path: no image of {images} has a label file in {labels}"
                        + (f" and an id in {files}" if files else ""))
    return samples


def evaluation_set(cfg: Config) -> tuple[str, list[InstanceSample]]:
    """``(split, samples)`` every evaluation of the run uses (``evaluation.split``, ``evaluation.max_images``)."""
    for split in EVALUATION_ORDER[cfg.evaluation.split]:
        samples = split_samples(cfg, split)
        if samples:
            return split, samples[: cfg.evaluation.max_images or None]
    raise ConfigError("dataset.test_path: promptable segmentation evaluates on instance labels: set "
                      "dataset.test_path (images) and dataset.test_masks_path (YOLO-seg labels/ folder) with "
                      "dataset.layout: yolo_seg")


def calibration_set(cfg: Config) -> tuple[str, list[InstanceSample]]:
    """``(source key, samples)`` to calibrate on: the quantization split, else the training split."""
    for split in ("quantization", "training"):
        samples = split_samples(cfg, split)
        if samples:
            return f"dataset.{split}_path", samples
    raise ConfigError("dataset.quantization_path: the SAM2 encoder is calibrated on images and the decoder on clicks "
                      "on their instances: set dataset.quantization_path and dataset.quantization_masks_path (or "
                      "dataset.training_path and dataset.training_masks_path) to YOLO-seg images and labels")


def describe(split: str, samples: list[InstanceSample], cfg: Config) -> dict:
    """A short description of an instance set for reports."""
    return {"name": cfg.dataset.name, "split": split, "layout": LAYOUT, "num_images": len(samples),
            "images": str(samples[0].image_path.parent) if samples else None,
            "labels": str(samples[0].label_path.parent) if samples else None}
