"""What a ``.tflite`` file contains: op types, which ops run in int8, per-channel weights, I/O quantization.

Reads the model with ``ai_edge_litert`` only (no TensorFlow import): the board-side and benchmark code reuse it.

Definitions used in the result of :func:`inspect_tflite`:

- *activation tensor*: a graph input or a tensor produced by an op; every other tensor is a constant (weights,
  biases, shapes).
- an op is *float* when any activation input or output is a floating-point tensor; it is *int8* when all its
  activation inputs are int8/uint8 and none of its outputs is floating point (ARG_MAX int8 -> int64 is int8).
- *compute ops* are all ops except the pure format ones (QUANTIZE, DEQUANTIZE, RESHAPE-like); the NPU runs a model
  entirely when every compute op is int8 and no weight tensor is per-channel (more than one scale).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.io import verified

log = logging.getLogger(__name__)

NON_COMPUTE_OPS = frozenset({"QUANTIZE", "DEQUANTIZE", "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "NumericVerify"})
"""Ops that only change the format or shape of a tensor; left out of ``int8_compute_share``."""


def _dtype_name(dtype: Any) -> str:
    return np.dtype(dtype).name


def _is_float(dtype: Any) -> bool:
    return np.issubdtype(np.dtype(dtype), np.floating)


def _is_int8(dtype: Any) -> bool:
    return np.dtype(dtype) in (np.dtype(np.int8), np.dtype(np.uint8))


def load_interpreter(path: Path) -> Any:
    """A LiteRT interpreter of ``path`` (tensors not allocated); ModelError naming the file if unreadable or damaged
    (sha256 sidecar)."""
    from ai_edge_litert.interpreter import Interpreter

    verified(path)
    try:
        return Interpreter(model_path=str(path))
    except Exception as exc:  # noqa: BLE001 - any loader failure names the file
        raise ModelError(f"{path}: cannot read TFLite model: {type(exc).__name__}: {exc}") from exc


def tensor_table(interpreter: Any) -> dict[int, dict]:
    """Tensor index -> details (name, dtype, shape, quantization_parameters) for subgraph 0."""
    return {int(t["index"]): t for t in interpreter.get_tensor_details()}


def tensor_detail(table: dict[int, dict], interpreter: Any, index: int) -> dict:
    """Details of tensor ``index`` (cached in ``table``; intermediate tensors are looked up one by one)."""
    if index not in table:
        table[index] = interpreter._get_tensor_details(index, 0)  # noqa: SLF001 - no public per-index getter
    return table[index]


def tensor_scales(detail: dict) -> np.ndarray:
    """The quantization scales of a tensor (empty when it is not quantized)."""
    return np.asarray(detail.get("quantization_parameters", {}).get("scales", np.zeros(0)), dtype=np.float64)


def _io_summary(detail: dict) -> dict:
    scales = tensor_scales(detail)
    zero_points = detail.get("quantization_parameters", {}).get("zero_points", np.zeros(0))
    return {
        "name": detail["name"],
        "dtype": _dtype_name(detail["dtype"]),
        "shape": [int(d) for d in detail["shape"]],
        "scale": float(scales[0]) if scales.size else 0.0,
        "zero_point": int(zero_points[0]) if len(zero_points) else 0,
    }


def builtin_op_names() -> frozenset[str]:
    """Names of TFLite's builtin operators (schema enum); any other op name in a model is a custom op."""
    from ai_edge_litert import schema_py_generated as schema

    return frozenset(name for name in vars(schema.BuiltinOperator) if not name.startswith("_"))


def _op_summary(op: dict, table: dict[int, dict], interpreter: Any, activations: set[int]) -> dict:
    """One op: builtin name, tensor names, int8/float flags, per-channel weights."""
    inputs = [int(i) for i in op["inputs"] if i >= 0]
    outputs = [int(i) for i in op["outputs"] if i >= 0]
    act_in = [tensor_detail(table, interpreter, i) for i in inputs if i in activations]
    outs = [tensor_detail(table, interpreter, i) for i in outputs]
    consts = [tensor_detail(table, interpreter, i) for i in inputs if i not in activations]
    is_float = any(_is_float(t["dtype"]) for t in act_in + outs)
    float_out = any(_is_float(t["dtype"]) for t in outs)
    is_int8 = bool(act_in) and all(_is_int8(t["dtype"]) for t in act_in) and not float_out
    per_channel = [t["name"] for t in consts if tensor_scales(t).size > 1]
    return {
        "index": int(op["index"]),
        "name": op["op_name"],
        "tensor": outs[0]["name"] if outs else "",
        "inputs": [tensor_detail(table, interpreter, i)["name"] for i in inputs],
        "outputs": [t["name"] for t in outs],
        "int8": is_int8,
        "float": is_float,
        "per_channel": bool(per_channel),
        "per_channel_weights": per_channel,
    }


def inspect_tflite(path: str | Path) -> dict:
    """Summary of a ``.tflite`` file (see the module docstring for the definitions).

    Keys: ``ops`` (per op: ``index``, ``name`` (builtin op name), ``tensor`` (first output tensor name, the name
    ``convert(float_layers=...)`` accepts), ``inputs``/``outputs`` (tensor names), ``int8``, ``float``,
    ``per_channel``, ``per_channel_weights``), ``op_histogram``, ``int8_compute_share``, ``per_channel_tensors``,
    ``has_per_channel``, ``input``/``output`` (``name``, ``dtype``, ``shape``, ``scale``, ``zero_point``; first
    input/output), ``inputs``/``outputs`` (all of them), ``size_bytes``, ``float_ops`` (output tensor names of the
    compute ops that run in float), ``custom_ops`` (names of the ops that are not TFLite builtins, sorted).
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: TFLite file not found")
    interpreter = load_interpreter(path)
    table = tensor_table(interpreter)
    raw_ops = interpreter._get_ops_details()  # noqa: SLF001 - the only op listing ai-edge-litert offers
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    activations = {int(d["index"]) for d in inputs}
    for op in raw_ops:
        activations.update(int(i) for i in op["outputs"] if i >= 0)
    ops = [_op_summary(op, table, interpreter, activations) for op in raw_ops]
    compute = [op for op in ops if op["name"] not in NON_COMPUTE_OPS]
    per_channel_tensors = sorted(t["name"] for t in table.values() if tensor_scales(t).size > 1)
    return {
        "ops": ops,
        "op_histogram": dict(Counter(op["name"] for op in ops)),
        "int8_compute_share": (sum(op["int8"] for op in compute) / len(compute)) if compute else 0.0,
        "per_channel_tensors": per_channel_tensors,
        "has_per_channel": bool(per_channel_tensors),
        "input": _io_summary(inputs[0]) if inputs else {},
        "output": _io_summary(outputs[0]) if outputs else {},
        "inputs": [_io_summary(d) for d in inputs],
        "outputs": [_io_summary(d) for d in outputs],
        "size_bytes": path.stat().st_size,
        "float_ops": [op["tensor"] for op in compute if op["float"]],
        "custom_ops": sorted({op["name"] for op in ops} - builtin_op_names()),
    }


def npu_ready(summary: dict) -> bool:
    """True when every compute op is int8 and no tensor is per-channel (what the STM32MP2 NPU runs entirely)."""
    return summary["int8_compute_share"] == 1.0 and not summary["has_per_channel"]
