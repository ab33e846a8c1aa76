"""Keras layers of PP-MobileSeg that stock Keras lacks (imported only when a model is built or loaded).

- :class:`AxisMean`: the mean over the rows or the columns of an NHWC map (``keepdims``).
- :class:`AxialPositionalEmbedding`: the squeeze-axial positional embedding: a learned ``[1, C, 16]`` table,
  linearly interpolated (half-pixel, edge clamped, as ``F.interpolate(mode="linear", align_corners=False)``) to the
  length of the squeezed axis and added. The interpolation is a constant matrix applied to a weight, so the
  TFLite converter folds it: the graph keeps one ADD of a constant.
- :class:`SqueezeAxialAttention`: multi-head softmax attention along one axis of squeezed ``q, k, v``.
- :class:`ResizeBilinear`: bilinear resize to a fixed size (half-pixel centres).
- :class:`HardSigmoid`: ``clip(slope * x + offset, 0, 1)`` (MobileNetV3's SE gate uses slope 0.2, SEA 1/6).
- :class:`DropPath`: stochastic depth of a residual branch (training only).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import keras
import numpy as np
from keras import ops

PACKAGE = "segzoo_pp_mobileseg"


def linear_interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of 1-D linear resizing with half-pixel centres and clamped edges."""
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        low = min(int(np.floor(src)), n_in - 1)
        high = min(low + 1, n_in - 1)
        frac = src - low
        matrix[i, low] += 1.0 - frac
        matrix[i, high] += frac
    return matrix.astype(np.float32)


@keras.saving.register_keras_serializable(package=PACKAGE)
class AxisMean(keras.layers.Layer):
    """Mean over ``axis`` (1: rows -> ``[B,1,W,C]``; 2: columns -> ``[B,H,1,C]``), dimension kept."""

    def __init__(self, axis: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if axis not in (1, 2):
            raise ValueError(f"AxisMean: axis must be 1 or 2, got {axis}")
        self.axis = axis

    def call(self, x: Any) -> Any:
        return ops.mean(x, axis=self.axis, keepdims=True)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        shape = list(input_shape)
        shape[self.axis] = 1
        return tuple(shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis}


@keras.saving.register_keras_serializable(package=PACKAGE)
class AxialPositionalEmbedding(keras.layers.Layer):
    """Adds the learned ``[1, C, length]`` embedding, resized to the squeezed axis, to ``[B,N,1,C]``/``[B,1,N,C]``.

    ``axis`` is the axis of the input that holds the positions (1 for rows, 2 for columns).
    """

    def __init__(self, axis: int, length: int = 16, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if axis not in (1, 2):
            raise ValueError(f"AxialPositionalEmbedding: axis must be 1 or 2, got {axis}")
        self.axis = axis
        self.length = length

    def build(self, input_shape: tuple) -> None:
        channels, positions = int(input_shape[-1]), int(input_shape[self.axis])
        self.pos_embed = self.add_weight(name="pos_embed", shape=(1, channels, self.length),
                                         initializer=keras.initializers.RandomNormal(stddev=1.0))
        self._resize = linear_interpolation_matrix(self.length, positions)  # [N, length]

    def call(self, x: Any) -> Any:
        table = ops.matmul(ops.convert_to_tensor(self._resize), ops.transpose(self.pos_embed[0]))  # [N, C]
        shape = (-1, 1, table.shape[-1]) if self.axis == 1 else (1, -1, table.shape[-1])
        return x + ops.reshape(table, shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": self.axis, "length": self.length}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeAxialAttention(keras.layers.Layer):
    """Softmax attention along one squeezed axis, heads split as PaddleSeg does (channel = head * dim + j).

    Inputs ``[q, k, v]``: ``[B,N,1,h*kd]``, ``[B,N,1,h*kd]``, ``[B,N,1,h*d]`` (or ``[B,1,N,...]`` with
    ``axis=2``); output ``[B,N,1,h*d]`` (same layout): per head ``softmax(q k^T * key_dim**-0.5) v``.
    """

    def __init__(self, num_heads: int, key_dim: int, axis: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.axis = axis

    def _heads(self, x: Any) -> Any:
        """``[B,N,1,h*c]`` or ``[B,1,N,h*c]`` -> ``[B,h,N,c]``."""
        n = x.shape[self.axis]
        x = ops.reshape(x, (-1, n, self.num_heads, x.shape[-1] // self.num_heads))
        return ops.transpose(x, (0, 2, 1, 3))

    def call(self, inputs: list) -> Any:
        q, k, v = inputs
        n, value_channels = v.shape[self.axis], v.shape[-1]
        logits = ops.matmul(self._heads(q), ops.transpose(self._heads(k), (0, 1, 3, 2)))
        attn = ops.softmax(logits * (self.key_dim ** -0.5), axis=-1)
        out = ops.transpose(ops.matmul(attn, self._heads(v)), (0, 2, 1, 3))  # [B, N, h, d]
        shape = (-1, n, 1, value_channels) if self.axis == 1 else (-1, 1, n, value_channels)
        return ops.reshape(out, shape)

    def compute_output_shape(self, input_shapes: list) -> tuple:
        return tuple(input_shapes[2])

    def get_config(self) -> dict:
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim, "axis": self.axis}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResizeBilinear(keras.layers.Layer):
    """Bilinear resize to a fixed ``(height, width)`` with half-pixel centres (TFLite ``RESIZE_BILINEAR``).

    Keras' ``Resizing`` records ``training=True`` in the saved graph, which then switches a reloaded model's
    stochastic layers into training mode; this layer has no such argument.
    """

    def __init__(self, height: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)

    def call(self, x: Any) -> Any:
        return ops.image.resize(x, (self.height, self.width), interpolation="bilinear")

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package=PACKAGE)
class HardSigmoid(keras.layers.Layer):
    """``clip(slope * x + offset, 0, 1)``."""

    def __init__(self, slope: float, offset: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.slope = float(slope)
        self.offset = float(offset)

    def call(self, x: Any) -> Any:
        return ops.clip(x * self.slope + self.offset, 0.0, 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "slope": self.slope, "offset": self.offset}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(keras.layers.Layer):
    """Drops the whole residual branch of a sample with probability ``rate`` while training (identity otherwise)."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed = seed
        self._generator = keras.random.SeedGenerator(seed)

    def call(self, x: Any, training: bool | None = None) -> Any:
        if not training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = keras.random.uniform((ops.shape(x)[0], 1, 1, 1), seed=self._generator) < keep
        return x * ops.cast(mask, x.dtype) / keep

    def get_config(self) -> dict:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


CUSTOM_OBJECTS = MappingProxyType({cls.__name__: cls for cls in (
    AxisMean, AxialPositionalEmbedding, SqueezeAxialAttention, ResizeBilinear, HardSigmoid, DropPath)})
"""The layers a saved PP-MobileSeg ``.keras`` model needs (``FAMILY.custom_objects``)."""
