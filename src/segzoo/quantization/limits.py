"""Requantization limits: every int8 op's rescale factor within what the int8 kernels accept.

An int8 op computes in int32 and rescales to its output's grid by ``input_scale * weight_scale / output_scale``
(convolutions, fully connected), ``input_scale / output_scale`` (ADD, SUB) or ``scale_a * scale_b /
output_scale`` (MUL). TFLite's reference kernels take any factor, but XNNPACK (LiteRT's default CPU delegate on
the host, and on a board whose TFLite build enables it) refuses to prepare a model with a factor of 256 or more,
and the whole model then fails to load. Such factors come from an output whose calibrated range is tiny next to
its inputs: a channel group that stays almost dead on every calibration image (a squeeze-excitation branch whose
ReLU output is ~0, for example). Widening that output's range to ``MAX_FACTOR`` removes the failure and costs nothing measurable: the
values the range held are kept (the range only grows), only their int8 step is coarser, and the outputs that were
~0 stay ~0.

:func:`respect_limits` edits the calibrated float flatbuffer (:func:`converter.calibrate`) before the MLIR
quantizer turns it into int8; the converter applies it to every model it quantizes. Shared-scale groups (the
quantizer gives a concatenation's inputs and output one scale, for example) are widened together.
"""

from __future__ import annotations

import logging

import numpy as np

from segzoo.quantization.flatbuffer import FlatModel

log = logging.getLogger(__name__)

MAX_FACTOR = 128.0
"""Largest rescale factor left in a model: half of XNNPACK's limit (256), a margin for the quantizer's nudging of
zero points, which changes scales slightly."""
WEIGHT_OPS: dict[str, tuple[int, int]] = {"CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1), "FULLY_CONNECTED": (0, 1),
                                          "TRANSPOSE_CONV": (2, 1)}
"""Op -> (index of its activation input, index of its weights)."""


def _scale(flat: FlatModel, tensor: int) -> float | None:
    """The int8 scale the quantizer derives from a tensor's range (zero included), None without a range."""
    if flat.is_constant(tensor):
        if int(flat.graph.tensors[tensor].type) != 0:  # not float32: not quantized by the converter
            return None
        values = flat.array(tensor)
        low, high = float(min(values.min(), 0.0)), float(max(values.max(), 0.0))
        return (high - low) / 255.0
    bounds = flat.min_max(tensor)
    if bounds is None:
        return None
    return (max(bounds[1], 0.0) - min(bounds[0], 0.0)) / 255.0


def _weight_scale(flat: FlatModel, tensor: int) -> float | None:
    """The symmetric int8 scale of a weight tensor (per tensor; the widest channel's for per-channel weights)."""
    if not flat.is_constant(tensor) or int(flat.graph.tensors[tensor].type) != 0:
        return None
    return float(np.abs(flat.array(tensor)).max()) / 127.0


def needed_scale(flat: FlatModel, op) -> float | None:
    """The smallest output scale that keeps this op's rescale factor at or below :data:`MAX_FACTOR`; None for ops
    without a factor to check."""
    if op.name in WEIGHT_OPS:
        data, weights = WEIGHT_OPS[op.name]
        if max(data, weights) >= len(op.inputs) or min(op.inputs[data], op.inputs[weights]) < 0:
            return None
        scales = (_scale(flat, op.inputs[data]), _weight_scale(flat, op.inputs[weights]))
        return None if None in scales else scales[0] * scales[1] / MAX_FACTOR
    inputs = [t for t in op.inputs if t >= 0]
    if op.name in ("ADD", "SUB") and len(inputs) == 2:
        scales = [_scale(flat, t) for t in inputs]
        return None if None in scales else max(scales) / MAX_FACTOR
    if op.name == "MUL" and len(inputs) == 2:
        scales = [_scale(flat, t) for t in inputs]
        return None if None in scales else scales[0] * scales[1] / MAX_FACTOR
    return None


def _widen(flat: FlatModel, tensor: int, scale: float) -> tuple[float, float]:
    """Grow a tensor's range about zero until its scale is ``scale``; the new range."""
    low, high = flat.min_max(tensor) or (0.0, 0.0)
    low, high = min(low, 0.0), max(high, 0.0)
    width = high - low
    if width <= 0:  # never moved on the calibration images: keep its sign if it has one, else symmetric
        low, high = (0.0, 255.0 * scale) if low == 0 else (-127.5 * scale, 127.5 * scale)
    else:
        factor = 255.0 * scale / width
        low, high = low * factor, high * factor
    flat.set_min_max(tensor, low, high)
    return low, high


def respect_limits(calibrated: bytes) -> tuple[bytes, dict]:
    """The calibrated model with every op output whose rescale factor would exceed :data:`MAX_FACTOR` widened
    (ops in execution order, so a widened tensor counts as the next op's input); a report: ``widened``, one entry
    per widened tensor with the op, the factor before and the range before and after; ``max_factor``."""
    from segzoo.quantization.ranges import tied_groups

    flat = FlatModel(calibrated)
    group_of = {t: group for group in tied_groups(flat) for t in group}
    widened: list[dict] = []
    for op in flat.ops:
        if not op.outputs or flat.min_max(op.outputs[0]) is None:
            continue
        need = needed_scale(flat, op)
        current = _scale(flat, op.outputs[0])
        if need is None or current is None or current >= need:
            continue
        factor = float("inf") if current == 0 else need * MAX_FACTOR / current
        for tensor in group_of.get(op.outputs[0], [op.outputs[0]]):
            before = flat.min_max(tensor)
            if before is None or (_scale(flat, tensor) or 0.0) >= need:
                continue
            after = _widen(flat, tensor, need)
            widened.append({"tensor": flat.tensor_name(tensor), "op": op.name, "factor": factor,
                            "range_before": list(before), "range_after": list(after)})
    if widened:
        log.info("Requantization limits: %d output range(s) widened so that no int8 rescale factor exceeds %.0f "
                 "(XNNPACK refuses 256 or more): %s", len(widened), MAX_FACTOR,
                 ", ".join(f"{w['tensor'].split(';')[0]} (factor {w['factor']:.3g})" for w in widened[:5]))
        return flat.to_bytes(), {"widened": widened, "max_factor": MAX_FACTOR}
    return calibrated, {"widened": [], "max_factor": MAX_FACTOR}
