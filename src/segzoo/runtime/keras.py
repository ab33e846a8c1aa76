"""A Keras model (.keras/.h5, or an in-memory model such as an imported .tflite) as a named runner.

TensorFlow and Keras are imported only when such a runner is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.io import verified
from segzoo.runtime.base import TensorSpec, check_feeds


def _shape(tensor: Any) -> tuple[int, ...]:
    """A Keras tensor's shape with the batch axis as 1 (batch-1 models, as .tflite files are)."""
    dims = tuple(tensor.shape)
    return (1, *(-1 if d is None else int(d) for d in dims[1:]))


class KerasNamedRunner:
    """Inputs and outputs named as the Keras model names them (``model.input_names``/``output_names``)."""

    def __init__(self, model: Any, name: str | None = None) -> None:
        import keras
        import tensorflow as tf

        from segzoo.models.registry import custom_objects

        if isinstance(model, (str, Path)):
            path = verified(model)
            try:
                model = keras.saving.load_model(str(path), compile=False, custom_objects=custom_objects())
            except Exception as exc:  # any loader failure becomes a user-facing error naming the file
                raise ModelError(f"{path}: cannot load model: {type(exc).__name__}: {exc}") from exc
            name = name or path.stem
        self._model = model
        self.name = name or model.name
        in_names = [t.name.split(":")[0] for t in model.inputs]
        out_names = list(getattr(model, "output_names", None) or [t.name.split(":")[0] for t in model.outputs])
        self.inputs = tuple(TensorSpec(n, _shape(t), "float32") for n, t in zip(in_names, model.inputs))
        self.outputs = tuple(TensorSpec(n, _shape(t), "float32") for n, t in zip(out_names, model.outputs))
        self._forward = tf.function(lambda xs: model(xs, training=False), reduce_retracing=True)

    def predict(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One traced forward pass; outputs as float32 NumPy arrays."""
        check_feeds(self, feeds)
        xs = [np.asarray(feeds[s.name], dtype=np.float32) for s in self.inputs]
        result = self._forward(xs if len(xs) > 1 else xs[0])
        values = result if isinstance(result, (list, tuple)) else [result]
        if isinstance(result, dict):
            values = [result[s.name] for s in self.outputs]
        return {s.name: np.asarray(v, dtype=np.float32) for s, v in zip(self.outputs, values)}
