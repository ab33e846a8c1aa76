"""Tiny ``.tflite`` files written with the flatbuffer object API, for tests of the TFLite importer.

Each test model states its ops, options and weights explicitly (fused activations, padding, resize flags, custom
ops), which the TFLite converter would not let a test choose. The LiteRT interpreter then runs the file as the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TYPES = {np.dtype(np.float32): "FLOAT32", np.dtype(np.float16): "FLOAT16", np.dtype(np.int32): "INT32",
         np.dtype(np.int8): "INT8", np.dtype(np.uint8): "UINT8", np.dtype(np.int64): "INT64"}


@dataclass
class TinyModel:
    """A single-subgraph model under construction: tensors (with optional data), ops, graph inputs/outputs."""

    tensors: list[Any] = field(default_factory=list)
    buffers: list[Any] = field(default_factory=list)
    codes: list[Any] = field(default_factory=list)
    ops: list[Any] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.schema = schema
        self.buffers.append(schema.BufferT())  # buffer 0: the empty buffer of activations

    def tensor(self, name: str, shape: tuple | list, data: np.ndarray | None = None, dtype: Any = np.float32,
               sparsity: Any = None, quantization: Any = None) -> int:
        """Add a tensor (a constant when ``data`` is given: stored raw, little-endian); its index."""
        s = self.schema
        t = s.TensorT()
        t.name, t.shape = name, list(shape)
        t.type = getattr(s.TensorType, TYPES[np.dtype(dtype)])
        t.buffer = 0
        if data is not None:
            buffer = s.BufferT()
            buffer.data = list(np.ascontiguousarray(np.asarray(data, dtype)).view(np.uint8).reshape(-1))
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        t.sparsity, t.quantization = sparsity, quantization
        self.tensors.append(t)
        return len(self.tensors) - 1

    def constant(self, name: str, data: np.ndarray, dtype: Any = np.float32) -> int:
        array = np.asarray(data, dtype)
        return self.tensor(name, array.shape, array, dtype)

    def op(self, name: str, inputs: list[int], outputs: list[int], options: str | None = None,
           custom_options: bytes | None = None, **values: Any) -> None:
        """Add an op: a builtin (``CONV_2D``) or a custom code; ``options`` names the options table
        (``Conv2DOptions``) whose fields (camelCase, e.g. ``strideW``) are ``values``."""
        s = self.schema
        builtin = getattr(s.BuiltinOperator, name, None)
        code = s.OperatorCodeT()
        if builtin is None:
            code.builtinCode = code.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
            code.customCode = name
        else:
            code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
        code.version = 1
        self.codes.append(code)
        op = s.OperatorT()
        op.opcodeIndex = len(self.codes) - 1
        op.inputs, op.outputs = list(inputs), list(outputs)
        if options is not None:
            table = getattr(s, f"{options}T")()
            for key, value in values.items():
                if not hasattr(table, key):
                    raise AttributeError(f"{options} has no field {key}")
                setattr(table, key, value)
            op.builtinOptionsType = getattr(s.BuiltinOptions, options)
            op.builtinOptions = table
        if custom_options is not None:
            op.customOptions = list(custom_options)
        self.ops.append(op)

    def to_bytes(self) -> bytes:
        import flatbuffers

        s = self.schema
        graph = s.SubGraphT()
        graph.tensors, graph.operators = self.tensors, self.ops
        graph.inputs, graph.outputs = self.inputs, self.outputs
        graph.name = "main"
        model = s.ModelT()
        model.version, model.description = 3, "segzoo test model"
        model.operatorCodes, model.subgraphs, model.buffers = self.codes, [graph], self.buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    def save(self, path: Path) -> Path:
        path.write_bytes(self.to_bytes())
        return path


def run_interpreter(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The file's outputs on ``inputs`` (graph order), with the default LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    for detail, array in zip(interpreter.get_input_details(), inputs):
        interpreter.set_tensor(detail["index"], np.asarray(array, np.float32))
    interpreter.invoke()
    by_index = {d["index"]: d for d in interpreter.get_output_details()}
    from segzoo.litert.flatbuffer import read_flatbuffer

    return [interpreter.get_tensor(by_index[i]["index"]).copy() for i in read_flatbuffer(path).outputs]
