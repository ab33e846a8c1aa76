"""Activation ranges chosen by error (``quantization.activation_ranges``: ``minmax`` | ``percentile`` | ``mse``).

The TFLite converter calibrates every activation tensor with the plain min/max over the calibration images: one
rare outlier pixel sets the int8 step of the whole tensor. Here the calibrated float model
(:func:`converter.calibrate`) is run in float on calibration images with every intermediate tensor kept, a
seeded sample of each activation tensor's values is collected, and each tensor's range is chosen:

- ``percentile``: ``[P(100 - p), P(p)]`` of the values (``quantization.activation_percentile``, default 99.99),
  never wider than the min/max;
- ``mse``: the range ``[a * min, b * max]`` (``a, b`` on a geometric grid in ``[MSE_LOW_FACTOR, 1]``) whose int8
  quantization (TFLite's asymmetric grid, zero point nudged) has the smallest mean squared error on the values
  (clipping error included), computed on a ``HISTOGRAM_BINS``-bin histogram of them.

Tensors that the quantizer gives one common scale are chosen together over the union of their values:
the inputs and output of every "same scale" op (``SAME_SCALE_OPS``: concatenation, pooling, resize, pad,
reshape, ...). Model inputs (their scale is the input's pixel mapping), constants and ops with a fixed output
range (logistic, softmax, tanh) keep the converter's values. The new min/max are written into the calibrated
flatbuffer, which the MLIR quantizer then turns into int8 (:func:`converter.quantize_calibrated`): only the
chosen tensors' scales change (tested).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.quantization.feeds import as_samples, feeds
from segzoo.quantization.flatbuffer import FlatModel

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("minmax", "percentile", "mse")
SAME_SCALE_OPS = frozenset({"CONCATENATION", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "MAX_POOL_2D", "AVERAGE_POOL_2D",
                            "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "PAD", "PADV2", "TRANSPOSE",
                            "STRIDED_SLICE", "SLICE", "SPACE_TO_DEPTH", "DEPTH_TO_SPACE", "SPLIT", "GATHER",
                            "SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND"})
FIXED_RANGE_OPS = frozenset({"LOGISTIC", "TANH", "SOFTMAX", "LOG_SOFTMAX"})
RANGE_IMAGES = 32
"""Calibration images whose activations are sampled for the range search."""
SAMPLES_PER_IMAGE = 4096
"""Values kept per tensor and image (all of them when the tensor is smaller)."""
HISTOGRAM_BINS = 8192
MSE_LOW_FACTOR = 0.02
MSE_STEPS = 40
MIN_CHANGE = 1e-3
"""A range is rewritten only when one of its ends moves by more than this fraction of the min/max width."""


# ----------------------------------------------------------------------------------------- statistics
def float_interpreter(content: bytes) -> Any:
    """A LiteRT interpreter over ``content`` that keeps every intermediate tensor (no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_content=content, experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def activation_samples(calibrated: bytes, images: np.ndarray, tensors: list[int], seed: int = 0,
                       per_image: int = SAMPLES_PER_IMAGE) -> dict[int, np.ndarray]:
    """A seeded sample of each listed tensor's float values over ``images`` (float32 ``[N,H,W,C]``, or dicts of
    named inputs for a model with several: :mod:`segzoo.quantization.feeds`)."""
    interpreter = float_interpreter(calibrated)
    rng = np.random.default_rng(seed)
    parts: dict[int, list[np.ndarray]] = {t: [] for t in tensors}
    for feed in feeds(interpreter, as_samples(images)):
        for index, value in feed:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        for t in tensors:
            flat = interpreter.get_tensor(t).reshape(-1)
            if flat.size > per_image:
                flat = flat[rng.integers(0, flat.size, per_image)]
            parts[t].append(np.asarray(flat, np.float32))
    return {t: np.concatenate(v) if v else np.zeros(0, np.float32) for t, v in parts.items()}


# ------------------------------------------------------------------------------------------- groups
def tied_groups(flat: FlatModel) -> list[list[int]]:
    """Activation tensors (op outputs) grouped by the quantizer's shared-scale constraints, in op order."""
    parent: dict[int, int] = {}

    def find(t: int) -> int:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    for op in flat.ops:
        for t in op.outputs:
            find(t)
        if op.name in SAME_SCALE_OPS:
            data = [t for t in op.inputs if t >= 0 and not flat.is_constant(t)]
            if op.name != "CONCATENATION":
                data = data[:1]
            for t in data + op.outputs[1:]:
                union(t, op.outputs[0])
    groups: dict[int, list[int]] = {}
    for t in parent:
        groups.setdefault(find(t), []).append(t)
    return [sorted(g) for g in groups.values()]


def _eligible(flat: FlatModel, group: list[int]) -> bool:
    producers = flat.producers()
    if any(t in flat.inputs for t in group):
        return False
    if any(t in producers and producers[t].name in FIXED_RANGE_OPS for t in group):
        return False
    return all(flat.min_max(t) is not None for t in group)


# -------------------------------------------------------------------------------------------- search
def quantization_mse(values: np.ndarray, lows: np.ndarray, highs: np.ndarray,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """MSE of TFLite's int8 activation quantization of ``values`` (optionally weighted: histogram bin centres and
    counts) for each candidate range ``[low, high]``."""
    lows = np.minimum(np.asarray(lows, np.float64), 0.0)
    highs = np.maximum(np.asarray(highs, np.float64), 0.0)
    scale = np.maximum(highs - lows, 1e-12) / 255.0
    zero = np.clip(np.round(-128.0 - lows / scale), -128, 127)
    x = np.asarray(values, np.float64)[None, :]
    scale, zero = scale[:, None], zero[:, None]
    # (clip(round(x / scale) + zero) - zero) * scale - x, squared: the same operations in one buffer, in place
    squared = np.divide(x, scale)
    np.round(squared, out=squared)
    squared += zero
    np.clip(squared, -128, 127, out=squared)
    squared -= zero
    squared *= scale
    squared -= x
    np.square(squared, out=squared)
    if weights is None:
        return squared.mean(axis=1)
    return squared @ (np.asarray(weights, np.float64) / max(float(np.sum(weights)), 1.0))


def histogram(values: np.ndarray, low: float, high: float, bins: int = HISTOGRAM_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``(bin centres, counts)`` of ``values`` over ``[low, high]``: the search runs on these."""
    counts, edges = np.histogram(np.clip(values, low, high), bins=bins, range=(low, high))
    return 0.5 * (edges[:-1] + edges[1:]), counts


def mse_range(values: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The ``[a * low, b * high]`` with the smallest int8 quantization MSE on ``values`` (a histogram of them)."""
    factors = np.geomspace(MSE_LOW_FACTOR, 1.0, MSE_STEPS)
    low, high = min(low, 0.0), max(high, 0.0)
    centres, counts = histogram(values, low, high)
    keep = counts > 0
    centres, counts = centres[keep], counts[keep]
    low_f = factors if low < 0 else np.ones(1)
    high_f = factors if high > 0 else np.ones(1)
    lows, highs = (grid.reshape(-1) for grid in np.meshgrid(low * low_f, high * high_f, indexing="ij"))
    errors = np.concatenate([quantization_mse(centres, lows[i:i + 256], highs[i:i + 256], counts)
                             for i in range(0, lows.size, 256)])
    best = int(np.argmin(errors))
    return float(lows[best]), float(highs[best])


def percentile_range(values: np.ndarray, low: float, high: float, percentile: float) -> tuple[float, float]:
    """``[P(100 - p), P(p)]`` of ``values``, inside ``[low, high]``."""
    lo, hi = np.percentile(values, [100.0 - percentile, percentile])
    return max(float(lo), low), min(float(hi), high)


# ----------------------------------------------------------------------------------------------- API
def select_ranges(calibrated: bytes, images: np.ndarray, method: str = "mse",
                  percentile: float = 99.99) -> tuple[bytes, dict]:
    """The calibrated model with each activation range chosen by ``method``, and a report of the changes.

    Report: ``method``, ``tensors`` (activation tensors), ``changed`` and ``changed_tensors`` (the tensors whose
    range was rewritten),
    ``groups`` (shared-scale groups), ``widest_cuts`` (up to 10 rows ``{tensor, minmax, chosen}``, the
    largest relative narrowing first), ``images``.
    """
    if method not in METHODS:
        raise ModelError(f"activation_ranges={method!r} is not supported; choose one of {', '.join(METHODS)}.")
    flat = FlatModel(calibrated)
    groups = tied_groups(flat)
    report: dict[str, Any] = {"method": method, "tensors": sum(len(g) for g in groups), "changed": 0,
                              "groups": len(groups), "widest_cuts": [], "images": int(len(images)),
                              "changed_tensors": []}
    if method == "minmax":
        return calibrated, report
    eligible = [g for g in groups if _eligible(flat, g)]
    samples = activation_samples(calibrated, images[:RANGE_IMAGES], sorted({t for g in eligible for t in g}))
    cuts = []
    for group in eligible:
        ranges = [flat.min_max(t) for t in group]
        low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
        values = np.concatenate([samples[t] for t in group])
        if values.size == 0 or high <= low:
            continue
        chosen = (mse_range(values, low, high) if method == "mse"
                  else percentile_range(values, low, high, percentile))
        width = max(high, 0.0) - min(low, 0.0)
        moved = max(abs(chosen[0] - min(low, 0.0)), abs(chosen[1] - max(high, 0.0))) / width
        if len(group) == 1 and moved <= MIN_CHANGE:
            continue
        for t in group:
            flat.set_min_max(t, *chosen)
            report["changed_tensors"].append(flat.tensor_name(t))
        report["changed"] += len(group)
        cuts.append({"tensor": flat.tensor_name(group[-1]), "minmax": [low, high], "chosen": list(chosen),
                     "narrowing": moved})
    report["widest_cuts"] = sorted(cuts, key=lambda c: c["narrowing"], reverse=True)[:10]
    log.info("activation ranges (%s): %d of %d tensors rewritten", method, report["changed"], report["tensors"])
    return flat.to_bytes(), report
