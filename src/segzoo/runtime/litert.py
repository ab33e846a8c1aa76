"""A .tflite model as a named runner (ai_edge_litert; no TensorFlow import).

Float inputs are quantized and integer outputs dequantized from each tensor's own quantization parameters
(``segzoo.runners.quantize``/``dequantize``), so a float and an int8 model of the same network take and
return the same float values.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.runners import check_model_file, dequantize, quantize, tensor_quantization
from segzoo.runtime.base import TensorSpec, check_feeds

log = logging.getLogger(__name__)


def _spec(detail: dict[str, Any]) -> TensorSpec:
    """The float-facing spec of a tensor: integer tensors with a scale are seen as float32."""
    q = tensor_quantization(detail)
    dtype = "float32" if q.quantized else np.dtype(detail["dtype"]).name
    return TensorSpec(detail["name"], tuple(int(d) for d in detail["shape"]), dtype, q)


def open_interpreter(path: Path, num_threads: int) -> tuple[Any, bool]:
    """An allocated LiteRT interpreter for a .tflite file, and whether it runs on XNNPACK (LiteRT's default CPU
    delegate). A model XNNPACK refuses to prepare (an int8 rescale factor of 256 or more, from a quantizer other
    than segzoo's) runs on TFLite's reference kernels instead, slower but with the same results, with a warning."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
        return interpreter, True
    except RuntimeError as exc:
        if "XNNPACK" not in str(exc) and "Delegate" not in str(exc):
            raise
        log.warning("%s: XNNPACK (LiteRT's CPU delegate) cannot prepare this model (%s); running it on TFLite's "
                    "reference kernels (same results, slower)", path, str(exc).strip())
    interpreter = Interpreter(model_path=str(path), num_threads=num_threads,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter, False


class LiteRTRunner:
    """A ``.tflite`` model with named inputs and outputs (the tensor names of the file)."""

    def __init__(self, path: str | Path, num_threads: int | None = None, name: str | None = None) -> None:
        self.path = check_model_file(path)
        if self.path.suffix.lower() != ".tflite":
            raise ModelError(f"{self.path}: a LiteRT runner needs a .tflite file")
        self.name = name or self.path.stem
        self.num_threads = num_threads or os.cpu_count() or 1
        try:
            self._interpreter, self.xnnpack = open_interpreter(self.path, self.num_threads)
        except Exception as exc:  # any loader failure becomes a user-facing error naming the file
            raise ModelError(f"{self.path}: cannot load model: {type(exc).__name__}: {exc}") from exc
        self._in = self._interpreter.get_input_details()
        self._out = self._interpreter.get_output_details()
        self.inputs = tuple(_spec(d) for d in self._in)
        self.outputs = tuple(_spec(d) for d in self._out)
        names = [s.name for s in self.inputs + self.outputs]
        if len(set(names)) != len(names):
            raise ModelError(f"{self.path}: tensor names are not unique ({names})")
        log.info("Loaded %s: inputs %s, outputs %s", self.path.name,
                 [(s.name, list(s.shape)) for s in self.inputs], [(s.name, list(s.shape)) for s in self.outputs])

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set every input (quantized when the tensor is), invoke, return every output as float32 or labels."""
        check_feeds(self, feeds)
        for detail, spec in zip(self._in, self.inputs):
            x = np.asarray(feeds[spec.name])
            if tuple(x.shape) != spec.shape:
                raise ModelError(f"{self.path.name}: input {spec.name} expects {list(spec.shape)}, got {list(x.shape)}")
            if spec.quantization.quantized:
                x = quantize(x.astype(np.float32, copy=False), spec.quantization)
            else:
                x = x.astype(detail["dtype"], copy=False)
            self._interpreter.set_tensor(detail["index"], x)
        try:
            self._interpreter.invoke()
        except RuntimeError as exc:  # a model that loads but cannot run (corrupt or unsupported)
            raise ModelError(f"{self.path}: inference failed: {exc}") from exc
        out = {}
        for detail, spec in zip(self._out, self.outputs):
            values = self._interpreter.get_tensor(detail["index"])
            out[spec.name] = dequantize(values, spec.quantization) if spec.quantization.quantized else values
        return out
