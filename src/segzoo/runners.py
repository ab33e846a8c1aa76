"""One predict API for Keras (.keras/.h5) and TFLite (.tflite) segmentation models.

A runner takes a float32 batch that is already preprocessed (``x = pixel * scale + offset``, see
``segzoo.preprocess``) and returns either float32 scores ``[B,h,w,K]`` (``output_kind`` ``"logits"`` or
``"sigmoid"``, K = 1) or int32 label maps ``[B,h,w]`` (``"labels"``, e.g. a model ending in ArgMax).
Quantized TFLite inputs and outputs are handled here from the model's own quantization parameters.
A ``.tflite`` model never imports TensorFlow: only ``ai_edge_litert``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from segzoo.errors import ModelError
from segzoo.io import verified
from segzoo.preprocess import Placement, compute_placement, restore_argmax, restore_labels, restore_logits

log = logging.getLogger(__name__)

OUTPUT_KINDS = ("logits", "labels", "sigmoid")
KERAS_SUFFIXES = (".keras", ".h5")
TFLITE_SUFFIXES = (".tflite",)


@dataclass(frozen=True)
class TensorQuantization:
    """Affine quantization of a tensor: ``real = (q - zero_point) * scale``; scale 0 means not quantized."""

    scale: float
    zero_point: int
    dtype: str

    @property
    def quantized(self) -> bool:
        """True for an integer tensor with a quantization scale."""
        return self.scale > 0 and np.issubdtype(np.dtype(self.dtype), np.integer)

    def to_dict(self) -> dict:
        """Plain dict for reports."""
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}


FLOAT32 = TensorQuantization(0.0, 0, "float32")


@runtime_checkable
class Runner(Protocol):
    """A loaded model that maps a preprocessed float32 batch to scores or labels."""

    path: Path
    input_hw: tuple[int, int]
    channels: int
    output_kind: str
    input_quantization: TensorQuantization

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``[B,H,W,C]`` -> float32 ``[B,h,w,K]`` scores or int32 ``[B,h,w]`` labels."""
        ...


def describe(runner: Runner) -> dict:
    """What reports say about a runner."""
    return {
        "path": str(runner.path),
        "format": runner.path.suffix.lstrip("."),
        "input_hw": list(runner.input_hw),
        "channels": runner.channels,
        "output_kind": runner.output_kind,
        "input_quantization": runner.input_quantization.to_dict(),
    }


def output_kind_from_shape(shape: tuple, dtype: np.dtype, quantized: bool) -> str:
    """Classify a model output: rank 3 or integer (not quantized) ``[..,1]`` -> labels, float ``[..,1]`` -> sigmoid."""
    if len(shape) == 3:
        return "labels"
    if len(shape) != 4:
        raise ValueError(f"output rank {len(shape)} (shape {tuple(shape)}) is not a segmentation output")
    if shape[-1] == 1:
        integer = np.issubdtype(np.dtype(dtype), np.integer) and not quantized
        return "labels" if integer else "sigmoid"
    return "logits"


def quantize(x: np.ndarray, q: TensorQuantization) -> np.ndarray:
    """Float values to the integer input dtype: ``clip(round(x / scale + zero_point))`` (no scale: scale 1)."""
    dtype = np.dtype(q.dtype)
    info = np.iinfo(dtype)
    values = np.rint(x / np.float32(q.scale if q.scale > 0 else 1.0) + np.float32(q.zero_point))
    return np.clip(values, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, q: TensorQuantization) -> np.ndarray:
    """Integer tensor to float32: ``(q - zero_point) * scale``."""
    out = values.astype(np.float32)
    out -= np.float32(q.zero_point)
    out *= np.float32(q.scale)
    return out


def _as_output(values: np.ndarray, kind: str) -> np.ndarray:
    """Normalise an output batch: labels -> int32 ``[B,h,w]``, scores -> float32 ``[B,h,w,K]``."""
    if kind == "labels":
        if values.ndim == 4:
            values = values[..., 0]
        return values.astype(np.int32, copy=False)
    return values.astype(np.float32, copy=False)


def _check_batch(batch: np.ndarray, input_hw: tuple[int, int], channels: int, path: Path) -> np.ndarray:
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1:] != (*input_hw, channels):
        raise ModelError(f"{path.name}: expects input [B,{input_hw[0]},{input_hw[1]},{channels}], "
                         f"got {list(batch.shape)}")
    return batch.astype(np.float32, copy=False)


class TFLiteRunner:
    """A ``.tflite`` model run with ai_edge_litert, one image at a time (batch 1 models)."""

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        from segzoo.runtime.litert import open_interpreter

        self.path = Path(path)
        self.num_threads = num_threads or os.cpu_count() or 1
        self._interpreter, self.xnnpack = open_interpreter(self.path, self.num_threads)
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"expected 1 input and 1 output, found {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        shape = tuple(int(d) for d in self._input["shape"])
        if len(shape) != 4:
            raise ValueError(f"input shape {list(shape)} is not [1,H,W,C]")
        self.input_hw = (shape[1], shape[2])
        self.channels = shape[3]
        self.input_quantization = tensor_quantization(self._input)
        self.output_quantization = tensor_quantization(self._output)
        self.output_kind = output_kind_from_shape(tuple(self._output["shape"]), self._output["dtype"],
                                                  self.output_quantization.quantized)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Run each image of the batch through the interpreter."""
        batch = _check_batch(batch, self.input_hw, self.channels, self.path)
        if len(batch) == 1:
            return self._predict_one(batch)[None]
        return np.stack([self._predict_one(image[None]) for image in batch])

    def _predict_one(self, x: np.ndarray) -> np.ndarray:
        integer_input = np.issubdtype(self._input["dtype"], np.integer)
        x = quantize(x, self.input_quantization) if integer_input else x.astype(self._input["dtype"], copy=False)
        try:
            self._interpreter.set_tensor(self._input["index"], x)
            self._interpreter.invoke()
        except (RuntimeError, ValueError) as exc:  # a model that loads but cannot run (corrupt or unsupported)
            raise ModelError(f"{self.path}: inference failed: {exc}") from exc
        if self.output_quantization.quantized and self.output_kind != "labels":
            # dequantize straight from the interpreter's buffer: no copy of the raw output
            return dequantize(self._interpreter.tensor(self._output["index"])()[0], self.output_quantization)
        return _as_output(self._interpreter.get_tensor(self._output["index"])[0], self.output_kind)


def tensor_quantization(detail: dict[str, Any]) -> TensorQuantization:
    """The quantization of a LiteRT tensor from its interpreter details (scale 0: not quantized)."""
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorQuantization(float(scale), int(zero_point), np.dtype(detail["dtype"]).name)


class KerasRunner:
    """A ``.keras`` / ``.h5`` model; Keras is imported only when such a model is loaded."""

    def __init__(self, path: Path) -> None:
        import keras
        import tensorflow as tf

        from segzoo.models.registry import custom_objects

        self.path = Path(path)
        self._model = keras.saving.load_model(str(self.path), compile=False, custom_objects=custom_objects())
        # A traced graph: eager calls cost several times the model's own compute on small inputs.
        self._forward = tf.function(lambda x: self._model(x, training=False), reduce_retracing=True)
        if len(self._model.inputs) != 1 or len(self._model.outputs) != 1:
            raise ValueError("expected a model with 1 input and 1 output")
        shape = tuple(self._model.inputs[0].shape)
        if len(shape) != 4 or None in shape[1:]:
            raise ValueError(f"input shape {list(shape)} must be [B,H,W,C] with a fixed H, W and C")
        self.input_hw = (int(shape[1]), int(shape[2]))
        self.channels = int(shape[3])
        self.input_quantization = FLOAT32
        out_shape = tuple(self._model.outputs[0].shape)
        self.output_kind = output_kind_from_shape(out_shape, np.dtype(self._model.outputs[0].dtype), False)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass over the whole batch (inference mode)."""
        batch = _check_batch(batch, self.input_hw, self.channels, self.path)
        out = self._forward(batch)
        return _as_output(np.asarray(out), self.output_kind)


def check_model_file(path: str | Path) -> Path:
    """The path of an existing .keras/.h5/.tflite file, checked against its sha256 sidecar when segzoo wrote it;
    ModelError naming the file otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in KERAS_SUFFIXES + TFLITE_SUFFIXES:
        raise ModelError(f"{path}: unsupported model format {suffix or '(no suffix)'!r}; "
                         f"expected one of {', '.join(KERAS_SUFFIXES + TFLITE_SUFFIXES)}")
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    return verified(path)


def load_runner(path: str | Path, num_threads: int | None = None) -> Runner:
    """Load a ``.keras``/``.h5`` or ``.tflite`` model; any failure is a ModelError naming the file."""
    path = check_model_file(path)
    suffix = path.suffix.lower()
    try:
        runner: Runner = TFLiteRunner(path, num_threads) if suffix in TFLITE_SUFFIXES else KerasRunner(path)
    except ModelError:
        raise
    except Exception as exc:  # any loader failure becomes a user-facing error naming the file
        raise ModelError(f"{path}: cannot load model: {type(exc).__name__}: {exc}") from exc
    log.info("Loaded %s: input %sx%sx%s, output %s, input quantization %s", path.name, *runner.input_hw,
             runner.channels, runner.output_kind, runner.input_quantization.to_dict())
    return runner


def identity_placement(input_hw: tuple[int, int]) -> Placement:
    """Placement of an image that already has the model input size (to resize outputs to the input size)."""
    return compute_placement(input_hw, input_hw, "fit")


def to_labels(output: np.ndarray, output_kind: str, placement: Placement) -> np.ndarray:
    """One model output (``[h,w,K]`` scores or ``[h,w]`` labels) to an int32 label map on the placement's crop window.

    Scores are restored bilinearly and then arg-maxed (sigmoid: ``p > 0.5``); label maps are restored with
    nearest neighbour.
    """
    if output_kind == "labels":
        return restore_labels(output.astype(np.int32, copy=False), placement)
    if output_kind == "logits":
        return restore_argmax(output, placement)
    scores = restore_logits(output, placement)
    if output_kind == "sigmoid":
        return (scores[..., 0] > 0.5).astype(np.int32)
    raise ValueError(f"unknown output kind {output_kind!r}; expected one of {OUTPUT_KINDS}")


def check_output_classes(runner: Runner, output: np.ndarray, num_classes: int) -> None:
    """ModelError when a scores output (``[h,w,K]``; sigmoid counts as 2 classes) does not have ``num_classes``."""
    if runner.output_kind == "labels":
        return
    produced = 2 if runner.output_kind == "sigmoid" else int(output.shape[-1])
    if produced != num_classes:
        raise ModelError(f"{runner.path.name} outputs {produced} classes ({runner.output_kind}) "
                         f"but the dataset has {num_classes} classes")
