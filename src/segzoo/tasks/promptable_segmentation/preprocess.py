"""The model image and the mappings between image pixels and model pixels.

Resize modes:

- ``longest_side`` (default): the longest side becomes the model size ``S`` (the other ``round(side * S / long)``,
  SAM's ``ResizeLongestSide``), bilinear; the normalized image is zero-padded at the bottom and right to ``S x S``.
  The aspect ratio is kept; mask logits are upsampled to ``S x S``, the padding is cropped, then resized to the
  image (SAM's ``postprocess_masks``).
- ``stretch``: the image is resized to ``S x S`` (what SAM2's own ``SAM2Transforms`` does); logits are resized
  straight back to the image.

Pixel normalization is SAM2's: ``(rgb / 255 - mean) / std`` with ImageNet mean ``(0.485, 0.456, 0.406)`` and std
``(0.229, 0.224, 0.225)``. Points map as ``x * new_w / W``, ``y * new_h / H`` (SAM's ``apply_coords``). Resizes
use OpenCV's bilinear interpolation with half-pixel centres (``align_corners=False``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from segzoo.errors import ConfigError

PIXEL_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
PIXEL_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
RESIZE_MODES: tuple[str, ...] = ("longest_side", "stretch")


@dataclass(frozen=True)
class Frame:
    """Where an image sits in the ``size x size`` model image: its own size and the resized content size
    (content at the top-left; the rest is padding)."""

    image_hw: tuple[int, int]
    size: int
    content_hw: tuple[int, int]
    mode: str


def frame(image_hw: tuple[int, int], size: int, mode: str = "longest_side") -> Frame:
    """The :class:`Frame` of an image of ``image_hw`` in a model of side ``size``."""
    if mode not in RESIZE_MODES:
        raise ConfigError(f"resize mode {mode!r} is not supported; choose one of {', '.join(RESIZE_MODES)}")
    height, width = int(image_hw[0]), int(image_hw[1])
    if mode == "stretch":
        return Frame((height, width), size, (size, size), mode)
    scale = size / max(height, width)
    return Frame((height, width), size, (int(height * scale + 0.5), int(width * scale + 0.5)), mode)


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``[..., 3]`` -> float32 SAM2 input (ImageNet mean/std)."""
    return ((rgb.astype(np.float32) / 255.0 - PIXEL_MEAN) / PIXEL_STD).astype(np.float32)


def model_image(rgb: np.ndarray, size: int, mode: str = "longest_side") -> tuple[np.ndarray, Frame]:
    """The encoder input ``[1, size, size, 3]`` float32 for an RGB uint8 image, and its :class:`Frame`."""
    where = frame(rgb.shape[:2], size, mode)
    ch, cw = where.content_hw
    resized = cv2.resize(rgb, (cw, ch), interpolation=cv2.INTER_LINEAR) if (ch, cw) != rgb.shape[:2] else rgb
    out = np.zeros((1, size, size, 3), dtype=np.float32)
    out[0, :ch, :cw] = normalize(resized)
    return out, where


def points_to_model(coords: np.ndarray, where: Frame) -> np.ndarray:
    """Image-pixel ``(x, y)`` points ``[K, 2]`` -> model-pixel points (float32)."""
    (h, w), (ch, cw) = where.image_hw, where.content_hw
    return (np.asarray(coords, dtype=np.float32) * np.array([cw / w, ch / h], dtype=np.float32)).astype(np.float32)


def logits_to_image(logits: np.ndarray, where: Frame) -> np.ndarray:
    """Mask logits ``[m, m]`` (any ``m``, e.g. ``S/4``) -> ``[H, W]`` logits on the image (bilinear)."""
    logits = np.asarray(logits, dtype=np.float32)
    h, w = where.image_hw
    if where.mode == "longest_side":
        full = cv2.resize(logits, (where.size, where.size), interpolation=cv2.INTER_LINEAR)
        ch, cw = where.content_hw
        logits = full[:ch, :cw]
    return cv2.resize(logits, (w, h), interpolation=cv2.INTER_LINEAR)
