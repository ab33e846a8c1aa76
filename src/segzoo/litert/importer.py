"""Float ``.tflite`` -> an equivalent functional Keras model (``import_tflite``).

Subgraph 0 of the file is rebuilt op by op (:mod:`segzoo.litert.ops`): one Keras layer per op (two when a
fused activation becomes its own layer), named after the op's output tensor. Constants become layer weights;
float16 weights behind DEQUANTIZE and sparse weights behind DENSIFY become plain float32 weights (those ops
disappear). The model takes float32 inputs with a free batch dimension (the file's batch must be 1) and returns
the file's outputs in the file's order, each named after its output tensor (``Identity``, ``Identity_1``...).

After each op the Keras output shape is checked against the file's tensor shape, so a mistake in padding or
strides stops the import with the op named. :func:`compare_with_interpreter` runs the file in the LiteRT
interpreter and the Keras model on the same inputs and gives the largest difference per output relative to
that output's range.

Errors (``ModelError``, naming the file): an unreadable or truncated file, an already-quantized model (int8/uint8
activations or quantized weights; a float model is needed), an op without a builder (its name, or custom code,
and its index), a constant where an activation is needed or the reverse, shapes that do not match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.litert.flatbuffer import FlatModel, Operator, constant_values, op_histogram, quantization_problem, \
    read_flatbuffer
from segzoo.litert.names import sanitize

log = logging.getLogger(__name__)

VERIFY_TOLERANCE = 1e-3
""":func:`verify_import` fails when an output differs from the file's by more than this fraction of its range."""


def _check_float(flat: FlatModel) -> None:
    problem = quantization_problem(flat)
    if problem:
        raise ModelError(f"{flat.path}: this .tflite model is already quantized ({problem}). Importing and "
                         f"quantizing needs the float model: give a float32 .tflite (float16 weights behind "
                         f"DEQUANTIZE are fine) or the .keras/.h5 model.")


def _input(flat: FlatModel, index: int, ctx: Any) -> Any:
    import keras

    tensor = flat.tensors[index]
    if tensor.type != "FLOAT32":
        raise ModelError(f"{flat.path}: input '{tensor.name}' is {tensor.type}; only float32 inputs can be imported")
    if not tensor.shape or tensor.shape[0] != 1 or any(d < 1 for d in tensor.shape[1:]):
        raise ModelError(f"{flat.path}: input '{tensor.name}' has shape {list(tensor.shape)}; the importer needs "
                         f"a batch of 1 first and fixed other dimensions")
    return keras.Input(shape=tuple(tensor.shape[1:]), dtype=ctx.dtype, name=ctx.names.take(tensor.name))


def _check_shape(ctx: Any, op: Operator, position: int, result: Any) -> None:
    expected = ctx.flat.tensors[op.outputs[position]].shape
    got = tuple(result.shape)
    if not expected:
        return
    same = len(got) == len(expected) and all(g is None or int(g) == e for g, e in zip(got[1:], expected[1:]))
    if not same:
        raise ctx.fail(op, f"the rebuilt layer gives shape {list(got)} but the file's output "
                           f"'{ctx.flat.tensors[op.outputs[position]].name}' is {list(expected)}")


def _build_op(ctx: Any, op: Operator) -> None:
    from segzoo.litert.ops import BUILDERS

    builder = BUILDERS.get(op.name)
    if builder is None:
        kind = f"custom op '{op.name}'" if op.custom else f"op {op.name}"
        raise ModelError(f"{ctx.flat.path}: {kind} (op {op.index}) cannot be rebuilt as Keras layers; supported "
                         f"ops: {', '.join(sorted(BUILDERS))}")
    try:
        results = builder(ctx, op)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a Keras failure while building names the op
        raise ctx.fail(op, f"cannot be rebuilt: {type(exc).__name__}: {exc}") from exc
    if len(results) != len(op.outputs):
        raise ctx.fail(op, f"rebuilt {len(results)} outputs for {len(op.outputs)}")
    for position, result in enumerate(results):
        _check_shape(ctx, op, position, result)
        ctx.tensors[op.outputs[position]] = result


def import_tflite(path: str | Path, *, dtype: str = "float32") -> Any:
    """The functional Keras model (batch free) equivalent to the float ``.tflite`` at ``path``.

    ``dtype`` of every layer and input: ``float32`` (the file's precision); ``float64`` gives a reference of the
    same network with less round-off (to tell an import error from float32 round-off the file itself has).
    """
    import keras

    from segzoo.litert.ops import Context

    if dtype not in ("float32", "float64"):
        raise ModelError(f"import_tflite: dtype must be float32 or float64, got {dtype!r}")
    flat = read_flatbuffer(path)
    _check_float(flat)
    constants, folded = constant_values(flat)
    ctx = Context(flat, constants, dtype=dtype)
    inputs = []
    for index in flat.inputs:
        inputs.append(_input(flat, index, ctx))
        ctx.tensors[index] = inputs[-1]
    for op in flat.operators:
        if op.index not in folded:
            _build_op(ctx, op)
    missing = [flat.tensors[i].name for i in flat.outputs if i not in ctx.tensors]
    if missing:
        raise ModelError(f"{flat.path}: graph outputs {missing} are not computed by any op (constant outputs?)")
    outputs = [ctx.tensors[i] for i in flat.outputs]
    model = keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                        name=sanitize(Path(path).stem))
    _log_import(flat, folded, model)
    return model


def import_summary(flat: FlatModel, folded: set[int], model: Any) -> dict:
    """What an import did: the file's ops, the folded weight ops, parameters, inputs, outputs, signatures."""
    layers: dict[str, int] = {}
    for layer in model.layers:
        kind = type(layer).__name__
        layers[kind] = layers.get(kind, 0) + 1
    return {
        "file": str(flat.path),
        "description": flat.description,
        "ops": op_histogram(flat),
        "folded_weight_ops": len(folded),
        "layers": layers,
        "parameters": int(model.count_params()),
        "inputs": [{"name": flat.tensors[i].name, "shape": list(flat.tensors[i].shape)} for i in flat.inputs],
        "outputs": [{"name": flat.tensors[i].name, "shape": list(flat.tensors[i].shape)} for i in flat.outputs],
        "signatures": [s.key for s in flat.signatures],
    }


def _log_import(flat: FlatModel, folded: set[int], model: Any) -> None:
    summary = import_summary(flat, folded, model)
    ops = ", ".join(f"{n} {name}" for name, n in summary["ops"].items())
    inputs = [(d["name"], d["shape"]) for d in summary["inputs"]]
    outputs = [(d["name"], d["shape"]) for d in summary["outputs"]]
    log.info("Imported %s: %d ops (%s); %d weight-decompression ops folded into float32 weights; %d Keras layers, "
             "%d parameters; inputs %s; outputs %s", flat.path.name, len(flat.operators), ops,
             summary["folded_weight_ops"], len(model.layers), summary["parameters"], inputs, outputs)


# ----------------------------------------------------------------------------------------------- checking
def _interpreter_outputs(path: Path, batch: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The file's outputs (graph order) for one input array per graph input, one image at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    order = {int(d["index"]): d for d in interpreter.get_output_details()}
    flat = read_flatbuffer(path)
    results: list[list[np.ndarray]] = [[] for _ in flat.outputs]
    for row in range(len(batch[0])):
        for detail, array in zip(inputs, batch):
            interpreter.set_tensor(detail["index"], np.asarray(array[row:row + 1], np.float32))
        interpreter.invoke()
        for position, index in enumerate(flat.outputs):
            results[position].append(interpreter.get_tensor(order[index]["index"]).copy())
    return [np.concatenate(r) for r in results]


def compare_with_interpreter(path: str | Path, model: Any, batch: np.ndarray | Sequence[np.ndarray]) -> list[dict]:
    """Per output (file order): name, largest absolute difference, output range over ``batch``, and their ratio
    (relative to the largest magnitude instead when the range is 0, e.g. a single value)."""
    path = Path(path)
    arrays = list(batch) if isinstance(batch, (list, tuple)) else [batch]
    reference = _interpreter_outputs(path, arrays)
    dtype = model.inputs[0].dtype
    feed = [np.asarray(a, dtype) for a in arrays]
    predicted = model(feed[0] if len(feed) == 1 else feed, training=False)
    predicted = predicted if isinstance(predicted, (list, tuple)) else [predicted]
    rows = []
    for name, ref, got in zip(model.output_names, reference, predicted):
        got = np.asarray(got)
        diff = float(np.max(np.abs(ref - got))) if ref.size else 0.0
        spread = float(ref.max() - ref.min()) if ref.size else 0.0
        scale = spread if spread > 0 else (float(np.max(np.abs(ref))) if ref.size else 0.0)
        rows.append({"output": name, "max_abs_diff": diff, "range": spread,
                     "relative": diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))})
    return rows


def verify_import(path: str | Path, model: Any, seed: int = 0) -> list[dict]:
    """Compare file and model on one seeded uniform [-1, 1] input per graph input; ModelError when an output
    differs by more than ``VERIFY_TOLERANCE`` of its range (the import would be wrong)."""
    rng = np.random.default_rng(seed)
    shapes = [tuple(int(d) if d is not None else 1 for d in t.shape) for t in model.inputs]
    batch = [rng.uniform(-1.0, 1.0, size=(1, *shape[1:])).astype(np.float32) for shape in shapes]
    rows = compare_with_interpreter(path, model, batch)
    for row in rows:
        if row["relative"] > VERIFY_TOLERANCE:
            raise ModelError(f"{path}: the Keras model rebuilt from the file differs from it on output "
                             f"'{row['output']}' by {row['max_abs_diff']:.3g} ({100 * row['relative']:.2g}% of the "
                             f"output range {row['range']:.3g}); the import is wrong for this model, please report it")
    return rows
