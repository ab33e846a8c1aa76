"""One builder per TFLite op: the Keras layer(s) that compute exactly what the op computes.

A builder takes the import context and the op and returns the Keras tensors of the op's outputs. Stock Keras
layers are used wherever one has the op's exact semantics, configured as segzoo's own models are (so that
``segzoo.quantization.formatting`` recognises the patterns): ``Conv2D``/``DepthwiseConv2D`` with a bias and a
linear activation, followed by a separate ``ReLU(max_value=6)`` / ``ReLU`` for a fused activation; ``PAD`` as
``ZeroPadding2D``; bilinear resizes as ``UpSampling2D`` when the factor is an integer with half-pixel centers.

Conventions (TFLite -> Keras):

- weights: ``CONV_2D`` ``[O,H,W,I]`` -> ``[H,W,I,O]`` (``groups = C_in / I``); ``DEPTHWISE_CONV_2D`` ``[1,H,W,C*M]``
  -> ``[H,W,C,M]`` (output channel ``c*M + m`` in both); ``TRANSPOSE_CONV`` ``[O,H,W,I]`` -> ``[H,W,O,I]``;
  ``FULLY_CONNECTED`` ``[O,I]`` -> ``[I,O]``.
- padding: TFLite ``SAME`` is TF's (the odd extra pixel at the end, dilation included), so Keras ``"same"``;
  ``VALID`` is ``"valid"``. Transposed convolutions get the ``output_padding`` that gives the file's output size,
  and TF then derives the same padding as TFLite from that size.
- fused activations: ``RELU`` -> ``ReLU()``, ``RELU6`` -> ``ReLU(max_value=6)``, ``RELU_N1_TO_1`` -> ``Clip(-1, 1)``.
  A fused ``TANH`` or ``SIGN_BIT`` is **ignored by TFLite's kernels** (their activation range only knows the ReLU
  variants; measured with the interpreter for CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, ADD, SUB, MUL,
  AVERAGE_POOL_2D and, with XNNPACK, CONCATENATION): the file computes no activation, so none is rebuilt, with a
  warning naming the op.
- names: the op's last layer is named after its first output tensor (``names.layer_name``); a layer before a
  fused activation gets a suffix saying what it is (``_conv``, ``_dwconv``, ``_add``, ...).
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import keras
import numpy as np

from segzoo.errors import ModelError
from segzoo.litert import layers as custom
from segzoo.litert.flatbuffer import FlatModel, Operator
from segzoo.litert.names import NameTable

log = logging.getLogger(__name__)

PADDING: dict[int, str] = {0: "same", 1: "valid"}
"""Schema ``Padding`` enum -> Keras padding."""
TFLITE_C_PADDING: dict[int, str] = {1: "same", 2: "valid"}
"""The C API's ``TfLitePadding`` (used by raw custom-op structs: 0 unknown, 1 SAME, 2 VALID) -> Keras padding."""
ACTIVATIONS: dict[int, str] = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
IGNORED_ACTIVATIONS = frozenset({4, 5})
"""Fused activations that TFLite's float kernels do not apply (TANH, SIGN_BIT)."""


@dataclass
class Context:
    """What the builders share: the file, its constants, the Keras tensors built so far, the layer names."""

    flat: FlatModel
    constants: dict[int, np.ndarray]
    tensors: dict[int, Any] = field(default_factory=dict)
    names: NameTable = field(default_factory=NameTable)
    dtype: str = "float32"

    def named(self, name: str) -> dict[str, str]:
        """Constructor arguments every layer gets: its name and the model's dtype."""
        return {"name": name, "dtype": self.dtype}

    def fail(self, op: Operator, message: str) -> ModelError:
        """A ModelError naming the file and the op."""
        return ModelError(f"{self.flat.path}: {op.label}: {message}")

    def input_index(self, op: Operator, position: int) -> int:
        if position >= len(op.inputs) or op.inputs[position] < 0:
            raise self.fail(op, f"input {position} is missing")
        return op.inputs[position]

    def is_constant(self, op: Operator, position: int) -> bool:
        return position < len(op.inputs) and op.inputs[position] in self.constants

    def tensor(self, op: Operator, position: int) -> Any:
        """The Keras tensor of input ``position`` (an activation)."""
        index = self.input_index(op, position)
        if index not in self.tensors:
            what = "a constant" if index in self.constants else "not computed by any earlier op"
            raise self.fail(op, f"input {position} ('{self.flat.tensors[index].name}') is {what}; this op can only "
                                f"be rebuilt when that input is an activation")
        return self.tensors[index]

    def constant(self, op: Operator, position: int, what: str) -> np.ndarray:
        """The constant value of input ``position`` (float32 for float tensors)."""
        index = self.input_index(op, position)
        if index not in self.constants:
            raise self.fail(op, f"its {what} ('{self.flat.tensors[index].name}') is not a constant; only constant "
                                f"{what} can be rebuilt as Keras weights")
        value = self.constants[index]
        return value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value

    def optional_constant(self, op: Operator, position: int, what: str) -> np.ndarray | None:
        if position >= len(op.inputs) or op.inputs[position] < 0:
            return None
        return self.constant(op, position, what)

    def output_shape(self, op: Operator, position: int = 0) -> tuple[int, ...]:
        return self.flat.tensors[op.outputs[position]].shape

    def layer_name(self, op: Operator) -> str:
        """The name of the op's (last) layer: its output tensor's name, sanitized and unique."""
        return self.names.take(self.flat.tensors[op.outputs[0]].name)

    def sub_name(self, base: str, suffix: str) -> str:
        return self.names.take_exact(f"{base}_{suffix}")


Builder = Callable[[Context, Operator], list[Any]]


# ------------------------------------------------------------------------------------------- activations
_FUSED_LAYERS: dict[int, Callable[[Context, str], keras.layers.Layer]] = {
    1: lambda ctx, name: keras.layers.ReLU(**ctx.named(name)),
    2: lambda ctx, name: custom.Clip(-1.0, 1.0, **ctx.named(name)),
    3: lambda ctx, name: keras.layers.ReLU(max_value=6.0, **ctx.named(name)),
}
"""Fused activation code -> its layer (RELU, RELU_N1_TO_1, RELU6)."""


def _activation_layer(ctx: Context, op: Operator, code: int, name: str) -> keras.layers.Layer:
    if code not in _FUSED_LAYERS:
        raise ctx.fail(op, f"fused activation {ACTIVATIONS.get(code, code)} is not supported (NONE, RELU, RELU6 and "
                           f"RELU_N1_TO_1 are)")
    return _FUSED_LAYERS[code](ctx, name)


def _fused_code(ctx: Context, op: Operator) -> int:
    """The op's fused activation code; 0 for the ones TFLite's kernels ignore (with a warning)."""
    code = int(op.options.get("fused_activation_function", 0) or 0)
    if code in IGNORED_ACTIVATIONS:
        log.warning("%s: %s declares a fused %s activation, which TFLite's kernels do not apply; rebuilt without "
                    "it, as the interpreter computes the file", ctx.flat.path.name, op.label, ACTIVATIONS[code])
        return 0
    return code


def _with_activation(ctx: Context, op: Operator, make: Callable[[str], keras.layers.Layer], inputs: Any,
                     suffix: str, weights: list[np.ndarray] | None = None, name: str | None = None) -> Any:
    """Apply ``make(name)`` to ``inputs``, set ``weights``, then the op's fused activation as its own layer.

    ``name``: the op's layer name when the caller already took it (``ctx.layer_name``)."""
    code = _fused_code(ctx, op)
    name = name or ctx.layer_name(op)
    layer = make(ctx.sub_name(name, suffix) if code else name)
    out = layer(inputs)
    if weights is not None:
        layer.set_weights([np.asarray(w, ctx.dtype) for w in weights])
    return _activation_layer(ctx, op, code, name)(out) if code else out


# ---------------------------------------------------------------------------------------------- conv ops
def _strides(op: Operator) -> tuple[int, int]:
    return int(op.options.get("stride_h", 1) or 1), int(op.options.get("stride_w", 1) or 1)


def _dilation(op: Operator) -> tuple[int, int]:
    return int(op.options.get("dilation_h_factor", 1) or 1), int(op.options.get("dilation_w_factor", 1) or 1)


def _padding(ctx: Context, op: Operator) -> str:
    code = int(op.options.get("padding", 0) or 0)
    if code not in PADDING:
        raise ctx.fail(op, f"padding {code} is neither SAME nor VALID")
    return PADDING[code]


def _check_stride_dilation(ctx: Context, op: Operator, strides: tuple[int, int], dilation: tuple[int, int]) -> None:
    if max(strides) > 1 and max(dilation) > 1:
        raise ctx.fail(op, f"strides {strides} together with dilation {dilation} have no Keras equivalent")


def conv_2d(ctx: Context, op: Operator) -> list[Any]:
    x = ctx.tensor(op, 0)
    kernel = ctx.constant(op, 1, "weights")
    bias = ctx.optional_constant(op, 2, "bias")
    if kernel.ndim != 4:
        raise ctx.fail(op, f"weights of shape {list(kernel.shape)} are not [O,H,W,I]")
    out_ch, kh, kw, in_per_group = kernel.shape
    channels = int(x.shape[-1])
    if channels % in_per_group or out_ch % (channels // in_per_group):
        raise ctx.fail(op, f"{channels} input channels do not split into groups of {in_per_group}")
    strides, dilation = _strides(op), _dilation(op)
    _check_stride_dilation(ctx, op, strides, dilation)
    weights = [kernel.transpose(1, 2, 3, 0)] + ([bias] if bias is not None else [])
    make = (lambda name: keras.layers.Conv2D(out_ch, (kh, kw), strides=strides, padding=_padding(ctx, op),
                                             dilation_rate=dilation, groups=channels // in_per_group,
                                             use_bias=bias is not None, **ctx.named(name)))
    return [_with_activation(ctx, op, make, x, "conv", weights)]


def depthwise_conv_2d(ctx: Context, op: Operator) -> list[Any]:
    x = ctx.tensor(op, 0)
    kernel = ctx.constant(op, 1, "weights")
    bias = ctx.optional_constant(op, 2, "bias")
    channels = int(x.shape[-1])
    if kernel.ndim != 4 or kernel.shape[0] != 1 or kernel.shape[3] % channels:
        raise ctx.fail(op, f"weights of shape {list(kernel.shape)} are not [1,H,W,C*M] for {channels} channels")
    _, kh, kw, out_ch = kernel.shape
    multiplier = out_ch // channels
    strides, dilation = _strides(op), _dilation(op)
    _check_stride_dilation(ctx, op, strides, dilation)
    weights = [kernel.reshape(kh, kw, channels, multiplier)] + ([bias] if bias is not None else [])
    make = (lambda name: keras.layers.DepthwiseConv2D((kh, kw), strides=strides, padding=_padding(ctx, op),
                                                      depth_multiplier=multiplier, dilation_rate=dilation,
                                                      use_bias=bias is not None, **ctx.named(name)))
    return [_with_activation(ctx, op, make, x, "dwconv", weights)]


def _keras_deconv_length(length: int, kernel: int, stride: int, padding: str, output_padding: int | None) -> int:
    """Keras' output length of a transposed convolution (``deconv_output_length``)."""
    if output_padding is None:
        return length * stride + (max(kernel - stride, 0) if padding == "valid" else 0)
    pad = kernel // 2 if padding == "same" else 0
    return (length - 1) * stride + kernel - 2 * pad + output_padding


def _output_padding(in_hw: tuple[int, int], kernel_hw: tuple[int, int], strides: tuple[int, int], padding: str,
                    out_hw: tuple[int, int]) -> tuple[bool, tuple[int, int] | None]:
    """Whether one Keras Conv2DTranspose gives ``out_hw``, and with which ``output_padding`` (None: Keras' default).

    Keras needs ``0 <= output_padding < stride`` on every axis; e.g. SAME with an even kernel where one axis has
    the default size and the other does not cannot be expressed (``_deconv`` then crops a VALID result)."""
    geometry = list(zip(in_hw, kernel_hw, strides, out_hw))
    if all(_keras_deconv_length(i, k, s, padding, None) == o for i, k, s, o in geometry):
        return True, None
    extra = tuple(o - _keras_deconv_length(i, k, s, padding, 0) for i, k, s, o in geometry)
    if all(0 <= e < s for e, (_, _, s, _) in zip(extra, geometry)):
        return True, (extra[0], extra[1])
    return False, None


def _check_deconv_geometry(ctx: Context, op: Operator, in_hw: tuple[int, int], kernel_hw: tuple[int, int],
                           strides: tuple[int, int], padding: str, out_hw: tuple[int, int]) -> None:
    """The forward convolution of ``out_hw`` with these settings must give ``in_hw`` (TF derives padding so)."""
    for i, k, s, o in zip(in_hw, kernel_hw, strides, out_hw):
        forward = -(-o // s) if padding == "same" else (o - k) // s + 1
        if forward != i:
            raise ctx.fail(op, f"output size {list(out_hw)} does not invert a {padding} convolution to "
                               f"{list(in_hw)} (kernel {list(kernel_hw)}, strides {list(strides)})")


def _deconv(ctx: Context, op: Operator, x: Any, kernel: np.ndarray, bias: np.ndarray | None, padding: str,
            strides: tuple[int, int], out_hw: tuple[int, int]) -> Any:
    """A Conv2DTranspose with TFLite's ``[O,H,W,I]`` kernel and the file's output size.

    SAME padding removes ``p = (in-1)*s + k - out`` pixels of the full (VALID) result per axis, ``p // 2`` at the
    start (TF, TFLite and MediaPipe agree). One Keras layer when its ``output_padding`` can express the size, else
    the full VALID result followed by Cropping2D of exactly those pixels."""
    if kernel.ndim != 4 or kernel.shape[3] != int(x.shape[-1]):
        raise ctx.fail(op, f"weights of shape {list(kernel.shape)} are not [O,H,W,{int(x.shape[-1])}]")
    out_ch, kh, kw, _ = kernel.shape
    in_hw = (int(x.shape[1]), int(x.shape[2]))
    _check_deconv_geometry(ctx, op, in_hw, (kh, kw), strides, padding, out_hw)
    weights = [kernel.transpose(1, 2, 0, 3)] + ([bias] if bias is not None else [])

    def layer(mode: str, output_padding: tuple[int, int] | None, name: str) -> keras.layers.Layer:
        return keras.layers.Conv2DTranspose(out_ch, (kh, kw), strides=strides, padding=mode,
                                            output_padding=output_padding, use_bias=bias is not None,
                                            **ctx.named(name))

    single, output_padding = _output_padding(in_hw, (kh, kw), strides, padding, out_hw)
    if single:
        return _with_activation(ctx, op, lambda name: layer(padding, output_padding, name), x, "deconv", weights)
    name = ctx.layer_name(op)
    full = layer("valid", (0, 0), ctx.sub_name(name, "deconv"))
    y = full(x)
    full.set_weights([np.asarray(w, ctx.dtype) for w in weights])
    cuts = [(i - 1) * s + k - o for i, k, s, o in zip(in_hw, (kh, kw), strides, out_hw)]
    crop = tuple((c // 2, c - c // 2) for c in cuts)
    return _with_activation(ctx, op, lambda n: keras.layers.Cropping2D(crop, **ctx.named(n)), y, "crop", name=name)


def transpose_conv(ctx: Context, op: Operator) -> list[Any]:
    """TRANSPOSE_CONV: inputs (output_shape, weights [O,H,W,I], input, optional bias)."""
    shape = ctx.constant(op, 0, "output shape")
    kernel = ctx.constant(op, 1, "weights")
    x = ctx.tensor(op, 2)
    bias = ctx.optional_constant(op, 3, "bias")
    return [_deconv(ctx, op, x, kernel, bias, _padding(ctx, op), _strides(op), (int(shape[1]), int(shape[2])))]


def convolution_2d_transpose_bias(ctx: Context, op: Operator) -> list[Any]:
    """MediaPipe's custom ``Convolution2DTransposeBias``: inputs (input, weights [O,H,W,I], bias [O]); custom options
    are the raw C struct ``TfLiteTransposeConvParams`` (int32 padding (TfLitePadding), stride_width, stride_height).

    Output size (MediaPipe's Prepare): VALID ``s*(in-1) + k``; SAME ``s*(in-1) + k - p`` with
    ``p = max(0, k - (in-1) % s - 1)``, the output starting ``p // 2`` pixels inside the full result.
    """
    if len(op.custom_options) < 12:
        raise ctx.fail(op, f"custom options of {len(op.custom_options)} bytes; expected the 12-byte "
                           f"TfLiteTransposeConvParams struct (padding, stride_width, stride_height)")
    code, stride_w, stride_h = struct.unpack_from("<iii", op.custom_options)
    if code not in TFLITE_C_PADDING or stride_w < 1 or stride_h < 1:
        raise ctx.fail(op, f"custom options padding={code}, strides=({stride_h}, {stride_w}) are not valid")
    x = ctx.tensor(op, 0)
    kernel = ctx.constant(op, 1, "weights")
    bias = ctx.constant(op, 2, "bias")
    padding, strides = TFLITE_C_PADDING[code], (stride_h, stride_w)
    out_hw = []
    for size, k, s in zip((int(x.shape[1]), int(x.shape[2])), kernel.shape[1:3], strides):
        cut = max(0, k - (size - 1) % s - 1) if padding == "same" else 0
        out_hw.append(s * (size - 1) + k - cut)
    return [_deconv(ctx, op, x, kernel, bias, padding, strides, (out_hw[0], out_hw[1]))]


def fully_connected(ctx: Context, op: Operator) -> list[Any]:
    x = ctx.tensor(op, 0)
    kernel = ctx.constant(op, 1, "weights")
    bias = ctx.optional_constant(op, 2, "bias")
    if int(op.options.get("weights_format", 0) or 0) != 0:
        raise ctx.fail(op, "only the DEFAULT weights format is supported")
    if kernel.ndim != 2:
        raise ctx.fail(op, f"weights of shape {list(kernel.shape)} are not [O,I]")
    units, features = kernel.shape
    weights = [kernel.T] + ([bias] if bias is not None else [])
    shape = tuple(x.shape[1:])
    name = ctx.layer_name(op)
    if len(shape) > 1 and not op.options.get("keep_num_dims", False):
        if int(np.prod(shape)) != features:
            raise ctx.fail(op, f"input {list(shape)} is flattened into several rows; only [1,...] inputs with "
                               f"{features} values in all are supported")
        x = keras.layers.Flatten(**ctx.named(ctx.sub_name(name, "flatten")))(x)
    elif shape[-1] != features:
        raise ctx.fail(op, f"input has {shape[-1]} features, weights expect {features}")
    make = (lambda layer_name: keras.layers.Dense(units, use_bias=bias is not None, **ctx.named(layer_name)))
    return [_with_activation(ctx, op, make, x, "dense", weights, name=name)]


# ------------------------------------------------------------------------------------------ element-wise
_MERGE_LAYERS: dict[str, Callable[..., keras.layers.Layer]] = {
    "ADD": keras.layers.Add, "SUB": keras.layers.Subtract, "MUL": keras.layers.Multiply,
    "MAXIMUM": keras.layers.Maximum, "MINIMUM": keras.layers.Minimum,
}
_CONSTANT_OPS: dict[str, tuple[str, str]] = {
    "ADD": ("add", "add"), "SUB": ("sub", "rsub"), "MUL": ("mul", "mul"),
    "MAXIMUM": ("maximum", "maximum"), "MINIMUM": ("minimum", "minimum"),
}
"""Op -> ConstantOp op when the constant is the second input, and when it is the first."""


def binary(ctx: Context, op: Operator) -> list[Any]:
    """ADD, SUB, MUL, MAXIMUM, MINIMUM: a Keras merge layer, or ConstantOp when one input is a constant."""
    suffix = op.name.lower()
    first_const, second_const = ctx.is_constant(op, 0), ctx.is_constant(op, 1)
    if first_const and second_const:
        raise ctx.fail(op, "both inputs are constants")
    if not (first_const or second_const):
        inputs = [ctx.tensor(op, 0), ctx.tensor(op, 1)]
        return [_with_activation(ctx, op, lambda name: _MERGE_LAYERS[op.name](**ctx.named(name)), inputs, suffix)]
    position = 0 if first_const else 1
    value = ctx.constant(op, position, "constant operand").astype(np.float32)
    x = ctx.tensor(op, 1 - position)
    if value.ndim > len(x.shape) or (value.ndim == len(x.shape) and value.shape[0] != 1):
        raise ctx.fail(op, f"constant of shape {list(value.shape)} broadcasts over the batch axis")
    kind = _CONSTANT_OPS[op.name][1 if first_const else 0]
    shape = value.shape[1:] if value.ndim == len(x.shape) else value.shape
    make = (lambda name: custom.ConstantOp(kind, shape, **ctx.named(name)))
    return [_with_activation(ctx, op, make, x, suffix, [value.reshape(shape)])]


def concatenation(ctx: Context, op: Operator) -> list[Any]:
    inputs = [ctx.tensor(op, i) for i in range(len(op.inputs))]
    rank = len(inputs[0].shape)
    axis = int(op.options.get("axis", 0))
    axis = axis + rank if axis < 0 else axis
    if axis == 0:
        raise ctx.fail(op, "concatenation along the batch axis is not supported")
    make = (lambda name: keras.layers.Concatenate(axis=axis, **ctx.named(name)))
    return [_with_activation(ctx, op, make, inputs, "concat")]


# --------------------------------------------------------------------------------------------- pooling
def _pool(ctx: Context, op: Operator, layer: type, suffix: str) -> list[Any]:
    size = (int(op.options.get("filter_height", 1)), int(op.options.get("filter_width", 1)))
    make = (lambda name: layer(pool_size=size, strides=_strides(op), padding=_padding(ctx, op), **ctx.named(name)))
    return [_with_activation(ctx, op, make, ctx.tensor(op, 0), suffix)]


def average_pool_2d(ctx: Context, op: Operator) -> list[Any]:
    return _pool(ctx, op, keras.layers.AveragePooling2D, "pool")


def max_pool_2d(ctx: Context, op: Operator) -> list[Any]:
    return _pool(ctx, op, keras.layers.MaxPooling2D, "pool")


def mean(ctx: Context, op: Operator) -> list[Any]:
    x = ctx.tensor(op, 0)
    rank = len(x.shape)
    axes = sorted({int(a) + rank if int(a) < 0 else int(a) for a in np.atleast_1d(ctx.constant(op, 1, "axes"))})
    keepdims = bool(op.options.get("keep_dims", False))
    if 0 in axes:
        raise ctx.fail(op, "a mean over the batch axis is not supported")
    name = ctx.layer_name(op)
    if rank == 4 and axes == [1, 2]:
        return [keras.layers.GlobalAveragePooling2D(keepdims=keepdims, **ctx.named(name))(x)]
    return [custom.Reduce(axes, keepdims, **ctx.named(name))(x)]


# -------------------------------------------------------------------------------------------- resizing
def _resize_size(ctx: Context, op: Operator) -> tuple[int, int]:
    size = np.asarray(ctx.constant(op, 1, "size")).reshape(-1)
    if size.size != 2:
        raise ctx.fail(op, f"size {size.tolist()} is not [height, width]")
    return int(size[0]), int(size[1])


def _integer_factor(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> tuple[int, int] | None:
    if all(o % i == 0 for i, o in zip(in_hw, out_hw)):
        return out_hw[0] // in_hw[0], out_hw[1] // in_hw[1]
    return None


def _resize(ctx: Context, op: Operator, method: str) -> list[Any]:
    """Identity when the size does not change; UpSampling2D / Resizing when Keras' half-pixel resize is exact;
    ResizeImage (TF's kernel with TFLite's flags) otherwise."""
    x = ctx.tensor(op, 0)
    in_hw, out_hw = (int(x.shape[1]), int(x.shape[2])), _resize_size(ctx, op)
    align, half = bool(op.options.get("align_corners", False)), bool(op.options.get("half_pixel_centers", False))
    if align and half:
        raise ctx.fail(op, "align_corners and half_pixel_centers are both set")
    name = ctx.layer_name(op)
    factor = _integer_factor(in_hw, out_hw)
    if in_hw == out_hw:
        return [keras.layers.Identity(**ctx.named(name))(x)]
    # One source pixel: every variant broadcasts it. Nearest with an integer factor repeats pixels unless the
    # corners are aligned; bilinear with half-pixel centers is Keras' own resize.
    broadcast = method == "bilinear" and in_hw == (1, 1)
    if factor is not None and (broadcast or (method == "bilinear" and half) or (method == "nearest" and not align)):
        return [keras.layers.UpSampling2D(size=factor, interpolation=method, **ctx.named(name))(x)]
    if method == "bilinear" and half:
        return [keras.layers.Resizing(out_hw[0], out_hw[1], interpolation="bilinear", **ctx.named(name))(x)]
    return [custom.ResizeImage(out_hw[0], out_hw[1], method, align, half, **ctx.named(name))(x)]


def resize_bilinear(ctx: Context, op: Operator) -> list[Any]:
    return _resize(ctx, op, "bilinear")


def resize_nearest_neighbor(ctx: Context, op: Operator) -> list[Any]:
    return _resize(ctx, op, "nearest")


def depth_to_space(ctx: Context, op: Operator) -> list[Any]:
    return [custom.DepthToSpace(int(op.options["block_size"]), **ctx.named(ctx.layer_name(op)))(ctx.tensor(op, 0))]


def space_to_depth(ctx: Context, op: Operator) -> list[Any]:
    return [custom.SpaceToDepth(int(op.options["block_size"]), **ctx.named(ctx.layer_name(op)))(ctx.tensor(op, 0))]


# ---------------------------------------------------------------------------------------------- shapes
def pad(ctx: Context, op: Operator) -> list[Any]:
    """PAD / PADV2 (zero value) of the two spatial axes of a 4-D tensor: ZeroPadding2D."""
    x = ctx.tensor(op, 0)
    pads = np.asarray(ctx.constant(op, 1, "paddings")).astype(np.int64)
    if op.name == "PADV2" and len(op.inputs) > 2 and float(np.asarray(ctx.constant(op, 2, "pad value"))) != 0.0:
        raise ctx.fail(op, "only zero padding is supported")
    if len(x.shape) != 4 or pads.shape != (4, 2) or pads[0].any() or pads[3].any() or (pads < 0).any():
        raise ctx.fail(op, f"paddings {pads.tolist()} are not zero padding of the spatial axes of a 4-D tensor")
    spec = ((int(pads[1, 0]), int(pads[1, 1])), (int(pads[2, 0]), int(pads[2, 1])))
    return [keras.layers.ZeroPadding2D(spec, **ctx.named(ctx.layer_name(op)))(x)]


def reshape(ctx: Context, op: Operator) -> list[Any]:
    """RESHAPE to the output tensor's shape (batch kept)."""
    x = ctx.tensor(op, 0)
    target = ctx.output_shape(op)
    if not target or target[0] != 1:
        raise ctx.fail(op, f"output shape {list(target)} does not keep a batch of 1 first")
    return [keras.layers.Reshape(tuple(int(d) for d in target[1:]), **ctx.named(ctx.layer_name(op)))(x)]


def strided_slice(ctx: Context, op: Operator) -> list[Any]:
    x = ctx.tensor(op, 0)
    begin, end, strides = (np.asarray(ctx.constant(op, i, what)).reshape(-1).tolist()
                           for i, what in ((1, "begin"), (2, "end"), (3, "strides")))
    opts = op.options
    if opts.get("ellipsis_mask", 0) or opts.get("new_axis_mask", 0) or opts.get("offset", False):
        raise ctx.fail(op, "ellipsis_mask, new_axis_mask and offset are not supported")
    rank = len(x.shape)
    if len(begin) != rank:
        raise ctx.fail(op, f"{len(begin)} slice dimensions for a rank-{rank} input")
    begin_mask, end_mask, shrink_mask = (int(opts.get(k, 0) or 0) for k in ("begin_mask", "end_mask",
                                                                              "shrink_axis_mask"))
    starts = [None if begin_mask >> d & 1 else int(begin[d]) for d in range(rank)]
    stops = [None if end_mask >> d & 1 else int(end[d]) for d in range(rank)]
    batch_whole = starts[0] in (None, 0) and (stops[0] is None or stops[0] >= 1) and strides[0] == 1
    if not batch_whole or shrink_mask & 1:
        raise ctx.fail(op, "the slice does not keep the batch axis whole")
    shrink = [d for d in range(1, rank) if shrink_mask >> d & 1]
    layer = custom.StridedSlice(starts[1:], stops[1:], [int(s) for s in strides[1:]], shrink,
                                **ctx.named(ctx.layer_name(op)))
    return [layer(x)]


# ----------------------------------------------------------------------------------------- activations
def _unary(make: Callable[[Context, Operator, str], keras.layers.Layer]) -> Builder:
    def build(ctx: Context, op: Operator) -> list[Any]:
        return [make(ctx, op, ctx.layer_name(op))(ctx.tensor(op, 0))]

    return build


def prelu(ctx: Context, op: Operator) -> list[Any]:
    x = ctx.tensor(op, 0)
    alpha = ctx.constant(op, 1, "alpha")
    feature_shape = tuple(int(d) for d in x.shape[1:])
    if alpha.ndim > len(feature_shape):
        raise ctx.fail(op, f"alpha of shape {list(alpha.shape)} broadcasts over the batch axis")
    alpha = alpha.reshape((1,) * (len(feature_shape) - alpha.ndim) + alpha.shape)
    shared = [axis + 1 for axis, size in enumerate(alpha.shape) if size == 1 and feature_shape[axis] != 1]
    layer = keras.layers.PReLU(shared_axes=shared or None, **ctx.named(ctx.layer_name(op)))
    out = layer(x)
    layer.set_weights([np.broadcast_to(alpha, layer.alpha.shape).astype(ctx.dtype)])
    return [out]


def softmax(ctx: Context, op: Operator) -> list[Any]:
    beta = float(op.options.get("beta", 1.0))
    if beta != 1.0:
        raise ctx.fail(op, f"softmax with beta {beta} is not supported (only beta 1)")
    return [keras.layers.Softmax(axis=-1, **ctx.named(ctx.layer_name(op)))(ctx.tensor(op, 0))]


BUILDERS: MappingProxyType[str, Builder] = MappingProxyType({
    "CONV_2D": conv_2d,
    "DEPTHWISE_CONV_2D": depthwise_conv_2d,
    "TRANSPOSE_CONV": transpose_conv,
    "Convolution2DTransposeBias": convolution_2d_transpose_bias,
    "FULLY_CONNECTED": fully_connected,
    "ADD": binary, "SUB": binary, "MUL": binary, "MAXIMUM": binary, "MINIMUM": binary,
    "CONCATENATION": concatenation,
    "AVERAGE_POOL_2D": average_pool_2d,
    "MAX_POOL_2D": max_pool_2d,
    "MEAN": mean,
    "RESIZE_BILINEAR": resize_bilinear,
    "RESIZE_NEAREST_NEIGHBOR": resize_nearest_neighbor,
    "DEPTH_TO_SPACE": depth_to_space,
    "SPACE_TO_DEPTH": space_to_depth,
    "PAD": pad, "PADV2": pad,
    "RESHAPE": reshape,
    "STRIDED_SLICE": strided_slice,
    "LOGISTIC": _unary(lambda ctx, op, name: keras.layers.Activation("sigmoid", **ctx.named(name))),
    "TANH": _unary(lambda ctx, op, name: keras.layers.Activation("tanh", **ctx.named(name))),
    "RELU": _unary(lambda ctx, op, name: keras.layers.ReLU(**ctx.named(name))),
    "RELU6": _unary(lambda ctx, op, name: keras.layers.ReLU(max_value=6.0, **ctx.named(name))),
    "RELU_N1_TO_1": _unary(lambda ctx, op, name: custom.Clip(-1.0, 1.0, **ctx.named(name))),
    "LEAKY_RELU": _unary(lambda ctx, op, name: keras.layers.LeakyReLU(
        negative_slope=float(op.options.get("alpha", 0.2)), **ctx.named(name))),
    "HARD_SWISH": _unary(lambda ctx, op, name: keras.layers.Activation("hard_swish", **ctx.named(name))),
    "PRELU": prelu,
    "SOFTMAX": softmax,
})
"""TFLite op name (builtin name or custom code) -> builder."""
