"""A ``.tflite`` file as plain data: subgraph 0's tensors, ops, options, inputs, outputs, signatures, constants.

Read with ``ai_edge_litert.schema_py_generated`` (the flatbuffer schema's object API; no TensorFlow import, so the
config validator may use it). Conventions:

- **op names**: the builtin operator's schema name (``CONV_2D``), or the custom code for ``CUSTOM`` ops
  (``Convolution2DTransposeBias``). The builtin code is ``max(builtin_code, deprecated_builtin_code)``: files
  before schema v3a only fill the deprecated int8 field, newer ones fill ``builtin_code`` and put
  ``PLACEHOLDER_FOR_GREATER_OP_CODES`` (127) in the deprecated field for codes above 127 (TFLite's own rule).
- **options**: the builtin options table as a dict with snake_case keys (``stride_w``,
  ``fused_activation_function``); ``{}`` when the op has none. Custom ops keep their raw ``custom_options`` bytes.
- **constants** (:func:`constant_values`): every tensor with data in its buffer, decoded to NumPy with the
  tensor's shape; sparse tensors (``SparsityParameters``) densified (:mod:`segzoo.litert.sparsity`). Then
  weight-decompression ops whose inputs are all constant are folded: ``DENSIFY`` (sparse -> dense) and
  ``DEQUANTIZE`` of a float16 constant (-> float32). The folded ops are listed so that the importer skips them.
- **quantized models** (:func:`quantization_problem`): an activation tensor (graph input or op output) of an
  8/16-bit integer type, or an integer constant with quantization scales (int8/uint8/int16/int4 weights, with or
  without a DEQUANTIZE behind them; an int32 bias with a scale), means the file was already quantized.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.litert.sparsity import DimensionMetadata, Sparsity, densify

FILE_IDENTIFIER = b"TFL3"
CUSTOM_CODE = 32
"""``BuiltinOperator.CUSTOM``."""
QUANTIZED_TYPES = frozenset({"INT8", "UINT8", "INT16", "INT4", "UINT4", "INT2"})
"""Tensor types that only a quantized model uses for activations or weights."""
NUMPY_TYPES: dict[str, Any] = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64, "INT32": np.int32, "UINT8": np.uint8,
    "INT64": np.int64, "BOOL": np.bool_, "INT16": np.int16, "INT8": np.int8, "UINT64": np.uint64,
    "UINT32": np.uint32, "UINT16": np.uint16, "COMPLEX64": np.complex64, "COMPLEX128": np.complex128,
}
"""TFLite tensor type name -> NumPy dtype (types without one, e.g. STRING or INT4, cannot be read as constants)."""


@dataclass(frozen=True)
class Quantization:
    """Affine quantization parameters of a tensor (empty arrays when it has none)."""

    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0

    @property
    def present(self) -> bool:
        """True when the tensor carries at least one scale."""
        return self.scale.size > 0


@dataclass(frozen=True)
class Tensor:
    """One tensor of subgraph 0."""

    index: int
    name: str
    type: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...] | None
    buffer: int
    quantization: Quantization
    sparsity: Sparsity | None = None

    @property
    def dtype(self) -> Any:
        """The NumPy dtype, or None for types NumPy cannot hold."""
        return NUMPY_TYPES.get(self.type)


@dataclass(frozen=True)
class Operator:
    """One op of subgraph 0, in execution order (``index``)."""

    index: int
    name: str
    custom: bool
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)
    custom_options: bytes = b""
    version: int = 1

    @property
    def label(self) -> str:
        """``CONV_2D (op 12)``: how error messages name the op."""
        return f"{self.name} (op {self.index})"


@dataclass(frozen=True)
class Signature:
    """A signature def: its key and the names of its input and output tensors (name -> tensor index)."""

    key: str
    inputs: dict[str, int]
    outputs: dict[str, int]


@dataclass
class FlatModel:
    """Subgraph 0 of a ``.tflite`` file (the one a TFLite interpreter runs by default)."""

    path: Path
    version: int
    description: str
    tensors: list[Tensor]
    operators: list[Operator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    signatures: list[Signature]
    subgraphs: int
    buffers: list[bytes | None]

    def producers(self) -> dict[int, Operator]:
        """Tensor index -> the op that writes it."""
        return {out: op for op in self.operators for out in op.outputs if out >= 0}

    def activations(self) -> set[int]:
        """Graph inputs and op outputs (every other tensor is a constant or unused)."""
        found = set(self.inputs)
        for op in self.operators:
            found.update(i for i in op.outputs if i >= 0)
        return found


# ----------------------------------------------------------------------------------------------- reading
def _enum_names(enum: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum).items() if not name.startswith("_") and isinstance(value, int)}


def _snake(name: str) -> str:
    return re.sub(r"(?<=.)([A-Z])", r"_\1", name).lower()


def _plain(value: Any) -> Any:
    """Option values as plain Python (NumPy vectors of the object API become lists)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _options(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    return {_snake(key): _plain(value) for key, value in vars(obj).items()}


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _index_vector(vector: Any) -> np.ndarray | None:
    if vector is None:
        return None
    return np.asarray(vector.values, np.int64) if getattr(vector, "values", None) is not None else np.zeros(0, np.int64)


def _sparsity(raw: Any) -> Sparsity | None:
    if raw is None:
        return None
    dims = tuple(DimensionMetadata(int(d.format), int(d.denseSize), _index_vector(d.arraySegments),
                                   _index_vector(d.arrayIndices)) for d in (raw.dimMetadata or []))
    order = tuple(int(v) for v in (raw.traversalOrder if raw.traversalOrder is not None else []))
    block_map = tuple(int(v) for v in (raw.blockMap if raw.blockMap is not None else []))
    return Sparsity(order, block_map, dims)


def _quantization(raw: Any) -> Quantization:
    if raw is None:
        return Quantization(np.zeros(0), np.zeros(0, np.int64))
    scale = np.asarray(raw.scale if raw.scale is not None else [], np.float64)
    zero = np.asarray(raw.zeroPoint if raw.zeroPoint is not None else [], np.int64)
    return Quantization(scale, zero, int(raw.quantizedDimension or 0))


def _shape(values: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in values) if values is not None else ()


def _buffers(model: Any, data: bytes) -> list[bytes | None]:
    """Each buffer's bytes (inline, or at ``offset``/``size`` after the flatbuffer for large models)."""
    out: list[bytes | None] = []
    for buffer in model.buffers or []:
        if buffer.offset and buffer.offset > 1:
            end = int(buffer.offset) + int(buffer.size)
            if end > len(data):
                raise ModelError("a weight buffer lies beyond the end of the file (truncated file?)")
            out.append(data[int(buffer.offset):end])
        elif buffer.data is not None and len(buffer.data):
            out.append(np.asarray(buffer.data, np.uint8).tobytes())
        else:
            out.append(None)
    return out


def _operator(index: int, raw: Any, codes: list[Any], builtin_names: dict[int, str]) -> Operator:
    if raw.opcodeIndex >= len(codes):
        raise ModelError(f"op {index} refers to operator code {raw.opcodeIndex}, but the file has {len(codes)}")
    code = codes[raw.opcodeIndex]
    builtin = max(int(code.builtinCode or 0), int(code.deprecatedBuiltinCode or 0))
    custom = builtin == CUSTOM_CODE
    name = _text(code.customCode) if custom else builtin_names.get(builtin, f"BUILTIN_{builtin}")
    custom_options = bytes(np.asarray(raw.customOptions, np.uint8).tobytes()) if raw.customOptions is not None else b""
    return Operator(index=index, name=name or "CUSTOM", custom=custom,
                    inputs=tuple(int(i) for i in (raw.inputs if raw.inputs is not None else [])),
                    outputs=tuple(int(i) for i in (raw.outputs if raw.outputs is not None else [])),
                    options=_options(raw.builtinOptions), custom_options=custom_options,
                    version=int(code.version or 1))


def _signatures(model: Any) -> list[Signature]:
    found = []
    for sig in model.signatureDefs or []:
        if int(sig.subgraphIndex or 0) != 0:
            continue
        found.append(Signature(_text(sig.signatureKey),
                               {_text(m.name): int(m.tensorIndex) for m in (sig.inputs or [])},
                               {_text(m.name): int(m.tensorIndex) for m in (sig.outputs or [])}))
    return found


def read_flatbuffer(path: str | Path) -> FlatModel:
    """Subgraph 0 of the ``.tflite`` file at ``path``; ModelError naming the file when it cannot be read."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the TFLite file: {exc}") from exc
    if len(data) < 8 or data[4:8] != FILE_IDENTIFIER:
        raise ModelError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier); give a .tflite model file")
    try:
        raw = schema.ModelT.InitFromPackedBuf(data, 0)
        if not raw.subgraphs:
            raise ModelError(f"{path}: the TFLite file has no subgraph")
        graph = raw.subgraphs[0]
        builtin_names = _enum_names(schema.BuiltinOperator)
        type_names = _enum_names(schema.TensorType)
        codes = list(raw.operatorCodes or [])
        tensors = [Tensor(index=i, name=_text(t.name), type=type_names.get(int(t.type), f"TYPE_{t.type}"),
                          shape=_shape(t.shape), shape_signature=_shape(t.shapeSignature) or None,
                          buffer=int(t.buffer or 0), quantization=_quantization(t.quantization),
                          sparsity=_sparsity(t.sparsity))
                   for i, t in enumerate(graph.tensors or [])]
        operators = [_operator(i, op, codes, builtin_names) for i, op in enumerate(graph.operators or [])]
        buffers = _buffers(raw, data)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}" if str(path) not in str(exc) else str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - a truncated/corrupt flatbuffer fails in many ways
        raise ModelError(f"{path}: cannot parse the TFLite file (truncated or corrupt?): "
                         f"{type(exc).__name__}: {exc}") from exc
    model = FlatModel(path=path, version=int(raw.version or 0), description=_text(raw.description),
                      tensors=tensors, operators=operators,
                      inputs=tuple(int(i) for i in (graph.inputs if graph.inputs is not None else [])),
                      outputs=tuple(int(i) for i in (graph.outputs if graph.outputs is not None else [])),
                      signatures=_signatures(raw), subgraphs=len(raw.subgraphs), buffers=buffers)
    _check_references(model)
    return model


def _check_references(model: FlatModel) -> None:
    count = len(model.tensors)
    for op in model.operators:
        bad = [i for i in op.inputs + op.outputs if i >= count]
        if bad:
            raise ModelError(f"{model.path}: {op.label} refers to tensor {bad[0]}, but the file has {count} tensors "
                             f"(corrupt file?)")
    bad = [i for i in model.inputs + model.outputs if not 0 <= i < count]
    if bad:
        raise ModelError(f"{model.path}: graph input/output tensor {bad[0]} does not exist (corrupt file?)")
    for tensor in model.tensors:
        if tensor.buffer >= len(model.buffers) and tensor.buffer != 0:
            raise ModelError(f"{model.path}: tensor '{tensor.name}' refers to buffer {tensor.buffer}, but the file "
                             f"has {len(model.buffers)} (truncated or corrupt file?)")


# --------------------------------------------------------------------------------------------- constants
def stored_value(model: FlatModel, tensor: Tensor) -> np.ndarray | None:
    """The data stored for ``tensor`` (densified when sparse), or None when it has no data."""
    raw = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    if raw is None:
        return None
    what = f"{model.path}: tensor '{tensor.name}'"
    if tensor.dtype is None:
        raise ModelError(f"{what}: constants of type {tensor.type} cannot be read")
    itemsize = np.dtype(tensor.dtype).itemsize
    if len(raw) % itemsize:
        raise ModelError(f"{what}: {len(raw)} bytes is not a whole number of {tensor.type} values (corrupt file?)")
    values = np.frombuffer(raw, dtype=np.dtype(tensor.dtype).newbyteorder("<")).astype(tensor.dtype)
    if tensor.sparsity is not None:
        return densify(values, tensor.shape, tensor.sparsity, what)
    expected = math.prod(tensor.shape)
    if values.size != expected:
        raise ModelError(f"{what}: {values.size} values stored for shape {list(tensor.shape)} ({expected} expected; "
                         f"truncated or corrupt file?)")
    return values.reshape(tensor.shape)


def _fold(op: Operator, value: np.ndarray, model: FlatModel) -> np.ndarray | None:
    """The constant output of a weight-decompression op on constant ``value``, or None if it is not one."""
    source = model.tensors[op.inputs[0]]
    if op.name == "DENSIFY":
        return value
    if op.name == "DEQUANTIZE" and source.type in ("FLOAT16", "BFLOAT16", "FLOAT32"):
        return value.astype(np.float32)
    return None


def constant_values(model: FlatModel) -> tuple[dict[int, np.ndarray], set[int]]:
    """Tensor index -> constant value (stored data, then DENSIFY / float16 DEQUANTIZE folded), and the indices of
    the folded ops."""
    values: dict[int, np.ndarray] = {}
    activations = model.activations()
    for tensor in model.tensors:
        if tensor.index in activations:
            continue
        value = stored_value(model, tensor)
        if value is not None:
            values[tensor.index] = value
    folded: set[int] = set()
    for op in model.operators:
        if len(op.inputs) != 1 or len(op.outputs) != 1 or op.inputs[0] not in values:
            continue
        result = _fold(op, values[op.inputs[0]], model)
        if result is not None:
            values[op.outputs[0]] = result
            folded.add(op.index)
    return values, folded


# ------------------------------------------------------------------------------------------ quantization
def quantization_problem(model: FlatModel) -> str | None:
    """Why ``model`` counts as already quantized (naming a tensor), or None for a float model."""
    for index in sorted(model.activations()):
        tensor = model.tensors[index]
        if tensor.type in QUANTIZED_TYPES:
            return f"activation tensor '{tensor.name}' is {tensor.type}"
    for op in model.operators:
        for index in op.inputs:
            if index < 0:
                continue
            tensor = model.tensors[index]
            if tensor.type in QUANTIZED_TYPES and tensor.quantization.present:
                return f"{op.label} reads the {tensor.type} quantized constant '{tensor.name}'"
            if tensor.type == "INT32" and tensor.quantization.present and op.name != "DEQUANTIZE":
                return f"{op.label} reads the quantized int32 constant '{tensor.name}' (a quantized bias)"
    return None


def op_histogram(model: FlatModel) -> dict[str, int]:
    """Op name -> count, in order of first appearance."""
    counts: dict[str, int] = {}
    for op in model.operators:
        counts[op.name] = counts.get(op.name, 0) + 1
    return counts
