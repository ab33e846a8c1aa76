"""The few Keras layers the importer needs where Keras has no stock layer with TFLite's exact semantics.

Each converts back to the TFLite op it stands for (TensorFlow backend), saves and loads as ``.keras`` (registered
as ``segzoo>Name``; importing this module is enough) and has a ``compute_output_shape``:

- :class:`ResizeImage`: ``RESIZE_BILINEAR`` / ``RESIZE_NEAREST_NEIGHBOR`` with TFLite's ``align_corners`` and
  ``half_pixel_centers`` flags (Keras' ``Resizing``/``UpSampling2D`` only do half-pixel centers).
- :class:`DepthToSpace`, :class:`SpaceToDepth`: TF's NHWC depth/space rearrangements (DCR order, as TFLite).
- :class:`Clip`: ``min(max(x, low), high)`` (the ``RELU_N1_TO_1`` fused activation).
- :class:`ConstantOp`: an element-wise op with a constant operand (``ADD``/``SUB``/``MUL``/``MAXIMUM``/``MINIMUM``
  whose other input is a weight): the constant is a non-trainable weight of the layer.
- :class:`Reduce`: ``MEAN`` over axes other than the spatial pair (which is ``GlobalAveragePooling2D``).
- :class:`StridedSlice`: ``STRIDED_SLICE`` without ellipsis/new-axis masks, batch axis kept whole.
"""

from __future__ import annotations

from typing import Any

import keras

RESIZE_METHODS: tuple[str, ...] = ("bilinear", "nearest")
CONSTANT_OPS: tuple[str, ...] = ("add", "sub", "rsub", "mul", "maximum", "minimum")


@keras.saving.register_keras_serializable(package="segzoo")
class ResizeImage(keras.layers.Layer):
    """Resize ``[B,H,W,C]`` to ``height x width`` exactly as TFLite's RESIZE_* ops with the given flags."""

    def __init__(self, height: int, width: int, method: str = "bilinear", align_corners: bool = False,
                 half_pixel_centers: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if method not in RESIZE_METHODS:
            raise ValueError(f"method must be one of {RESIZE_METHODS}, got {method!r}")
        self.height, self.width, self.method = int(height), int(width), method
        self.align_corners, self.half_pixel_centers = bool(align_corners), bool(half_pixel_centers)

    def call(self, inputs: Any) -> Any:
        import tensorflow as tf

        op = tf.raw_ops.ResizeBilinear if self.method == "bilinear" else tf.raw_ops.ResizeNearestNeighbor
        return op(images=inputs, size=[self.height, self.width], align_corners=self.align_corners,
                  half_pixel_centers=self.half_pixel_centers)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self) -> dict:
        return {**super().get_config(), "height": self.height, "width": self.width, "method": self.method,
                "align_corners": self.align_corners, "half_pixel_centers": self.half_pixel_centers}


@keras.saving.register_keras_serializable(package="segzoo")
class DepthToSpace(keras.layers.Layer):
    """``[B,H,W,C*b*b] -> [B,H*b,W*b,C]`` (TF/TFLite DEPTH_TO_SPACE, NHWC)."""

    def __init__(self, block_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, inputs: Any) -> Any:
        import tensorflow as tf

        return tf.nn.depth_to_space(inputs, self.block_size)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b = self.block_size
        scale = (lambda d: None if d is None else d * b)
        return (input_shape[0], scale(input_shape[1]), scale(input_shape[2]), input_shape[3] // (b * b))

    def get_config(self) -> dict:
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="segzoo")
class SpaceToDepth(keras.layers.Layer):
    """``[B,H*b,W*b,C] -> [B,H,W,C*b*b]`` (TF/TFLite SPACE_TO_DEPTH, NHWC)."""

    def __init__(self, block_size: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block_size = int(block_size)

    def call(self, inputs: Any) -> Any:
        import tensorflow as tf

        return tf.nn.space_to_depth(inputs, self.block_size)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        b = self.block_size
        shrink = (lambda d: None if d is None else d // b)
        return (input_shape[0], shrink(input_shape[1]), shrink(input_shape[2]), input_shape[3] * b * b)

    def get_config(self) -> dict:
        return {**super().get_config(), "block_size": self.block_size}


@keras.saving.register_keras_serializable(package="segzoo")
class Clip(keras.layers.Layer):
    """``min(max(x, min_value), max_value)``."""

    def __init__(self, min_value: float, max_value: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_value, self.max_value = float(min_value), float(max_value)

    def call(self, inputs: Any) -> Any:
        return keras.ops.clip(inputs, self.min_value, self.max_value)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "min_value": self.min_value, "max_value": self.max_value}


def _broadcast_shape(left: tuple, right: tuple) -> tuple:
    rank = max(len(left), len(right))
    left, right = (1,) * (rank - len(left)) + tuple(left), (1,) * (rank - len(right)) + tuple(right)
    out = []
    for a, b in zip(left, right):
        if a is None or b is None:
            out.append(b if a == 1 else a)
        else:
            out.append(max(a, b))
    return tuple(out)


@keras.saving.register_keras_serializable(package="segzoo")
class ConstantOp(keras.layers.Layer):
    """``op(x, constant)`` with a constant of shape ``constant_shape`` (NumPy broadcasting).

    ``op``: ``add``, ``sub`` (``x - c``), ``rsub`` (``c - x``), ``mul``, ``maximum``, ``minimum``.
    """

    def __init__(self, op: str, constant_shape: tuple | list, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if op not in CONSTANT_OPS:
            raise ValueError(f"op must be one of {CONSTANT_OPS}, got {op!r}")
        self.op, self.constant_shape = op, tuple(int(d) for d in constant_shape)

    def build(self, input_shape: tuple) -> None:
        self.constant = self.add_weight(name="constant", shape=self.constant_shape, initializer="zeros",
                                        trainable=False)

    def call(self, inputs: Any) -> Any:
        ops, c = keras.ops, self.constant
        table = {"add": lambda: ops.add(inputs, c), "sub": lambda: ops.subtract(inputs, c),
                 "rsub": lambda: ops.subtract(c, inputs), "mul": lambda: ops.multiply(inputs, c),
                 "maximum": lambda: ops.maximum(inputs, c), "minimum": lambda: ops.minimum(inputs, c)}
        return table[self.op]()

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return _broadcast_shape(tuple(input_shape), self.constant_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "op": self.op, "constant_shape": list(self.constant_shape)}


@keras.saving.register_keras_serializable(package="segzoo")
class Reduce(keras.layers.Layer):
    """``mean(x, axis, keepdims)`` over non-batch axes."""

    def __init__(self, axis: list | tuple, keepdims: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis, self.keepdims = tuple(int(a) for a in axis), bool(keepdims)

    def call(self, inputs: Any) -> Any:
        return keras.ops.mean(inputs, axis=self.axis, keepdims=self.keepdims)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        if self.keepdims:
            return tuple(1 if i in self.axis else d for i, d in enumerate(input_shape))
        return tuple(d for i, d in enumerate(input_shape) if i not in self.axis)

    def get_config(self) -> dict:
        return {**super().get_config(), "axis": list(self.axis), "keepdims": self.keepdims}


@keras.saving.register_keras_serializable(package="segzoo")
class StridedSlice(keras.layers.Layer):
    """``x[begin_i:end_i:stride_i, ...]`` over the non-batch axes (None = open end), then ``shrink`` axes dropped
    (those take the single index ``begin_i``)."""

    def __init__(self, begin: list, end: list, strides: list, shrink: list | tuple = (), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.begin = [None if b is None else int(b) for b in begin]
        self.end = [None if e is None else int(e) for e in end]
        self.strides = [int(s) for s in strides]
        self.shrink = tuple(int(a) for a in shrink)

    def _index(self) -> tuple:
        index: list[Any] = [slice(None)]
        for axis, (b, e, s) in enumerate(zip(self.begin, self.end, self.strides), start=1):
            index.append(b if axis in self.shrink else slice(b, e, s))
        return tuple(index)

    def call(self, inputs: Any) -> Any:
        return inputs[self._index()]

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        out = [input_shape[0]]
        for axis, item in enumerate(self._index()[1:], start=1):
            if isinstance(item, slice):
                size = input_shape[axis]
                out.append(None if size is None else len(range(*item.indices(size))))
        return tuple(out)

    def get_config(self) -> dict:
        return {**super().get_config(), "begin": self.begin, "end": self.end, "strides": self.strides,
                "shrink": list(self.shrink)}


CUSTOM_OBJECTS: dict[str, type] = {f"segzoo>{cls.__name__}": cls for cls in
                                   (ResizeImage, DepthToSpace, SpaceToDepth, Clip, ConstantOp, Reduce, StridedSlice)}
"""Pass to ``keras.saving.load_model(..., custom_objects=CUSTOM_OBJECTS)`` (importing this module also works)."""

