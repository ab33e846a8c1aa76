"""Rounding optimised on calibration data (``quantization.adaround``; Nagel et al. 2020, "Up or Down? Adaptive
Rounding for Post-Training Quantization").

Rounding every weight to its nearest int8 level is not the best choice for the layer's output: AdaRound learns,
per weight, whether to round up or down so that the layer's output on calibration data moves least. Per
convolution (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED) of the calibrated model, with its per-tensor scale
``s = max|w| / 127``:

- the layer's inputs come from the int8 model with nearest rounding, run on the calibration images (the
  quantized upstream, dequantized); ``ADAROUND_POSITIONS`` output positions per image are sampled and their
  input patches gathered, so the layer is a matrix product ``y = X w`` and the loss
  ``||X (w~ - w)||^2 = tr(dw^T G dw)`` needs only the patches' Gram matrix ``G``;
- ``w~ = s * clip(floor(w / s) + h(V), -127, 127)`` with the rectified sigmoid ``h``; ``V`` is trained with
  Adam (NumPy, analytic gradients) for ``iterations`` steps on the reconstruction loss plus, after a 20% warm-up,
  the regulariser ``lambda * mean(1 - |2h - 1|^beta)`` (``beta`` annealed from 20 to 2) that pushes every ``h``
  to 0 or 1; then ``h`` is rounded.

The converter must keep this rounding: each weight tensor is **snapped onto its own grid** (``w' = s * k`` with
integers ``k`` in [-127, 127] and ``max |k| = 127``), so that the quantizer derives the same scale
``max|w'| / 127 = s`` and its own rounding ``round(w' / s)`` gives back exactly ``k`` (tested on the int8 weights
in the file). The mean output shift of the new weights on the sampled inputs (``mean patch . (w~ - w)`` per
output channel) is taken out of the float bias at once: the calibrated model now holds the snapped weights, so the
bias correction that runs after this step (and the report's per-layer errors) compare against them, not against
the original weights.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np

from segzoo.quantization.flatbuffer import FlatModel

log = logging.getLogger(__name__)

WEIGHT_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}
ADAROUND_IMAGES = 16
ADAROUND_POSITIONS = 256
"""Output positions sampled per image for each layer's reconstruction loss."""
ADAROUND_LAMBDA = 0.01
ADAROUND_LR = 0.05
ZETA, GAMMA = 1.1, -0.1


# ----------------------------------------------------------------------------------------- weight grid
def weight_scale(weights: np.ndarray) -> float:
    """TFLite's symmetric per-tensor int8 weight scale ``max|w| / 127``."""
    return float(np.abs(weights).max()) / 127.0


def snap(weights: np.ndarray, levels: np.ndarray, scale: float) -> np.ndarray:
    """``scale * levels`` (float32) with ``max|levels| = 127``, so the quantizer re-derives ``scale``."""
    levels = np.clip(np.asarray(levels, np.int64), -127, 127)
    if levels.size and np.abs(levels).max() != 127:
        top = int(np.argmax(np.abs(weights)))
        levels.reshape(-1)[top] = 127 if weights.reshape(-1)[top] >= 0 else -127
    return (np.float32(scale) * levels.astype(np.float32)).astype(np.float32)


# ------------------------------------------------------------------------------------------- patches
def _pads(size: int, kernel: int, stride: int, dilation: int, same: bool) -> tuple[int, int]:
    """``(output size, padding before)`` of TFLite's SAME / VALID convolution along one axis."""
    effective = (kernel - 1) * dilation + 1
    if not same:
        return (size - effective) // stride + 1, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return out, total // 2


def _patches(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
             same: bool, positions: int, rng: np.random.Generator) -> np.ndarray:
    """Input patches ``[P, kh, kw, C]`` of ``positions`` random output positions of one image ``[H, W, C]``."""
    (oh, top), (ow, left) = (_pads(x.shape[i], kernel[i], stride[i], dilation[i], same) for i in (0, 1))
    ys = rng.integers(0, oh, positions) * stride[0] - top
    xs = rng.integers(0, ow, positions) * stride[1] - left
    ky = np.arange(kernel[0]) * dilation[0]
    kx = np.arange(kernel[1]) * dilation[1]
    rows = ys[:, None, None] + ky[None, :, None]
    cols = xs[:, None, None] + kx[None, None, :]
    inside = (rows >= 0) & (rows < x.shape[0]) & (cols >= 0) & (cols < x.shape[1])
    picked = x[np.clip(rows, 0, x.shape[0] - 1), np.clip(cols, 0, x.shape[1] - 1)]
    return np.where(inside[..., None], picked, 0.0)


def _geometry(flat: FlatModel, op_index: int) -> tuple[tuple[int, int], tuple[int, int], bool]:
    options = flat.graph.operators[op_index].builtinOptions
    stride = (int(getattr(options, "strideH", 1) or 1), int(getattr(options, "strideW", 1) or 1))
    dilation = (int(getattr(options, "dilationHFactor", 1) or 1), int(getattr(options, "dilationWFactor", 1) or 1))
    return stride, dilation, int(getattr(options, "padding", 0) or 0) == 0  # Padding.SAME = 0


# -------------------------------------------------------------------------------------------- optimise
def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * v))


def optimise_levels(weights: np.ndarray, gram: np.ndarray, scale: float, iterations: int,
                    patches: np.ndarray | None = None) -> np.ndarray:
    """AdaRound levels ``k`` for ``weights`` ``[K, O]`` (or ``[G, K, O]`` groups) given the Gram matrix ``[K, K]``
    (``[G, K, K]``) of the layer's input patches (NumPy, analytic gradients, Adam). With ``patches`` ``[P, K]``
    (``P < K``) the gradient goes through the patches instead of the Gram matrix (cheaper)."""
    w = (np.asarray(weights, np.float64) / scale).astype(np.float32)  # in units of the step
    floor = np.floor(w)
    rest = np.clip(w - floor, 1e-4, 1 - 1e-4)
    v = (-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)).astype(np.float32)  # h(v) = rest: the float weight
    trace = float(np.trace(gram.reshape(-1, *gram.shape[-2:]).sum(axis=0)))
    norm = 1.0 / max(trace, 1e-12) / w.shape[-1]
    g = (gram * norm).astype(np.float32)
    x = None if patches is None else (patches * np.sqrt(norm)).astype(np.float32)
    m, s2 = np.zeros_like(v), np.zeros_like(v)
    warm = int(0.2 * iterations)
    for i in range(1, iterations + 1):
        sig = _sigmoid(v)
        raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(raw, 0.0, 1.0)
        level = floor + h
        delta = np.clip(level, -127, 127) - w
        gd = g @ delta if x is None else x.T @ (x @ delta)
        grad_h = 2.0 * gd * ((level > -127) & (level < 127))
        if i > warm:
            beta = 20.0 + (2.0 - 20.0) * (i - warm) / max(iterations - warm, 1)
            centred = 2.0 * h - 1.0
            grad_h += ADAROUND_LAMBDA / w.size * (-2.0 * beta * np.abs(centred) ** (beta - 1) * np.sign(centred))
        grad = grad_h * ((raw > 0) & (raw < 1)) * (ZETA - GAMMA) * sig * (1.0 - sig)
        m = 0.9 * m + 0.1 * grad
        s2 = 0.999 * s2 + 0.001 * grad * grad
        v -= ADAROUND_LR * (m / (1 - 0.9 ** i)) / (np.sqrt(s2 / (1 - 0.999 ** i)) + 1e-8)
    return (floor + (v >= 0)).astype(np.int64)


# ------------------------------------------------------------------------------------------------- API
def _layer_inputs(quantized: bytes, names: list[str], images: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Dequantized int8 values of the named tensors in the int8 model, per image."""
    from segzoo.quantization.ranges import float_interpreter

    interpreter = float_interpreter(quantized)
    details = {t["name"]: t for t in interpreter.get_tensor_details()}
    model_input = interpreter.get_input_details()[0]
    found = {n: details[n] for n in names if n in details}
    values: dict[str, list[np.ndarray]] = {n: [] for n in found}
    for image in images:
        interpreter.set_tensor(model_input["index"], image[None].astype(np.float32))
        interpreter.invoke()
        for name, detail in found.items():
            raw = interpreter.get_tensor(detail["index"])[0]
            params = detail["quantization_parameters"]
            if len(params["scales"]) == 1 and raw.dtype != np.float32:
                raw = (raw.astype(np.float32) - float(params["zero_points"][0])) * float(params["scales"][0])
            values[name].append(np.asarray(raw, np.float32))
    return values


def _single_thread_blas() -> Any:
    """BLAS limited to one thread: the loop runs thousands of small products, which threads only slow down
    (200x on a busy 2-core machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional speed-up
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def adaround(calibrated: bytes, images: np.ndarray, iterations: int = 300,
             granularity: str = "per_tensor") -> tuple[bytes, dict]:
    """The calibrated model with every convolution's weights snapped onto AdaRound levels; a report.

    Report: ``layers`` (weight tensors rounded), ``iterations``, ``images``, ``flipped`` (fraction of weights
    rounded away from nearest), ``recon_gain`` (median over layers of the reconstruction error ratio,
    AdaRound / nearest, on the sampled patches).
    """
    from segzoo.quantization.converter import quantize_calibrated

    images = np.asarray(images, np.float32)[:ADAROUND_IMAGES]
    flat = FlatModel(calibrated)
    targets = [op for op in flat.ops if op.name in WEIGHT_INPUT and flat.is_constant(op.inputs[1])]
    quantized = quantize_calibrated(calibrated, granularity=granularity, input_type="float", output_type="float")
    inputs = _layer_inputs(quantized, [flat.tensor_name(op.inputs[0]) for op in targets], images)
    rng = np.random.default_rng(0)
    report: dict[str, Any] = {"layers": 0, "iterations": iterations, "images": int(len(images)), "flipped": 0.0,
                              "recon_gain": None}
    flipped, total, gains = 0, 0, []
    blas = _single_thread_blas()
    for op in targets:
        name = flat.tensor_name(op.inputs[0])
        if name not in inputs or not inputs[name]:
            continue
        weights = flat.array(op.inputs[1])
        scale = weight_scale(weights)
        if scale <= 0:
            continue
        with blas:
            levels, gain, shift = _round_layer(flat, op, weights, scale, inputs[name], iterations, rng)
        snapped = snap(weights, levels, scale)
        flat.set_array(op.inputs[1], snapped)
        if len(op.inputs) > 2 and op.inputs[2] >= 0 and flat.is_constant(op.inputs[2]):
            bias = flat.array(op.inputs[2])
            if bias.shape == shift.shape:  # the new weights' mean output shift goes out of the bias
                flat.set_array(op.inputs[2], bias - shift)
        nearest = np.clip(np.round(weights / scale), -127, 127)
        flipped += int(np.count_nonzero(levels.reshape(weights.shape) != nearest))
        total += weights.size
        gains.append(gain)
        report["layers"] += 1
    report["flipped"] = flipped / max(total, 1)
    report["recon_gain"] = float(np.median(gains)) if gains else None
    log.info("AdaRound: %d layers, %.1f%% of weights rounded away from nearest, median reconstruction error "
             "ratio %.3f", report["layers"], 100 * report["flipped"], report["recon_gain"] or 0.0)
    return flat.to_bytes(), report


def _round_layer(flat: FlatModel, op: Any, weights: np.ndarray, scale: float, inputs: list[np.ndarray],
                 iterations: int, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
    """AdaRound levels of one op's weights (in the weights' own layout), the reconstruction error ratio and the
    mean output shift the new weights cause on the sampled inputs (per output channel)."""
    if op.name == "FULLY_CONNECTED":
        x = np.concatenate([i.reshape(-1, weights.shape[1]) for i in inputs]).astype(np.float64)
        w = weights.T  # [K, O]
        gram = x.T @ x
        levels = optimise_levels(w, gram, scale, iterations, x if 2 * len(x) < x.shape[1] else None)
        return levels.T, _gain(w, levels, gram, scale), x.mean(axis=0) @ (scale * levels - w)
    stride, dilation, same = _geometry(flat, op.index)
    kh, kw = weights.shape[1], weights.shape[2]
    patches = np.concatenate([_patches(i, (kh, kw), stride, dilation, same, ADAROUND_POSITIONS, rng)
                              for i in inputs]).astype(np.float64)  # [P, kh, kw, C]
    if op.name == "DEPTHWISE_CONV_2D":
        channels = weights.shape[3]
        multiplier = channels // patches.shape[3]
        x = np.repeat(patches, multiplier, axis=3).reshape(len(patches), kh * kw, channels)
        gram = np.einsum("pkc,plc->ckl", x, x)  # one [K, K] per channel
        w = weights.reshape(kh * kw, channels).T[:, :, None]  # [C, K, 1]
        levels = optimise_levels(w, gram, scale, iterations)
        shift = np.einsum("ck,kc->c", (scale * levels - w)[:, :, 0], x.mean(axis=0))
        return levels[:, :, 0].T.reshape(weights.shape), _gain(w, levels, gram, scale), shift
    x = patches.reshape(len(patches), -1)
    gram = x.T @ x
    w = weights.reshape(weights.shape[0], -1).T  # [K, O]
    levels = optimise_levels(w, gram, scale, iterations, x if 2 * len(x) < x.shape[1] else None)
    return levels.T.reshape(weights.shape), _gain(w, levels, gram, scale), x.mean(axis=0) @ (scale * levels - w)


def _gain(w: np.ndarray, levels: np.ndarray, gram: np.ndarray, scale: float) -> float:
    """Reconstruction error of AdaRound levels over that of nearest rounding (``tr(dw^T G dw)``)."""
    def error(delta: np.ndarray) -> float:
        return float(np.sum(delta * (gram @ delta)))

    nearest = error(scale * np.clip(np.round(w / scale), -127, 127) - w)
    return error(scale * np.clip(levels, -127, 127) - w) / nearest if nearest > 0 else 1.0
