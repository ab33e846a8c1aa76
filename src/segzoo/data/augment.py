"""Data augmentation on (image, mask) pairs, in TensorFlow, usable inside ``tf.data`` maps.

Geometric augmentations are 3x3 matrices mapping output pixel coordinates to input coordinates.
Consecutive geometric steps are multiplied into one matrix and applied in one resampling: bilinear
with zero fill for the image, nearest with ``ignore_index`` fill for the mask, so that a mask never
gets a value it did not have, except ``ignore_index`` where pixels came from outside the image.
Photometric augmentations touch the image only and clip it to 0..255.

Randomness is stateless: every call draws from a per-sample seed (``seed=`` argument of the returned
function, as ``make_dataset`` passes it), or, without one, from a seeded ``tf.random.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from segzoo.data.augment_spec import AUGMENTATIONS, GEOMETRIC

Params = dict[str, object]
_UNIFORMS = 6  # uniform draws per step: [coin, parameters...]


def _lerp(bounds: object, u: tf.Tensor) -> tf.Tensor:
    low, high = bounds  # type: ignore[misc]
    return float(low) + (float(high) - float(low)) * u


def _symmetric(factor: object, u: tf.Tensor) -> tf.Tensor:
    """Uniform in [-factor, factor] from u uniform in [0, 1)."""
    return float(factor) * (2.0 * u - 1.0)  # type: ignore[arg-type]


def _affine(a: tf.Tensor, b: tf.Tensor, c: tf.Tensor, d: tf.Tensor, e: tf.Tensor, f: tf.Tensor) -> tf.Tensor:
    """3x3 matrix [[a, b, c], [d, e, f], [0, 0, 1]] (output pixel (x, y) -> input pixel)."""
    row = [tf.cast(v, tf.float32) for v in (a, b, c, d, e, f)]
    return tf.stack([tf.stack(row[:3]), tf.stack(row[3:]), tf.constant([0.0, 0.0, 1.0])])


# Geometric steps: (params, uniforms, height, width) -> 3x3 output-to-input matrix.

def _flip_matrix(horizontal: tf.Tensor, vertical: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    sx = tf.where(horizontal, -1.0, 1.0)
    sy = tf.where(vertical, -1.0, 1.0)
    return _affine(sx, 0.0, tf.where(horizontal, w - 1.0, 0.0), 0.0, sy, tf.where(vertical, h - 1.0, 0.0))


def _crop(p: Params, u: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    area = _lerp(p["crop_scale"], u[1])
    low, high = p["aspect_ratio"]  # type: ignore[misc]
    ratio = tf.exp(_lerp((math.log(low), math.log(high)), u[2]))
    fw = tf.minimum(1.0, tf.sqrt(area * ratio))
    fh = tf.minimum(1.0, tf.sqrt(area / ratio))
    x0, y0 = u[3] * (1.0 - fw) * w, u[4] * (1.0 - fh) * h
    return _affine(fw, 0.0, x0 + 0.5 * fw - 0.5, 0.0, fh, y0 + 0.5 * fh - 0.5)


def _rotation(p: Params, u: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    angle = _symmetric(p["factor"], u[1]) * (2.0 * math.pi)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    return _affine(cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy)


def _translation(p: Params, u: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    dx = _symmetric(p["width_factor"], u[1]) * w
    dy = _symmetric(p["height_factor"], u[2]) * h
    return _affine(1.0, 0.0, -dx, 0.0, 1.0, -dy)


def _zoom(p: Params, u: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    scale = 1.0 + _symmetric(p["factor"], u[1])
    cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
    return _affine(scale, 0.0, cx * (1.0 - scale), 0.0, scale, cy * (1.0 - scale))


_GEOMETRIC: dict[str, Callable[[Params, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "random_crop": _crop,
    "random_rotation": _rotation,
    "random_translation": _translation,
    "random_zoom": _zoom,
}


def _geometric_matrix(name: str, p: Params, u: tf.Tensor, h: tf.Tensor, w: tf.Tensor) -> tf.Tensor:
    """The step's matrix, or the identity when its coin (u[0] < change_rate) says no."""
    rate = float(p["change_rate"])  # type: ignore[arg-type]
    if name == "random_flip":  # with "horizontal_and_vertical", each axis is flipped independently
        mode, no = p["mode"], tf.constant(False)
        horizontal = u[0] < rate if mode != "vertical" else no
        vertical = (u[1] if mode == "horizontal_and_vertical" else u[0]) < rate if mode != "horizontal" else no
        return _flip_matrix(horizontal, vertical, h, w)
    return tf.where(u[0] < rate, _GEOMETRIC[name](p, u, h, w), tf.eye(3))


def _warp(image: tf.Tensor, mask: tf.Tensor, matrix: tf.Tensor, ignore_index: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Resample image (bilinear, fill 0) and int32 mask (nearest, fill ignore_index) with one matrix."""
    transform = tf.reshape(matrix / matrix[2, 2], [9])[:8][None]
    size = tf.shape(image)[:2]
    out_image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=size, fill_value=0.0,
        interpolation="BILINEAR", fill_mode="CONSTANT")[0]
    out_mask = tf.raw_ops.ImageProjectiveTransformV3(
        images=mask[None, :, :, None], transforms=transform, output_shape=size, fill_value=float(ignore_index),
        interpolation="NEAREST", fill_mode="CONSTANT")[0, :, :, 0]
    return out_image, out_mask


# Photometric steps: (image float 0..255, params, uniforms, seed) -> image (clipped by the caller).

def _brightness(x: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return x + _symmetric(p["factor"], u[1]) * 255.0


def _contrast(x: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    mean = tf.reduce_mean(x, axis=[0, 1], keepdims=True)
    return (x - mean) * (1.0 + _symmetric(p["factor"], u[1])) + mean


def _gamma(x: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return 255.0 * tf.pow(x / 255.0, _lerp(p["gamma"], u[1]))


def _hue(x: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.adjust_hue(x / 255.0, _symmetric(p["delta"], u[1])) * 255.0


def _saturation(x: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.adjust_saturation(x / 255.0, _lerp(p["range"], u[1])) * 255.0


def _blur(x: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Separable Gaussian blur, reflect-padded; kernel radius fixed by the largest sigma."""
    sigma = tf.maximum(_lerp(p["sigma"], u[1]), 1e-3)
    radius = max(1, math.ceil(3.0 * float(p["sigma"][1])))  # type: ignore[index]
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernel = tf.exp(-0.5 * tf.square(t / sigma))
    kernel /= tf.reduce_sum(kernel)
    planes = tf.transpose(x, [2, 0, 1])[..., None]  # channels as batch: C x H x W x 1
    planes = tf.pad(planes, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    planes = tf.nn.conv2d(planes, tf.reshape(kernel, [-1, 1, 1, 1]), strides=1, padding="VALID")
    planes = tf.nn.conv2d(planes, tf.reshape(kernel, [1, -1, 1, 1]), strides=1, padding="VALID")
    return tf.transpose(planes[..., 0], [1, 2, 0])


def _gaussian_noise(x: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    stddev = _lerp(p["stddev"], u[1])
    return x + stddev * tf.random.stateless_normal(tf.shape(x), seed=tf.random.experimental.stateless_fold_in(seed, 1))


_PHOTOMETRIC: dict[str, Callable[[tf.Tensor, Params, tf.Tensor, tf.Tensor], tf.Tensor]] = {
    "random_brightness": _brightness,
    "random_contrast": _contrast,
    "random_gamma": _gamma,
    "random_hue": _hue,
    "random_saturation": _saturation,
    "random_blur": _blur,
    "random_gaussian_noise": _gaussian_noise,
}


def _photometric(name: str, image: tf.Tensor, p: Params, u: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Apply one photometric step with probability change_rate, clipped to 0..255."""
    rate = float(p["change_rate"])  # type: ignore[arg-type]

    def run() -> tf.Tensor:
        return tf.clip_by_value(_PHOTOMETRIC[name](image, p, u, seed), 0.0, 255.0)

    return run() if rate >= 1.0 else tf.cond(u[0] < rate, run, lambda: image)


def _augment(steps: list[tuple[str, Params]], image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor,
             ignore_index: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Apply ``steps`` in order; consecutive geometric steps share one resampling."""
    image = tf.convert_to_tensor(image)
    mask = tf.convert_to_tensor(mask)
    out_image, out_mask = tf.cast(image, tf.float32), tf.cast(mask, tf.int32)
    h, w = (tf.cast(tf.shape(image)[i], tf.float32) for i in (0, 1))
    matrix = None
    for index, (name, params) in enumerate(steps):
        step_seed = tf.random.experimental.stateless_fold_in(seed, index)
        u = tf.random.stateless_uniform([_UNIFORMS], seed=step_seed)
        if name in GEOMETRIC:
            step = _geometric_matrix(name, params, u, h, w)
            matrix = step if matrix is None else matrix @ step
            continue
        if matrix is not None:
            out_image, out_mask = _warp(out_image, out_mask, matrix, ignore_index)
            matrix = None
        out_image = _photometric(name, out_image, params, u, step_seed)
    if matrix is not None:
        out_image, out_mask = _warp(out_image, out_mask, matrix, ignore_index)
    out_image = tf.ensure_shape(tf.cast(out_image, image.dtype), image.shape)
    out_mask = tf.ensure_shape(tf.cast(out_mask, mask.dtype), mask.shape)
    return out_image, out_mask


def build_augmenter(augmentations: list[tuple[str, dict]], ignore_index: int,
                    seed: int | None = None) -> Callable[..., tuple[tf.Tensor, tf.Tensor]]:
    """A function ``(image, mask, seed=None) -> (image, mask)`` applying ``augmentations`` in order.

    ``augmentations`` is the output of ``augment_spec.validate_augmentations`` (missing parameters take
    their defaults). Image: float32 HxWxC in 0..255; mask: integer HxW; both keep shape and dtype.
    ``seed`` (shape [2] int) of the returned function makes a call repeatable; without it, draws come
    from a generator seeded with this ``seed`` (non-deterministic when None).
    """
    unknown = [name for name, _ in augmentations if name not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"unknown augmentations {unknown}; valid: {', '.join(AUGMENTATIONS)}")
    steps = [(name, {**AUGMENTATIONS[name], **params}) for name, params in augmentations
             if float(params.get("change_rate", AUGMENTATIONS[name]["change_rate"])) > 0.0]
    generator = (tf.random.Generator.from_seed(seed) if seed is not None
                 else tf.random.Generator.from_non_deterministic_state())

    def augment(image: tf.Tensor, mask: tf.Tensor, seed: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
        if seed is None:
            seed = generator.make_seeds(1)[:, 0]
        return _augment(steps, image, mask, seed, ignore_index)

    return augment
