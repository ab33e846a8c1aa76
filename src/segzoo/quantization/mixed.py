"""Automatic mixed precision: find the few layers whose int8 quantization costs the most and keep them in float.

:func:`layer_errors` measures each op's *local* quantization error with TFLite's numeric-verify debug model
(the mechanism of ``tf.lite.experimental.QuantizationDebugger``, run here with ai-edge-litert): every quantized op
runs next to its float twin on the same (dequantized) input, and the difference of their outputs is recorded.
The ranking metric is ``rmse / scale`` (the error in units of the output's quantization step): about
``1/sqrt(12) = 0.29`` for an op whose only error is the final rounding, much larger when its weights or inputs
quantize badly. Keeping such an op in float removes that excess; the final rounding stays (the next int8 op
re-quantizes its output).

:func:`search_float_layers` adds the worst layers to the float list in growing batches (1, 2, 4, ...), asks
``evaluate_fn`` for the validation mIoU of each candidate, and stops as soon as the drop from the float mIoU is
within budget; the last batch is then bisected so that no more layers than needed stay in float.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from segzoo.errors import ModelError
from segzoo.quantization.feeds import feeds
from segzoo.quantization.converter import GRANULARITIES, Representative, calibrate, tensor_layers

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

IDEAL_RMSE_PER_SCALE = 1.0 / np.sqrt(12.0)


# ---------------------------------------------------------------------------------------- layer errors
def _debug_model(calibrated: bytes, granularity: str) -> bytes:
    """The quantized model with a NumericVerify op after every quantized op (layer-by-layer mode)."""
    from tensorflow.lite.python import convert as tflite_convert

    return bytes(tflite_convert.mlir_quantize(calibrated, disable_per_channel=granularity == "per_tensor",
                                              enable_numeric_verify=True, enable_whole_model_verify=False))


class _Stats:
    """Running sums of one NumericVerify output (error = float - dequantized) and of its float reference."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.sum_sq = 0.0
        self.max_abs = 0.0
        self.low = np.inf
        self.high = -np.inf

    def add(self, error: np.ndarray, reference: np.ndarray) -> None:
        error = error.astype(np.float64, copy=False)
        self.count += error.size
        self.sum += float(error.sum())
        self.sum_sq += float(np.square(error).sum())
        self.max_abs = max(self.max_abs, float(np.abs(error).max(initial=0.0)))
        self.low = min(self.low, float(reference.min(initial=np.inf)))
        self.high = max(self.high, float(reference.max(initial=-np.inf)))


def _verify_ops(interpreter: object) -> list[dict]:
    """``{"out", "quant", "float"}`` tensor details of every NumericVerify op."""
    details = {int(t["index"]): t for t in interpreter.get_tensor_details()}

    def tensor(index: int) -> dict:
        return details.get(index) or interpreter._get_tensor_details(index, 0)  # noqa: SLF001

    found = []
    for op in interpreter._get_ops_details():  # noqa: SLF001 - the only op listing ai-edge-litert offers
        if op["op_name"] == "NumericVerify":
            quant, ref = (tensor(int(i)) for i in op["inputs"][:2])
            found.append({"out": tensor(int(op["outputs"][0])), "quant": quant, "float": ref})
    return found


def _producers(interpreter: object) -> dict[int, str]:
    """Tensor index -> builtin name of the op writing it."""
    return {int(i): op["op_name"] for op in interpreter._get_ops_details() for i in op["outputs"]}  # noqa: SLF001


def _run_debug_model(debug_model: bytes, representative: Representative) -> tuple[list[dict], list[_Stats]]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # No XNNPACK: delegated partitions would hide the intermediate tensors and rename the ops DELEGATE.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "preserve_all_tensors is for debugging": it is
        interpreter = Interpreter(model_content=debug_model, experimental_preserve_all_tensors=True,
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    verify = _verify_ops(interpreter)
    if not verify:
        raise ModelError("layer_errors: the debug model has no NumericVerify op (nothing was quantized).")
    stats = [_Stats() for _ in verify]
    images = 0
    for feed in feeds(interpreter, representative()):
        for index, value in feed:
            interpreter.set_tensor(index, value)
        interpreter.invoke()
        for entry, stat in zip(verify, stats):
            stat.add(interpreter.get_tensor(entry["out"]["index"]), interpreter.get_tensor(entry["float"]["index"]))
        images += 1
    if images == 0:
        raise ModelError("no calibration data: layer_errors needs representative images.")
    producers = _producers(interpreter)
    for entry in verify:
        entry["op"] = producers.get(int(entry["quant"]["index"]), "")
    return verify, stats


def _row(entry: dict, stat: _Stats) -> dict:
    scales = entry["quant"]["quantization_parameters"]["scales"]
    scale = float(scales[0]) if len(scales) else 0.0
    rmse = float(np.sqrt(stat.sum_sq / max(stat.count, 1)))
    tensor = entry["float"]["name"]
    return {
        "tensor": tensor,
        "layers": tensor_layers(tensor),
        "op": entry["op"],
        "rmse": rmse,
        "scale": scale,
        "rmse_per_scale": rmse / scale if scale > 0 else float("inf"),
        "mean_error": stat.sum / max(stat.count, 1),
        "max_abs_error": stat.max_abs,
        "range": [stat.low, stat.high],
    }


def layer_errors(model: "keras.Model", representative: Representative | None, *, granularity: str = "per_tensor",
                 calibrated: bytes | None = None) -> list[dict]:
    """Per-op local quantization error, worst (largest ``rmse_per_scale``) first.

    Each row: ``tensor`` (the op's output tensor name: pass it to ``convert(float_layers=...)``), ``layers``
    (Keras layers fused into the op), ``op`` (builtin op), ``rmse``, ``scale`` (output quantization step),
    ``rmse_per_scale``, ``mean_error``, ``max_abs_error``, ``range`` (float output min/max). ``calibrated``
    (a :func:`converter.calibrate` result for ``model``) skips the calibration.
    """
    if granularity not in GRANULARITIES:
        raise ModelError(f"granularity={granularity!r} is not supported; choose one of {', '.join(GRANULARITIES)}.")
    if representative is None:
        raise ModelError("no calibration data: layer_errors needs representative images.")
    calibrated = calibrated if calibrated is not None else calibrate(model, representative)
    verify, stats = _run_debug_model(_debug_model(calibrated, granularity), representative)
    rows = sorted((_row(e, s) for e, s in zip(verify, stats)), key=lambda r: r["rmse_per_scale"], reverse=True)
    log.info("layer_errors (%s): worst %s", granularity,
             ", ".join(f"{(r['layers'] or [r['tensor']])[-1]}={r['rmse_per_scale']:.2f}" for r in rows[:5]))
    return rows


# ---------------------------------------------------------------------------------------------- search
def _batches(names: list[str], max_layers: int) -> list[list[str]]:
    """Cumulative candidate lists growing by 1, 2, 4, ... layers, capped at ``max_layers``."""
    candidates, size, end = [], 1, 0
    limit = min(max_layers, len(names))
    while end < limit:
        end = min(end + size, limit)
        candidates.append(names[:end])
        size *= 2
    return candidates


def _try(evaluate_fn: Callable[[Sequence[str]], float], layers: list[str], float_miou: float, max_drop: float,
         trace: list[dict]) -> bool:
    miou = float(evaluate_fn(list(layers)))
    drop = float_miou - miou
    ok = drop <= max_drop
    trace.append({"float_layers": list(layers), "miou": miou, "drop": drop, "within_budget": ok})
    log.info("mixed precision: %d float layers -> mIoU %.4f (drop %.4f, %s)", len(layers), miou, drop,
             "ok" if ok else "too large")
    return ok


def _bisect(evaluate_fn: Callable[[Sequence[str]], float], names: list[str], low: int, high: int,
            float_miou: float, max_drop: float, trace: list[dict]) -> int:
    """Smallest prefix length in ``(low, high]`` within budget, knowing ``high`` is and ``low`` is not."""
    while high - low > 1:
        mid = (low + high) // 2
        if _try(evaluate_fn, names[:mid], float_miou, max_drop, trace):
            high = mid
        else:
            low = mid
    return high


def _unique_tensors(errors: list[dict]) -> list[str]:
    names: list[str] = []
    for row in errors:
        if row["tensor"] not in names:
            names.append(row["tensor"])
    return names


def search_float_layers(errors: list[dict], evaluate_fn: Callable[[Sequence[str]], float], *, float_miou: float,
                        max_miou_drop: float, max_float_layers: int) -> tuple[list[str], list[dict]]:
    """The float layers to keep (tensor names, most sensitive first) and the trace of every evaluation.

    ``errors`` is :func:`layer_errors`' list (worst first); ``evaluate_fn(float_layers)`` converts with those
    layers in float and returns the validation mIoU. Candidates grow by 1, 2, 4, ... layers until the drop
    ``float_miou - miou`` is ``<= max_miou_drop`` (then the last batch is bisected to the smallest prefix that
    still fits) or ``max_float_layers`` is reached (then the best candidate tried is returned, with a warning).
    """
    if max_float_layers < 1:
        raise ModelError(f"max_float_layers must be at least 1; got {max_float_layers}.")
    names = _unique_tensors(errors)
    trace: list[dict] = []
    previous = 0
    for candidate in _batches(names, max_float_layers):
        if _try(evaluate_fn, candidate, float_miou, max_miou_drop, trace):
            size = _bisect(evaluate_fn, names, previous, len(candidate), float_miou, max_miou_drop, trace)
            return names[:size], trace
        previous = len(candidate)
    if not trace:
        return [], trace
    best = max(trace, key=lambda t: (t["miou"], -len(t["float_layers"])))
    log.warning("mixed precision: no candidate with at most %d float layers keeps the mIoU drop within %.4f; "
                "best: %d layers, drop %.4f", max_float_layers, max_miou_drop, len(best["float_layers"]),
                best["drop"])
    return list(best["float_layers"]), trace
