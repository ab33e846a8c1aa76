"""Calibration samples for the two networks of a promptable model.

- **encoder**: ``quantization.calibration_images`` images (seeded draw) of the quantization set (else the training
  set), preprocessed as the model sees them (:func:`~.preprocess.model_image`).
- **decoder**: the float encoder's outputs on those images with simulated clicks on their largest instances
  (:data:`INSTANCES_PER_IMAGE`): the first click of the evaluation protocol (positive, farthest from the boundary)
  alone, and, when the decoder takes two points or more, with a negative click on the background point farthest from
  the instance; unused point slots are padding (label -1). The features are computed while the converter reads the
  samples, so memory does not grow with the number of images.

``quantization.calibration_data: random`` draws noise images and random clicks instead (for tests only; reported as
a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from segzoo.tasks.promptable_segmentation.clicks import first_click, interior_point
from segzoo.tasks.promptable_segmentation.dataset import InstanceSample
from segzoo.tasks.promptable_segmentation.preprocess import model_image, points_to_model

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.config.schema import Config
    from segzoo.models.sam2.params import Sam2Params

log = logging.getLogger(__name__)

INSTANCES_PER_IMAGE = 3
RANDOM_WARNING = ("calibration on RANDOM NOISE (quantization.calibration_data: random): activation ranges do not "
                  "match real images and clicks; use it for tests only")
Sample = dict[str, np.ndarray]


@dataclass
class Calibration:
    """The samples of both networks: ``encoder()`` and ``decoder()`` iterate over dicts of named inputs."""

    images: list[np.ndarray]
    clicks: list[list[tuple[np.ndarray, np.ndarray]]]
    encode: Callable[[np.ndarray], dict[str, np.ndarray]]
    info: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def encoder(self, limit: int | None = None) -> Iterator[Sample]:
        """``{"image": [1, S, S, 3]}`` per image (the first ``limit``)."""
        for image in self.images[:limit]:
            yield {"image": image}

    def decoder(self, limit: int | None = None) -> Iterator[Sample]:
        """Encoder features with each prompt of the image (the first ``limit`` samples)."""
        count = 0
        for image, prompts in zip(self.images, self.clicks):
            features = {k: np.asarray(v) for k, v in self.encode(image).items()}
            for coords, labels in prompts:
                if limit is not None and count >= limit:
                    return
                count += 1
                yield {**features, "point_coords": coords, "point_labels": labels}


def _padded(points: list[tuple[float, float, int]], num_points: int) -> tuple[np.ndarray, np.ndarray]:
    coords = np.zeros((1, num_points, 2), np.float32)
    labels = np.full((1, num_points), -1.0, np.float32)
    for i, (x, y, label) in enumerate(points[:num_points]):
        coords[0, i], labels[0, i] = (x, y), label
    return coords, labels


def instance_prompts(masks: list[np.ndarray], where: object, num_points: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Decoder prompts (model pixels) for the largest instances of one image (see the module docstring)."""
    prompts = []
    for mask in sorted((m for m in masks if m.any()), key=lambda m: -int(m.sum()))[:INSTANCES_PER_IMAGE]:
        click = first_click(mask)
        points = [(click.x, click.y, 1)]
        options = [points]
        if num_points > 1 and not mask.all():
            x, y = interior_point(~mask)
            options.append(points + [(float(x), float(y), 0)])
        for option in options:
            xy = points_to_model(np.array([[p[0], p[1]] for p in option], np.float32), where)
            prompts.append(_padded([(float(a), float(b), p[2]) for (a, b), p in zip(xy, option)], num_points))
    return prompts


def dataset_calibration(cfg: Config, samples: list[InstanceSample], source: str, encode: Callable,
                        params: Sam2Params, resize_mode: str) -> Calibration:
    """Calibration of both networks on real images and clicks (see the module docstring)."""
    rng = np.random.default_rng(cfg.general.global_seed)
    count = cfg.quantization.calibration_images
    if len(samples) > count:
        samples = [samples[i] for i in sorted(rng.choice(len(samples), count, replace=False))]
    images, clicks = [], []
    for sample in samples:
        rgb = sample.image()
        tensor, where = model_image(rgb, params.image_size, resize_mode)
        images.append(tensor)
        clicks.append(instance_prompts(sample.masks(rgb.shape[:2]), where, params.num_points))
    info = {"source": source, "images": len(images), "decoder_samples": sum(map(len, clicks)),
            "folder": str(samples[0].image_path.parent), "labels": str(samples[0].label_path.parent)}
    log.info("Calibrating the encoder on %d images and the decoder on %d clicked instances from %s", len(images),
             info["decoder_samples"], source)
    return Calibration(images, clicks, encode, info)


def random_calibration(cfg: Config, encode: Callable, params: Sam2Params) -> Calibration:
    """Noise images with random positive clicks (tests only)."""
    log.warning(RANDOM_WARNING)
    rng = np.random.default_rng(cfg.general.global_seed)
    size, images, clicks = params.image_size, [], []
    for _ in range(cfg.quantization.calibration_images):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        images.append(model_image(pixels, size)[0])
        xy = rng.uniform(0, size, (1, 2))
        clicks.append([_padded([(float(xy[0, 0]), float(xy[0, 1]), 1)], params.num_points)])
    info = {"source": "random", "images": len(images), "decoder_samples": len(clicks)}
    return Calibration(images, clicks, encode, info, [RANDOM_WARNING])
