"""Read and rewrite a (calibrated float) TFLite flatbuffer: tensor min/max, constant buffers, op structure.

The converter's calibrate-only output (:func:`segzoo.quantization.converter.calibrate`) is a float TFLite model
whose activation tensors carry the calibration ``min``/``max``. The post-training refinements edit that model
before the MLIR quantizer turns it into int8: activation ranges (``ranges``), float biases (``bias_correction``)
and weights already on their per-tensor grid (``adaround``). This module is the one place that parses and packs
the flatbuffer (``ai_edge_litert.schema_py_generated`` object API); no TensorFlow import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from segzoo.errors import ModelError

FILE_IDENTIFIER = b"TFL3"
FUSED_BOUNDS: dict[int, tuple[float, float]] = {0: (-np.inf, np.inf), 1: (0.0, np.inf), 2: (-1.0, 1.0),
                                                 3: (0.0, 6.0)}
"""TFLite ``ActivationFunctionType`` -> output bounds (NONE, RELU, RELU_N1_TO_1, RELU6)."""


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


@dataclass
class Op:
    """One operator of the main subgraph: builtin name, input and output tensor indices, fused activation."""

    index: int
    name: str
    inputs: list[int]
    outputs: list[int]
    fused: int


class FlatModel:
    """A mutable TFLite model (subgraph 0): tensors by index and name, ops, constant buffers."""

    def __init__(self, content: bytes) -> None:
        schema = _schema()
        try:
            self.model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
        except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
            raise ModelError(f"cannot parse the TFLite flatbuffer: {exc}") from exc
        if not self.model.subgraphs:
            raise ModelError("the TFLite model has no subgraph")
        self.graph = self.model.subgraphs[0]
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.ops: list[Op] = []
        for i, op in enumerate(self.graph.operators or []):
            code = self.model.operatorCodes[op.opcodeIndex]
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            options = op.builtinOptions
            fused = int(getattr(options, "fusedActivationFunction", 0) or 0) if options is not None else 0
            inputs = [int(t) for t in (op.inputs if op.inputs is not None else [])]
            outputs = [int(t) for t in (op.outputs if op.outputs is not None else [])]
            self.ops.append(Op(i, names.get(builtin, str(builtin)), inputs, outputs, fused))

    # ----------------------------------------------------------------------------------------- tensors
    def tensor_name(self, index: int) -> str:
        name = self.graph.tensors[index].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def tensor_index(self) -> dict[str, int]:
        return {self.tensor_name(i): i for i in range(len(self.graph.tensors))}

    @property
    def inputs(self) -> list[int]:
        return [int(i) for i in self.graph.inputs]

    @property
    def outputs(self) -> list[int]:
        return [int(i) for i in self.graph.outputs]

    def is_constant(self, index: int) -> bool:
        buffer = self.model.buffers[self.graph.tensors[index].buffer]
        return buffer is not None and buffer.data is not None and len(buffer.data) > 0

    def min_max(self, index: int) -> tuple[float, float] | None:
        """The calibration range of a tensor, or None when it has none."""
        quant = self.graph.tensors[index].quantization
        if quant is None or quant.min is None or quant.max is None or len(quant.min) != 1:
            return None
        return float(quant.min[0]), float(quant.max[0])

    def set_min_max(self, index: int, low: float, high: float) -> None:
        quant = self.graph.tensors[index].quantization
        if quant is None:
            quant = _schema().QuantizationParametersT()
            self.graph.tensors[index].quantization = quant
        quant.min, quant.max = [float(low)], [float(high)]

    # ----------------------------------------------------------------------------------------- buffers
    def array(self, index: int) -> np.ndarray:
        """A float32 constant tensor as an array of its shape (a copy)."""
        tensor = self.graph.tensors[index]
        if int(tensor.type) != 0:
            raise ModelError(f"tensor '{self.tensor_name(index)}' is not float32 (type {tensor.type})")
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            raise ModelError(f"tensor '{self.tensor_name(index)}' has no constant data")
        shape = tuple(tensor.shape) if tensor.shape is not None else ()  # a scalar has no shape
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).reshape(shape).copy()

    def set_array(self, index: int, values: np.ndarray) -> None:
        """Replace a float32 constant tensor's data (same shape); a shared buffer is split off first."""
        tensor = self.graph.tensors[index]
        values = np.asarray(values, np.float32)
        if tuple(values.shape) != tuple(tensor.shape):
            raise ModelError(f"tensor '{self.tensor_name(index)}': new data {values.shape} vs {tuple(tensor.shape)}")
        users = sum(1 for sub in self.model.subgraphs for t in sub.tensors if t.buffer == tensor.buffer)
        if users > 1:
            self.model.buffers.append(_schema().BufferT())
            tensor.buffer = len(self.model.buffers) - 1
        self.model.buffers[tensor.buffer].data = np.frombuffer(values.tobytes(), np.uint8).copy()

    def producers(self) -> dict[int, Op]:
        return {t: op for op in self.ops for t in op.outputs}

    def consumers(self) -> dict[int, list[Op]]:
        table: dict[int, list[Op]] = {}
        for op in self.ops:
            for t in op.inputs:
                if t >= 0:
                    table.setdefault(t, []).append(op)
        return table

    def to_bytes(self) -> bytes:
        import flatbuffers

        builder = flatbuffers.Builder(1024 * 1024)
        builder.Finish(self.model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())
