"""Image preprocessing shared by training, evaluation, prediction, calibration and deployment.

One implementation (OpenCV, NumPy) of: colour mode, resizing to the model input with an aspect-ratio
policy, rescaling, and the inverse geometry that maps a prediction back onto the original image.
Masks are only ever resized with nearest neighbour; padding in masks is the ignore index.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INTERPOLATIONS: dict[str, int] = {
    "nearest": cv2.INTER_NEAREST_EXACT,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
}
ASPECT_RATIOS = ("fit", "crop", "padding")
COLOR_MODES = ("rgb", "bgr", "grayscale")


@dataclass(frozen=True)
class Preprocessing:
    """How raw RGB uint8 pixels become model input: ``x = pixel * scale + offset``."""

    scale: float = 1.0 / 127.5
    offset: float = -1.0
    interpolation: str = "bilinear"
    aspect_ratio: str = "fit"
    color_mode: str = "rgb"

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}")
        if self.aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"aspect_ratio must be one of {list(ASPECT_RATIOS)}")
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {list(COLOR_MODES)}")

    @property
    def channels(self) -> int:
        """Number of channels of the model input."""
        return 1 if self.color_mode == "grayscale" else 3

    def to_dict(self) -> dict:
        """Plain dict, as written into reports and deployment bundles."""
        return {
            "scale": self.scale,
            "offset": self.offset,
            "interpolation": self.interpolation,
            "aspect_ratio": self.aspect_ratio,
            "color_mode": self.color_mode,
        }


@dataclass(frozen=True)
class Placement:
    """Where the original image went in the model input, to undo the resizing on predictions.

    ``crop`` is the (y, x, h, w) window of the original image that was used (all of it except in
    ``crop`` mode); ``content`` is the (y, x, h, w) window of the model input holding that window
    (all of it except in ``padding`` mode).
    """

    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    crop: tuple[int, int, int, int]
    content: tuple[int, int, int, int]


def compute_placement(original_hw: tuple[int, int], input_hw: tuple[int, int], aspect_ratio: str) -> Placement:
    """Geometry of resizing an image of ``original_hw`` into ``input_hw`` under an aspect-ratio policy."""
    oh, ow = original_hw
    ih, iw = input_hw
    crop = (0, 0, oh, ow)
    content = (0, 0, ih, iw)
    if aspect_ratio == "crop":
        scale = max(ih / oh, iw / ow)
        ch, cw = min(oh, round(ih / scale)), min(ow, round(iw / scale))
        crop = ((oh - ch) // 2, (ow - cw) // 2, ch, cw)
    elif aspect_ratio == "padding":
        scale = min(ih / oh, iw / ow)
        nh, nw = max(1, min(ih, round(oh * scale))), max(1, min(iw, round(ow * scale)))
        content = ((ih - nh) // 2, (iw - nw) // 2, nh, nw)
    return Placement(original_hw=(oh, ow), input_hw=(ih, iw), crop=crop, content=content)


def _window(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y, x, h, w = box
    return array[y : y + h, x : x + w]


CV_MAX_CHANNELS = 128
"""Most channels one cv2.resize call takes (OpenCV 5's CV_CN_MAX; 512 in OpenCV 4): ADE20K has 150 classes."""


def _resize(array: np.ndarray, hw: tuple[int, int], flag: int) -> np.ndarray:
    """cv2.resize that keeps a trailing channel axis of size 1, skips no-op resizes and takes any channel count."""
    if array.shape[:2] == tuple(hw):
        return array
    if array.ndim == 3 and array.shape[2] > CV_MAX_CHANNELS:
        chunks = [_resize(np.ascontiguousarray(array[..., i : i + CV_MAX_CHANNELS]), hw, flag)
                  for i in range(0, array.shape[2], CV_MAX_CHANNELS)]
        return np.concatenate(chunks, axis=-1)
    out = cv2.resize(array, (hw[1], hw[0]), interpolation=flag)
    if array.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def resize_scores(scores: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HxWxC float32 scores resized bilinearly to ``hw`` (half-pixel centres, any number of channels)."""
    return _resize(np.ascontiguousarray(scores, dtype=np.float32), hw, cv2.INTER_LINEAR)


def _place(resized: np.ndarray, placement: Placement, fill: int | float) -> np.ndarray:
    """Put ``resized`` (content-sized) into a full input-sized canvas filled with ``fill``."""
    y, x, h, w = placement.content
    if (h, w) == placement.input_hw:
        return resized
    canvas = np.full(placement.input_hw + resized.shape[2:], fill, dtype=resized.dtype)
    canvas[y : y + h, x : x + w] = resized
    return canvas


def convert_color(image: np.ndarray, color_mode: str) -> np.ndarray:
    """RGB uint8 HxWx3 to the model's colour mode (HxWx3 or HxWx1)."""
    if color_mode == "bgr":
        return np.ascontiguousarray(image[..., ::-1])
    if color_mode == "grayscale":
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None]
    return image


def resize_image(image: np.ndarray, input_hw: tuple[int, int], pp: Preprocessing) -> tuple[np.ndarray, Placement]:
    """Resize an RGB uint8 image to the model input size (still uint8, still RGB)."""
    placement = compute_placement(image.shape[:2], input_hw, pp.aspect_ratio)
    y, x, h, w = placement.content
    resized = _resize(_window(image, placement.crop), (h, w), INTERPOLATIONS[pp.interpolation])
    return _place(resized, placement, 0), placement


def resize_mask(mask: np.ndarray, input_hw: tuple[int, int], pp: Preprocessing, ignore_index: int) -> np.ndarray:
    """Resize a class-index mask like its image: nearest neighbour, padding filled with ``ignore_index``."""
    placement = compute_placement(mask.shape[:2], input_hw, pp.aspect_ratio)
    y, x, h, w = placement.content
    resized = _resize(_window(mask, placement.crop), (h, w), cv2.INTER_NEAREST_EXACT)
    return _place(resized, placement, ignore_index)


def rescale(image: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """RGB uint8 (any shape ending in 3) to float32 model values in the model's colour mode."""
    if image.ndim == 4:
        return np.stack([rescale(im, pp) for im in image])
    return convert_color(image, pp.color_mode).astype(np.float32) * np.float32(pp.scale) + np.float32(pp.offset)


def to_model_input(image: np.ndarray, input_hw: tuple[int, int], pp: Preprocessing) -> tuple[np.ndarray, Placement]:
    """RGB uint8 image of any size to a float32 HxWxC model input and its placement."""
    resized, placement = resize_image(image, input_hw, pp)
    return rescale(resized, pp), placement


def restore_logits(logits: np.ndarray, placement: Placement) -> np.ndarray:
    """Map HxWxC scores at any resolution back onto the used window of the original image (bilinear)."""
    full = _resize(logits.astype(np.float32, copy=False), placement.input_hw, cv2.INTER_LINEAR)
    _, _, ch, cw = placement.crop
    return _resize(_window(full, placement.content), (ch, cw), cv2.INTER_LINEAR)


BOUNDARY_FRACTION = 0.1
"""Above this share of boundary pixels, resize_argmax resizes all channels instead."""
UPSAMPLING_FOR_BOUNDARY_PATH = 2.0
"""resize_argmax interpolates only boundary pixels when the output has at least this many times the pixels."""


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weight of OpenCV's INTER_LINEAR along one axis (half-pixel centres, edge clamped)."""
    f = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(f).astype(np.int64)
    w = (f - i0).astype(np.float32)
    low, high = i0 < 0, i0 >= n_in - 1
    w[low | high] = 0.0
    i0 = np.clip(i0, 0, n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), w


def _argmax_of_resized(scores: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.argmax(_resize(scores.astype(np.float32, copy=False), hw, cv2.INTER_LINEAR), axis=-1).astype(np.int32)


def resize_argmax(scores: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``argmax`` of the bilinearly resized HxWxC scores (int32 labels of size ``hw``).

    When upsampling by a good factor, not every channel is resized: where the four source pixels of an
    output pixel share one arg-max, a convex combination of them has that arg-max too, so only pixels on
    class boundaries are interpolated (all channels, with OpenCV's bilinear taps). Otherwise, or when the
    scores are too noisy for that to pay, all channels are resized with OpenCV.
    """
    if hw[0] * hw[1] < UPSAMPLING_FOR_BOUNDARY_PATH * scores.shape[0] * scores.shape[1]:
        return _argmax_of_resized(scores, hw)
    labels = np.argmax(scores, axis=-1).astype(np.int32)
    y0, y1, wy = _linear_taps(scores.shape[0], hw[0])
    x0, x1, wx = _linear_taps(scores.shape[1], hw[1])
    rows0, rows1 = labels[y0], labels[y1]
    l00, l01, l10, l11 = rows0[:, x0], rows0[:, x1], rows1[:, x0], rows1[:, x1]
    out = l00
    ys, xs = np.nonzero((l00 != l01) | (l00 != l10) | (l00 != l11))
    if ys.size > BOUNDARY_FRACTION * out.size:  # noisy scores: resizing every channel is cheaper
        return _argmax_of_resized(scores, hw)
    if ys.size:
        sy0, sy1, sx0, sx1 = y0[ys], y1[ys], x0[xs], x1[xs]
        fy, fx = wy[ys, None], wx[xs, None]
        top = scores[sy0, sx0] * (1 - fx) + scores[sy0, sx1] * fx
        bottom = scores[sy1, sx0] * (1 - fx) + scores[sy1, sx1] * fx
        out[ys, xs] = np.argmax(top * (1 - fy) + bottom * fy, axis=-1)
    return out


def restore_argmax(scores: np.ndarray, placement: Placement) -> np.ndarray:
    """Labels of HxWxC scores at any resolution, restored bilinearly onto the used window of the original."""
    full = scores
    if scores.shape[:2] != placement.input_hw or placement.content[2:] != placement.input_hw:
        full = _window(_resize(scores.astype(np.float32, copy=False), placement.input_hw, cv2.INTER_LINEAR),
                       placement.content)
    return resize_argmax(full, placement.crop[2:])


def restore_labels(labels: np.ndarray, placement: Placement) -> np.ndarray:
    """Map an HxW label map at any resolution back onto the used window of the original image (nearest)."""
    full = _resize(labels, placement.input_hw, cv2.INTER_NEAREST_EXACT)
    _, _, ch, cw = placement.crop
    return _resize(_window(full, placement.content), (ch, cw), cv2.INTER_NEAREST_EXACT)


def crop_to_placement(mask: np.ndarray, placement: Placement) -> np.ndarray:
    """The window of an original-size mask that a restored prediction covers."""
    return _window(mask, placement.crop)
