"""Layout conversions from PyTorch/Paddle weight layouts to Keras ones (plain functions of np.ndarray).

Each returns a new C-contiguous array and raises ValueError naming the expected layout when the input does
not fit it.
"""

from __future__ import annotations

import numpy as np


def _check_ndim(weight: np.ndarray, ndim: int, layout: str) -> np.ndarray:
    array = np.asarray(weight)
    if array.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D {layout} weight, got shape {array.shape}")
    return array


def identity(weight: np.ndarray) -> np.ndarray:
    """The weight unchanged (biases, BatchNorm statistics, LayerNorm scales)."""
    return np.array(weight)


def conv_oihw_to_hwio(weight: np.ndarray) -> np.ndarray:
    """Conv2d kernel [out, in, kh, kw] (PyTorch, Paddle) -> Keras Conv2D kernel [kh, kw, in, out]."""
    return np.ascontiguousarray(_check_ndim(weight, 4, "[out, in, kh, kw]").transpose(2, 3, 1, 0))


def depthwise_oihw_to_hwim(weight: np.ndarray, multiplier: int = 1) -> np.ndarray:
    """Depthwise kernel [C*M, 1, kh, kw] (groups=C) -> Keras DepthwiseConv2D kernel [kh, kw, C, M].

    Output channel ``c*M + m`` of the grouped convolution is channel ``c``, multiplier ``m`` in Keras.
    """
    array = _check_ndim(weight, 4, "[C*M, 1, kh, kw]")
    out, one, kh, kw = array.shape
    if one != 1 or multiplier < 1 or out % multiplier:
        raise ValueError(f"expected a depthwise kernel [C*{multiplier}, 1, kh, kw], got shape {array.shape}")
    return np.ascontiguousarray(array.reshape(out // multiplier, multiplier, kh, kw).transpose(2, 3, 0, 1))


def linear_oi_to_io(weight: np.ndarray) -> np.ndarray:
    """Linear weight [out, in] (PyTorch) -> Keras Dense kernel [in, out]."""
    return np.ascontiguousarray(_check_ndim(weight, 2, "[out, in]").T)


def transpose_conv_iohw_to_hwoi(weight: np.ndarray) -> np.ndarray:
    """ConvTranspose2d kernel [in, out, kh, kw] (PyTorch) -> Keras Conv2DTranspose kernel [kh, kw, out, in].

    Both frameworks compute the transpose of a cross-correlation, so the kernel is not flipped.
    """
    return np.ascontiguousarray(_check_ndim(weight, 4, "[in, out, kh, kw]").transpose(2, 3, 1, 0))
