"""Empirical bias correction (``quantization.bias_correction``; Nagel et al. 2019 §4.2, Finkelstein et al. 2019).

Per-tensor rounding of a layer's weights shifts the mean of its output channels: ``E[W~ x] != E[W x]``. The shift
is measured on calibration images and subtracted from the float bias, so that the int8 layer is unbiased again.

The measurement uses TFLite's numeric-verify debug model (the one behind the per-layer errors of the report):
every quantized op runs next to its float twin **on the same dequantized input**, i.e. with the already quantized
upstream of the network. Per output channel, the mean of ``dequantized int8 output - float output`` over the
calibration pixels where neither output is clipped by the fused activation (ReLU, ReLU6) nor by the int8 range
is the bias of that op; it is subtracted from the op's original float bias in the calibrated model, which is
then re-quantized. ``BIAS_CORRECTION_ROUNDS`` rounds measure again with the corrected upstream (layer-by-layer
effects of the corrections reach the downstream measurements from the second round on).

Only float biases move: weights, activation ranges and the graph stay as they are. The float model is not changed;
the int8 model is closer to it (tests: mean output error on held-out images).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from segzoo.quantization.feeds import as_samples, feeds
from segzoo.quantization.flatbuffer import FUSED_BOUNDS, FlatModel

log = logging.getLogger(__name__)

BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
"""Ops with a float bias, and the position of the bias among their inputs."""
BIAS_CORRECTION_ROUNDS = 2
BIAS_IMAGES = 16
MIN_PIXELS = 16
"""A channel is corrected only when this many unclipped output values were seen."""


def _debug_model(calibrated: bytes, granularity: str) -> bytes:
    from tensorflow.lite.python import convert as tflite_convert

    return bytes(tflite_convert.mlir_quantize(calibrated, disable_per_channel=granularity == "per_tensor",
                                              enable_numeric_verify=True, enable_whole_model_verify=False))


def _verify_pairs(interpreter: Any) -> list[tuple[dict, dict]]:
    """``(quantized tensor, float tensor)`` details of every NumericVerify op."""
    details = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    pairs = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op listing ai-edge-litert offers
        if op["op_name"] == "NumericVerify":
            quant, ref = (details.get(int(i)) or interpreter._get_tensor_details(int(i), 0)  # noqa: SLF001
                          for i in op["inputs"][:2])
            pairs.append((quant, ref))
    return pairs


def channel_bias(calibrated: bytes, images: np.ndarray, granularity: str = "per_tensor") -> dict[str, np.ndarray]:
    """Per-channel mean ``int8 - float`` output error of every biased op, by output tensor name (local errors)."""
    from segzoo.quantization.ranges import float_interpreter

    flat = FlatModel(calibrated)
    producers = flat.producers()
    names = flat.tensor_index()
    interpreter = float_interpreter(_debug_model(calibrated, granularity))
    targets = []
    for quant, ref in _verify_pairs(interpreter):
        op = producers.get(names.get(ref["name"], -1))
        if op is None or op.name not in BIAS_INPUT or len(op.inputs) <= BIAS_INPUT[op.name]:
            continue
        if op.inputs[BIAS_INPUT[op.name]] < 0:
            continue
        params = quant["quantization_parameters"]
        if len(params["scales"]) != 1:
            continue
        scale, zero = float(params["scales"][0]), int(params["zero_points"][0])
        low, high = FUSED_BOUNDS.get(op.fused, (-np.inf, np.inf))
        info = np.iinfo(quant["dtype"])
        low, high = max(low, (info.min - zero) * scale), min(high, (info.max - zero) * scale)
        targets.append((ref["name"], quant["index"], ref["index"], scale, zero, low, high))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for feed in feeds(interpreter, as_samples(images)):
        for index, value in feed:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        for name, qi, ri, scale, zero, low, high in targets:
            ref = interpreter.get_tensor(ri).astype(np.float64)
            deq = (interpreter.get_tensor(qi).astype(np.float64) - zero) * scale
            ref, deq = ref.reshape(-1, ref.shape[-1]), deq.reshape(-1, deq.shape[-1])
            margin = 0.5 * scale
            inside = (ref > low + margin) & (ref < high - margin) & (deq > low + margin) & (deq < high - margin)
            sums[name] = sums.get(name, 0.0) + np.where(inside, deq - ref, 0.0).sum(axis=0)
            counts[name] = counts.get(name, 0) + inside.sum(axis=0)
    return {name: np.where(counts[name] >= MIN_PIXELS, sums[name] / np.maximum(counts[name], 1), 0.0)
            for name in sums}


def correct_biases(calibrated: bytes, images: np.ndarray, granularity: str = "per_tensor",
                   rounds: int = BIAS_CORRECTION_ROUNDS) -> tuple[bytes, dict]:
    """The calibrated model with every biased op's float bias corrected; a report.

    The float twin of each op in the debug model uses the same (edited) bias as the int8 op, so each round
    measures the full local error again and sets ``bias = original bias - measured error``; the second round
    only refines the measurement with the corrected upstream.

    Report: ``ops`` (ops corrected), ``rounds``, ``images``, ``mean_abs_shift`` (per round: mean |bias shift|
    over all corrected channels, in units of the output's int8 step), ``largest`` (up to 10 ops with the largest
    mean |shift| in output steps).
    """
    images = as_samples(images)[:BIAS_IMAGES]
    report: dict[str, Any] = {"ops": 0, "rounds": rounds, "images": int(len(images)), "mean_abs_shift": [],
                              "largest": []}
    original = FlatModel(calibrated)
    names = original.tensor_index()
    producers = original.producers()
    shifts: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        errors = channel_bias(calibrated, images, granularity)
        flat = FlatModel(calibrated)
        for name, error in errors.items():
            bias_index = producers[names[name]].inputs[BIAS_INPUT[producers[names[name]].name]]
            bias = original.array(bias_index)
            if bias.shape == error.shape:
                flat.set_array(bias_index, bias - error)
                shifts[name] = error
        calibrated = flat.to_bytes()
        steps = [np.abs(e) / s for n, e in shifts.items() if (s := _output_step(original, names[n])) > 0]
        report["mean_abs_shift"].append(float(np.mean(np.concatenate(steps))) if steps else 0.0)
    rows = [{"tensor": n, "mean_abs_shift_steps": float(np.mean(np.abs(e)) / s)}
            for n, e in shifts.items() if (s := _output_step(original, names[n])) > 0]
    report["ops"] = len(shifts)
    report["largest"] = sorted(rows, key=lambda r: r["mean_abs_shift_steps"], reverse=True)[:10]
    log.info("bias correction: %d ops, mean |shift| per round %s output steps", report["ops"],
             ", ".join(f"{s:.3f}" for s in report["mean_abs_shift"]))
    return calibrated, report


def _output_step(flat: FlatModel, tensor: int) -> float:
    """The int8 step the quantizer will give a tensor with its calibration range."""
    rng = flat.min_max(tensor)
    if rng is None:
        return 0.0
    return (max(rng[1], 0.0) - min(rng[0], 0.0)) / 255.0
