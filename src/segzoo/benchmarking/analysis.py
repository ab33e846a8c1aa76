"""Model analysis for every benchmarked model: params, MACs per op, op histogram, peak activation memory.

``.tflite`` files are read with ``ai_edge_litert`` only (no TensorFlow import), on top of
:func:`segzoo.litert.inspect.inspect_tflite` (op list, int8 / per-channel flags, I/O details).
``.keras`` / ``.h5`` models are summarised by :func:`segzoo.models.analysis.summarize`.

Conventions for ``.tflite`` (batch 1; a dynamic dimension counts as 1):

- **MACs** per op, from tensor shapes, as :mod:`segzoo.models.analysis` counts them (bias additions not counted):
  ``CONV_2D`` ``prod(output) * kh * kw * c_in_per_group``; ``DEPTHWISE_CONV_2D`` ``prod(output) * kh * kw``;
  ``FULLY_CONNECTED`` ``prod(output) * in_features``; ``TRANSPOSE_CONV`` ``prod(input[:-1]) * kh * kw * c_in *
  c_out``; ``BATCH_MATMUL`` ``prod(output) * K``. Every other op has 0 MACs. BatchNorm is folded into the
  convolutions by the converter, so the totals equal the Keras MACs of the same model.
- **elementwise** per op (the work of the ops without MACs): one operation per output element; per *input* element
  for reductions and pooling (``MEAN``, ``SUM``, ``REDUCE_*``, ``*_POOL_2D``); 0 for the ops that only change a
  shape (``RESHAPE``, ``SQUEEZE``, ``EXPAND_DIMS``) and for the MAC ops.
- **params**: elements of the constant tensors the model computes with: every constant input of a MAC op
  (weights and biases) and the float / 8-bit constants of other ops; the int32/int64 operands that only give a
  shape, an axis or a size are left out. A constant shared by several ops counts once. Keras' ``count_params``
  is larger: it also counts the BatchNorm statistics that the converter folds away.
- **peak activation memory** (``peak_activation_bytes``): a liveness analysis over the op order. A tensor is an
  activation when it is a graph input or the output of an op; it is alive from the op that writes it (graph
  inputs: from the start) to the last op that reads it (graph outputs: to the end). The peak is the largest sum
  of the bytes of the tensors alive during one op (its inputs that are still needed, its outputs and every tensor
  kept for later ops). This is what an ideal arena allocator needs (no fragmentation, no in-place reuse of a
  RESHAPE); weights are not included (``weight_bytes``).
- **granularity** of a tensor: ``per_channel`` (more than one quantization scale), ``per_tensor`` (an integer
  tensor with one scale), ``float`` (a floating-point tensor) or ``none`` (an integer tensor without
  quantization, e.g. a shape). ``precision`` of the model: ``int8 per-tensor``, ``int8 per-channel``,
  ``float32`` or ``mixed int8/float`` (from the compute ops, see ``inspect_tflite``).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np

from segzoo.errors import ModelError
from segzoo.litert.inspect import inspect_tflite, load_interpreter, tensor_detail, tensor_scales, tensor_table
from segzoo.runners import TFLITE_SUFFIXES, check_model_file

log = logging.getLogger(__name__)

MAC_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"})
"""Ops whose work is counted in MACs."""
SHAPE_OPS = frozenset({"RESHAPE", "SQUEEZE", "EXPAND_DIMS"})
"""Ops that only change a shape: no elementwise work."""
REDUCE_OPS = frozenset({"MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "REDUCE_ANY",
                        "AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"})
"""Ops whose elementwise work is counted per input element."""


# ------------------------------------------------------------------------------------------------- tensors
def _shape(detail: dict) -> list[int]:
    return [max(1, int(d)) for d in detail["shape"]]


def _nbytes(detail: dict) -> int:
    return math.prod(_shape(detail)) * np.dtype(detail["dtype"]).itemsize


def _granularity(detail: dict) -> str:
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return "float"
    scales = tensor_scales(detail)
    if scales.size > 1:
        return "per_channel"
    return "per_tensor" if scales.size == 1 and scales[0] > 0 else "none"


# ---------------------------------------------------------------------------------------------------- MACs
def op_macs(name: str, inputs: list[list[int]], output: list[int]) -> int:
    """MACs of one op from its input shapes (activations and constants, in op order) and first output shape."""
    out = math.prod(output) if output else 0
    if name == "CONV_2D" and len(inputs) > 1:
        return out * math.prod(inputs[1][1:])
    if name == "DEPTHWISE_CONV_2D" and len(inputs) > 1:
        return out * inputs[1][1] * inputs[1][2]
    if name == "FULLY_CONNECTED" and len(inputs) > 1:
        return out * inputs[1][-1]
    if name == "TRANSPOSE_CONV" and len(inputs) > 2:
        return math.prod(inputs[2][:-1]) * math.prod(inputs[1])
    if name == "BATCH_MATMUL" and inputs:
        return out * inputs[0][-1]
    return 0


def op_elementwise(name: str, act_inputs: list[list[int]], output: list[int]) -> int:
    """Elementwise operations of an op without MACs (see the module docstring)."""
    if name in MAC_OPS or name in SHAPE_OPS:
        return 0
    if name in REDUCE_OPS and act_inputs:
        return math.prod(act_inputs[0])
    return math.prod(output) if output else 0


# ---------------------------------------------------------------------------------------------------- graph
def _graph(path: Path) -> tuple[list[dict], dict[int, dict], set[int], list[int], list[int]]:
    """``(raw ops, tensor table, activation indices, graph inputs, graph outputs)`` of subgraph 0."""
    interpreter = load_interpreter(path)
    table = tensor_table(interpreter)
    ops = interpreter._get_ops_details()  # noqa: SLF001 - the only op listing ai-edge-litert offers
    graph_in = [int(d["index"]) for d in interpreter.get_input_details()]
    graph_out = [int(d["index"]) for d in interpreter.get_output_details()]
    activations = set(graph_in)
    for op in ops:
        activations.update(int(i) for i in op["outputs"] if i >= 0)
    for op in ops:  # make sure every tensor an op touches is in the table
        for index in [*op["inputs"], *op["outputs"]]:
            if index >= 0:
                tensor_detail(table, interpreter, int(index))
    return ops, table, activations, graph_in, graph_out


def _is_param(name: str, detail: dict) -> bool:
    """A constant input that is a weight (see ``params`` in the module docstring)."""
    if name in MAC_OPS:
        return True
    dtype = np.dtype(detail["dtype"])
    return np.issubdtype(dtype, np.floating) or dtype in (np.dtype(np.int8), np.dtype(np.uint8))


def _op_row(op: dict, summary: dict, table: dict[int, dict], activations: set[int]) -> dict:
    inputs = [int(i) for i in op["inputs"] if i >= 0]
    outputs = [int(i) for i in op["outputs"] if i >= 0]
    act_in = [i for i in inputs if i in activations]
    consts = [i for i in inputs if i not in activations]
    output_shape = _shape(table[outputs[0]]) if outputs else []
    name = op["op_name"]
    weights = [i for i in consts if _is_param(name, table[i])]
    granularities = {_granularity(table[i]) for i in weights}
    return {
        **summary,
        "output_shape": output_shape,
        "macs": op_macs(name, [_shape(table[i]) for i in inputs], output_shape),
        "elementwise": op_elementwise(name, [_shape(table[i]) for i in act_in], output_shape),
        "input_bytes": sum(_nbytes(table[i]) for i in act_in),
        "output_bytes": sum(_nbytes(table[i]) for i in outputs),
        "weight_bytes": sum(_nbytes(table[i]) for i in weights),
        "weight_granularity": ("per_channel" if "per_channel" in granularities else
                               "float" if "float" in granularities else
                               "per_tensor" if "per_tensor" in granularities else "none"),
        "act_inputs": act_in,
        "act_outputs": outputs,
        "weights": weights,
    }


# ------------------------------------------------------------------------------------------------ liveness
def activation_liveness(ops: list[dict], sizes: dict[int, int], graph_in: list[int],
                        graph_out: list[int]) -> tuple[int, int, list[int]]:
    """``(peak bytes, op index of the peak, alive bytes per op)`` (method in the module docstring).

    ``ops`` rows need ``act_inputs`` and ``act_outputs`` (tensor indices); ``sizes`` maps a tensor to its bytes.
    """
    end = len(ops)
    first = {t: -1 for t in graph_in}
    last: dict[int, int] = {}
    for i, op in enumerate(ops):
        for t in op["act_outputs"]:
            first.setdefault(t, i)
            last.setdefault(t, i)
        for t in op["act_inputs"]:
            last[t] = i
    for t in graph_out:
        last[t] = end
    alive = [sum(sizes[t] for t, start in first.items() if start <= i <= last.get(t, start)) for i in range(end)]
    if not alive:
        return 0, -1, []
    peak_at = int(np.argmax(alive))
    return int(alive[peak_at]), peak_at, alive


# ------------------------------------------------------------------------------------------------- results
def _tensor_rows(table: dict[int, dict], activations: set[int], used: set[int]) -> list[dict]:
    return [{
        "name": table[i]["name"],
        "kind": "activation" if i in activations else "constant",
        "dtype": np.dtype(table[i]["dtype"]).name,
        "shape": _shape(table[i]),
        "bytes": _nbytes(table[i]),
        "granularity": _granularity(table[i]),
    } for i in sorted(used)]


def _precision(summary: dict) -> str:
    if summary["has_per_channel"]:
        return "int8 per-channel" if not summary["float_ops"] else "mixed int8 per-channel/float"
    share = summary["int8_compute_share"]
    if share == 1.0:
        return "int8 per-tensor"
    return "float32" if share == 0.0 else "mixed int8/float"


def _public_op(row: dict) -> dict:
    """An op row without the tensor indices used internally."""
    return {k: v for k, v in row.items() if k not in ("act_inputs", "act_outputs", "weights")}


def analyze_tflite(path: str | Path) -> dict:
    """Analysis of a ``.tflite`` file (conventions in the module docstring); ModelError if it cannot be read.

    Keys: ``format``, ``path``, ``size_bytes``, ``precision``, ``params``, ``macs``, ``elementwise``,
    ``op_histogram``, ``macs_by_op_type``, ``ops`` (per op: ``inspect_tflite`` fields plus ``output_shape``,
    ``macs``, ``elementwise``, ``input_bytes``, ``output_bytes``, ``weight_bytes``, ``weight_granularity``,
    ``alive_bytes``), ``peak_activation_bytes``, ``peak_activation_op``, ``weight_bytes``, ``tensors`` (name, kind,
    dtype, shape, bytes, granularity), ``granularity_counts`` (per kind), ``input``/``output``/``inputs``/``outputs``,
    ``int8_compute_share``, ``has_per_channel``, ``custom_ops`` (ops that are not TFLite builtins).
    """
    path = Path(path)
    summary = inspect_tflite(path)
    raw_ops, table, activations, graph_in, graph_out = _graph(path)
    rows = [_op_row(op, s, table, activations) for op, s in zip(raw_ops, summary["ops"], strict=True)]
    sizes = {t: _nbytes(table[t]) for t in activations}
    peak, peak_at, alive = activation_liveness(rows, sizes, graph_in, graph_out)
    params = {t for r in rows for t in r["weights"]}
    used = activations | params
    tensors = _tensor_rows(table, activations, used)
    macs_by_type: Counter = Counter()
    for r in rows:
        macs_by_type[r["name"]] += r["macs"]
    return {
        "format": "tflite",
        "path": str(path),
        "size_bytes": summary["size_bytes"],
        "precision": _precision(summary),
        "params": sum(math.prod(_shape(table[t])) for t in params),
        "macs": sum(r["macs"] for r in rows),
        "elementwise": sum(r["elementwise"] for r in rows),
        "op_histogram": summary["op_histogram"],
        "macs_by_op_type": {k: v for k, v in macs_by_type.items() if v},
        "ops": [{**_public_op(r), "alive_bytes": a} for r, a in zip(rows, alive, strict=True)],
        "peak_activation_bytes": peak,
        "peak_activation_op": peak_at,
        "weight_bytes": sum(_nbytes(table[t]) for t in params),
        "tensors": tensors,
        "granularity_counts": {kind: dict(Counter(t["granularity"] for t in tensors if t["kind"] == kind))
                               for kind in ("activation", "constant")},
        "input": summary["input"],
        "output": summary["output"],
        "inputs": summary["inputs"],
        "outputs": summary["outputs"],
        "int8_compute_share": summary["int8_compute_share"],
        "has_per_channel": summary["has_per_channel"],
        "custom_ops": summary["custom_ops"],
    }


def analyze_keras(path: str | Path) -> dict:
    """``segzoo.models.analysis.summarize`` of a ``.keras``/``.h5`` model plus its file size; ModelError on failure."""
    import keras

    from segzoo.models.analysis import summarize
    from segzoo.models.registry import custom_objects

    path = Path(path)
    try:
        model = keras.saving.load_model(str(path), compile=False, custom_objects=custom_objects())
    except Exception as exc:  # noqa: BLE001 - any loader failure names the file
        raise ModelError(f"{path}: cannot load Keras model: {type(exc).__name__}: {exc}") from exc
    return {"format": path.suffix.lstrip("."), "path": str(path), "size_bytes": path.stat().st_size,
            "precision": "float32", **summarize(model)}


def analyze_model(path: str | Path) -> dict:
    """:func:`analyze_tflite` or :func:`analyze_keras` by file suffix; ModelError for a missing or unknown file."""
    path = check_model_file(path)
    return analyze_tflite(path) if path.suffix.lower() in TFLITE_SUFFIXES else analyze_keras(path)
