"""Calibration images for quantizing a segmentation model: the quantization set, else the training set."""

from __future__ import annotations

import logging

import numpy as np

from segzoo.config.schema import Config
from segzoo.data.layouts import Sample, list_samples, split_samples
from segzoo.data.loader import read_image
from segzoo.data.resolve import DataSpec, training_and_validation
from segzoo.errors import ConfigError, DataError
from segzoo.preprocess import to_model_input

logger = logging.getLogger(__name__)

RANDOM_WARNING = ("calibration on RANDOM NOISE (quantization.calibration_data: random): activation ranges do not "
                  "match real images and accuracy will suffer; use it for tests only")


def calibration_samples(cfg: Config, spec: DataSpec) -> tuple[list[Sample], str]:
    """Images to calibrate on: the quantization set, a split of the training set, or the training set."""
    ds = spec.dataset
    if ds.quantization_path:
        samples = list_samples(ds.quantization_path, ds.quantization_masks_path, ds.quantization_files_path,
                               role="dataset.quantization_path", layout=ds.layout)
        return samples, "dataset.quantization_path"
    train, _ = training_and_validation(spec)
    if not train:
        raise ConfigError("dataset.quantization_path: no calibration images (set it, or dataset.training_path)")
    if ds.quantization_split:
        _, train = split_samples(train, ds.quantization_split, spec.seed)
        return train, f"dataset.quantization_split ({ds.quantization_split}) of the training set"
    return train, "training set"


def _read_all(samples: list[Sample], on_bad_sample: str, skipped: list[dict] | None) -> list[np.ndarray]:
    """The calibration images; an unreadable one stops (``"error"``) or is skipped and listed (``"skip"``)."""
    images = []
    for sample in samples:
        try:
            images.append(read_image(sample.image_path))
        except DataError as exc:
            if on_bad_sample != "skip":
                raise
            logger.warning("Skipped calibration image %s (on_bad_sample=skip): %s", sample.image_path, exc)
            if skipped is not None:
                skipped.append({"item": str(sample.image_path), "reason": str(exc)})
    if not images:
        raise DataError(f"none of the {len(samples)} calibration images can be read (first: {samples[0].image_path})")
    return images


def calibration_data(cfg: Config, spec: DataSpec, input_hw: tuple[int, int], channels: int,
                     skipped: list[dict] | None = None) -> tuple[np.ndarray, dict, list[str]]:
    """Preprocessed float32 calibration images [N,H,W,C], a description, and warnings.

    With ``dataset.on_bad_sample: skip`` an unreadable image is left out and appended to ``skipped``.
    """
    q, rng = cfg.quantization, np.random.default_rng(spec.seed)
    if spec.pp.channels != channels:
        raise ConfigError(f"preprocessing.color_mode: {spec.pp.color_mode!r} gives {spec.pp.channels} channels but "
                          f"the model takes {channels}: the calibration images would not match the model input")
    if q.calibration_data == "random":
        logger.warning(RANDOM_WARNING)
        pixels = rng.integers(0, 256, size=(q.calibration_images, *input_hw, 3), dtype=np.uint8)
        batch = np.stack([to_model_input(p, input_hw, spec.pp)[0] for p in pixels])
        return batch, {"source": "random", "images": len(batch)}, [RANDOM_WARNING]
    samples, source = calibration_samples(cfg, spec)
    if len(samples) > q.calibration_images:
        picked = sorted(rng.choice(len(samples), q.calibration_images, replace=False))
        samples = [samples[i] for i in picked]
    images = _read_all(samples, spec.dataset.on_bad_sample, skipped)
    batch = np.stack([to_model_input(image, input_hw, spec.pp)[0] for image in images])
    logger.info("Calibrating on %d images from the %s", len(batch), source)
    return batch, {"source": source, "images": len(batch), "folder": str(samples[0].image_path.parent)}, []


