"""The built-in ``synthetic_shapes`` dataset: textured shapes on cluttered backgrounds, Pascal VOC layout.

Classes differ by shape (disc, box, triangle, ring). Colours are random; each class prefers one texture
(60 %) but may get any, so texture helps and shape decides. Backgrounds hold gradients, low-frequency
noise, lines and soft blobs of background class. Masks are palette PNGs with a thin 255 void border
around every shape, as in VOC. Generation is deterministic for a seed, idempotent (a ``dataset.json``
marker records the parameters) and atomic (built in a hidden folder beside the target, then renamed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segzoo.errors import DataError
from segzoo.io import write_json, write_text
from segzoo.palette import flat_palette

logger = logging.getLogger(__name__)

DATASET_NAME = "synthetic_shapes"
SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "disc", "box", "triangle", "ring")
_VERSION = 1  # bump when the drawing changes, so that existing copies are regenerated
_MARKER = "dataset.json"
_LAYOUT = {"JPEGImages", "SegmentationClass", "ImageSets", _MARKER}
_VOID = 255
_SPLITS = ("train", "val")
_TEXTURES = ("solid", "stripes", "checker", "noise", "gradient")
# Each shape class prefers one texture (a second, local cue that makes the set learnable in minutes);
# with probability 1 - _SIGNATURE_P a shape gets any texture, so the shape itself still matters.
_SIGNATURE = {"disc": "stripes", "box": "checker", "triangle": "noise", "ring": "solid"}
_SIGNATURE_P = 0.6


def _parameters(num_train: int, num_val: int, image_size: tuple[int, int], seed: int) -> dict:
    return {"name": DATASET_NAME, "version": _VERSION, "classes": list(SYNTHETIC_CLASSES),
            "num_train": int(num_train), "num_val": int(num_val),
            "image_size": [int(image_size[0]), int(image_size[1])], "seed": int(seed)}


def _marker_matches(folder: Path, params: dict) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text(encoding="utf-8")) == params
    except (OSError, ValueError):
        return False


# Drawing. Coordinates are (x, y) pixels; every random draw comes from the per-image Generator.

def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray, distance: float = 70.0) -> np.ndarray:
    """A random colour at least ``distance`` (RGB Euclidean) away from ``against`` when possible."""
    colour = _random_colour(rng)
    for _ in range(20):
        if np.linalg.norm(colour - against) >= distance:
            break
        colour = _random_colour(rng)
    return colour


def _grid(hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0 : hw[0], 0 : hw[1]].astype(np.float32)
    return xs, ys


def _background(rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Gradient + low-frequency noise + distractor lines and soft blobs, float32 HxWx3."""
    xs, ys = _grid(hw)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(hw)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    image = _random_colour(rng) * (1 - ramp[..., None]) + _random_colour(rng) * ramp[..., None]
    coarse = rng.normal(0, 25, size=(6, 6, 3)).astype(np.float32)
    image += cv2.resize(coarse, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC)
    for _ in range(rng.integers(0, 4)):
        image = _soft_blob(rng, image, hw)
    for _ in range(rng.integers(2, 7)):
        p1 = tuple(int(v) for v in rng.integers(0, [hw[1], hw[0]]))
        p2 = tuple(int(v) for v in rng.integers(0, [hw[1], hw[0]]))
        cv2.line(image, p1, p2, _random_colour(rng).tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    return image


def _soft_blob(rng: np.random.Generator, image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Blend in a blurred irregular polygon: clutter with soft edges, unlike the sharp objects."""
    centre = rng.uniform(0, [hw[1], hw[0]])
    count = int(rng.integers(5, 9))
    angles = np.sort(rng.uniform(0, 2 * math.pi, count))
    radii = rng.uniform(0.05, 0.2, count) * min(hw)
    points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
    alpha = np.zeros(hw, np.float32)
    cv2.fillPoly(alpha, [points.astype(np.int32)], 1.0)
    alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(3, 6))[..., None] * rng.uniform(0.4, 0.8)
    return image * (1 - alpha) + _random_colour(rng) * alpha


def _texture(rng: np.random.Generator, hw: tuple[int, int], against: np.ndarray, cls: int) -> np.ndarray:
    """A full-size fill (solid, stripes, checker, noise or gradient; the class's own one more often)."""
    first = _contrasting_colour(rng, against)
    second = _contrasting_colour(rng, against)
    xs, ys = _grid(hw)
    signature = rng.random() < _SIGNATURE_P
    kind = _SIGNATURE[SYNTHETIC_CLASSES[cls]] if signature else _TEXTURES[int(rng.integers(0, len(_TEXTURES)))]
    if kind == "solid":
        return np.broadcast_to(first, hw + (3,)).copy()
    angle, period = rng.uniform(0, math.pi), rng.uniform(5, 14)
    if kind == "stripes":
        weight = (np.sin(2 * math.pi * (xs * math.cos(angle) + ys * math.sin(angle)) / period) > 0)
    elif kind == "checker":
        weight = ((np.floor(xs / period) + np.floor(ys / period)) % 2).astype(bool)
    elif kind == "noise":
        noise = rng.normal(0, 35, size=hw + (3,)).astype(np.float32)
        return first + cv2.GaussianBlur(noise, (0, 0), rng.uniform(0.7, 1.5))
    else:
        weight = (xs * math.cos(angle) + ys * math.sin(angle)) / max(hw)
        weight = (weight - weight.min()) / max(float(np.ptp(weight)), 1e-6)
    weight = weight.astype(np.float32)[..., None]
    return first * (1 - weight) + second * weight


def _polygon_points(centre: np.ndarray, radius: float, angles: np.ndarray) -> np.ndarray:
    """Integer polygon vertices with 4 fractional bits (cv2 ``shift=4``) for smooth edges."""
    points = np.stack([centre[0] + radius * np.cos(angles), centre[1] + radius * np.sin(angles)], 1)
    return np.round(points * 16).astype(np.int32)


def _shape_alpha(cls: int, rng: np.random.Generator, hw: tuple[int, int]) -> np.ndarray:
    """Anti-aliased coverage (float32 0..1) of one shape of class ``cls``, at a random place and size."""
    radius = rng.uniform(0.14, 0.28) * min(hw)
    centre = rng.uniform(0.1, 0.9, 2) * [hw[1], hw[0]]
    rotation = rng.uniform(0, 2 * math.pi)
    canvas = np.zeros(hw, np.uint8)
    c16 = tuple(int(v) for v in np.round(centre * 16))
    name = SYNTHETIC_CLASSES[cls]
    if name == "disc":
        axes = (int(radius * 16), int(radius * rng.uniform(0.85, 1.0) * 16))
        cv2.ellipse(canvas, c16, axes, math.degrees(rotation), 0, 360, 255, -1, cv2.LINE_AA, 4)
    elif name == "box":
        aspect = rng.uniform(0.55, 1.0)
        corner = math.atan(aspect)
        angles = rotation + np.array([corner, math.pi - corner, math.pi + corner, -corner])
        cv2.fillPoly(canvas, [_polygon_points(centre, radius * 1.1, angles)], 255, cv2.LINE_AA, 4)
    elif name == "triangle":
        angles = rotation + np.radians([0, 120, 240]) + rng.uniform(-12, 12, 3) * math.pi / 180
        cv2.fillPoly(canvas, [_polygon_points(centre, radius * 1.25, angles)], 255, cv2.LINE_AA, 4)
    else:  # ring: an annulus whose hole shows what lies below
        inner = radius * rng.uniform(0.4, 0.6)
        cv2.circle(canvas, c16, int((radius + inner) / 2 * 16), 255, max(2, round(radius - inner)), cv2.LINE_AA, 4)
    return canvas.astype(np.float32) / 255.0


def render_sample(rng: np.random.Generator, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 image and its class-index mask (with 255 void borders) of size ``hw``."""
    image = _background(rng, hw)
    labels = np.zeros(hw, np.uint8)
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        alpha = _shape_alpha(cls, rng, hw)
        under = image[alpha > 0.5].mean(0) if (alpha > 0.5).any() else image.mean((0, 1))
        texture = _texture(rng, hw, under, cls)
        image = image * (1 - alpha[..., None]) + texture * alpha[..., None]
        labels[alpha >= 0.5] = cls
    image += rng.normal(0, 4, size=image.shape).astype(np.float32)
    border = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    labels[border] = _VOID
    return np.clip(np.round(image), 0, 255).astype(np.uint8), labels


def _write_sample(folder: Path, sample_id: str, image: np.ndarray, labels: np.ndarray) -> None:
    if not cv2.imwrite(str(folder / "JPEGImages" / f"{sample_id}.jpg"), image[..., ::-1],
                       [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"cannot write {folder / 'JPEGImages' / sample_id}.jpg")
    mask = Image.fromarray(labels)
    mask.putpalette(flat_palette())
    mask.save(folder / "SegmentationClass" / f"{sample_id}.png")


def _write_dataset(folder: Path, params: dict) -> None:
    """Draw every sample into ``folder`` (VOC layout); the marker is written last."""
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    hw = tuple(params["image_size"])
    for split_index, split in enumerate(_SPLITS):
        ids = [f"{split}_{i:04d}" for i in range(params[f"num_{split}"])]
        for i, sample_id in enumerate(ids):
            rng = np.random.default_rng([params["seed"], split_index, i])
            _write_sample(folder, sample_id, *render_sample(rng, hw))
        write_text(folder / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{s}\n" for s in ids),
                   checksum=False)
    write_json(folder / _MARKER, params, checksum=False)  # a dataset, installed whole by one rename


def _install(built: Path, target: Path, params: dict) -> None:
    """Move a finished dataset onto ``target``, replacing an outdated copy (never a foreign folder)."""
    if target.exists():
        foreign = {p.name for p in target.iterdir()} - _LAYOUT
        if foreign:
            raise DataError(f"{target} exists and is not a generated {DATASET_NAME} dataset "
                            f"(it holds {sorted(foreign)[:5]}); move it away or choose another datasets folder")
        stale = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
        os.replace(target, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(built, target)
    except OSError:
        if not _marker_matches(target, params):  # another process may have installed the same dataset
            raise


def ensure_synthetic_dataset(root: str | Path, *, num_train: int = 800, num_val: int = 100,
                             image_size: tuple[int, int] = (160, 160), seed: int = 0) -> Path:
    """The folder of the built-in ``synthetic_shapes`` dataset under ``root``, generated on first use."""
    if num_train < 1 or num_val < 1:
        raise ValueError("num_train and num_val must be at least 1")
    params = _parameters(num_train, num_val, image_size, seed)
    target = Path(root) / DATASET_NAME
    if _marker_matches(target, params):
        return target
    logger.info("Generating the %s dataset (%d train + %d val images of %dx%d) in %s",
                DATASET_NAME, num_train, num_val, image_size[1], image_size[0], target)
    target.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{DATASET_NAME}.tmp-", dir=target.parent))
    try:
        _write_dataset(built, params)
        _install(built, target, params)
    finally:
        shutil.rmtree(built, ignore_errors=True)
    return target
