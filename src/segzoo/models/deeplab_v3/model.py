"""DeepLabV3 on a Keras MobileNetV2 backbone, built the way the STM32 model zoo builds it.

Graph: MobileNetV2 (``include_top=False``) cut at ``block_13_expand_relu`` (output stride 16) or
``block_6_expand_relu`` (8) -> ASPP head -> Dropout -> 1x1 conv ``logits`` -> optional bilinear
``upsampled_logits`` back to the input size. The output is raw logits (no softmax).

ASPP variants (every conv is followed by BatchNorm + ReLU; convs before a BN have no bias):

- ``v1``: 1x1 conv branch + three 3x3 dilated conv branches + image pooling branch (ST's reference 512 model).
- ``v2``: as v1, but each dilated branch is depthwise-separable: dilated 3x3 DepthwiseConv2D + BN + ReLU +
  1x1 conv + BN + ReLU.
- ``none``: 1x1 branch + image pooling only (like the X-LINUX-AI 257 model: CONV_2D, DEPTHWISE_CONV_2D, ADD,
  MEAN, CONCATENATION, RESIZE_BILINEAR).

Image pooling is GlobalAveragePooling2D(keepdims=True) + 1x1 conv + BN + ReLU + bilinear UpSampling2D to the
feature size, so TFLite gets MEAN + RESIZE_BILINEAR. Only stock Keras layers are used: the model saves/loads as
``.keras`` without ``custom_objects`` and converts to an int8 TFLite model without Flex/custom ops.

Branch width is 256 filters for every alpha, as ST does (the head is then a large part of the MACs at small alpha;
see ``pretrained_models/README.md``).

Dilation rates: the classic (6, 12, 18) at output stride 16 for a 513 input ((12, 24, 36) at stride 8), scaled
per axis to the actual feature-map size: ``rate = max(1, round_half_up(r * feature / (513 / output_stride)))``.
A 512x512 input at stride 16 gets exactly (6, 12, 18); small inputs get small rates instead of rates larger
than the feature map. Non-square inputs get per-axis rates ``(rate_h, rate_w)``.

The model expects MobileNetV2 inputs in [-1, 1] (``x = pixel / 127.5 - 1``); it contains no rescaling layer.
Pretrained weights are loaded after the build by the registry (``segzoo.models.deeplab_v3.weights``).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from segzoo.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import keras

    from segzoo.models.deeplab_v3.params import DeepLabV3Params

log = logging.getLogger(__name__)

ALPHAS: tuple[float, ...] = (0.35, 0.5, 0.75, 1.0)
OUTPUT_STRIDES: tuple[int, ...] = (8, 16)
ASPP_VERSIONS: tuple[str, ...] = ("v1", "v2", "none")
BACKBONE_CUTS: dict[int, str] = {16: "block_13_expand_relu", 8: "block_6_expand_relu"}
ASPP_FILTERS = 256
BASE_RATES_OS16: tuple[int, ...] = (6, 12, 18)
REFERENCE_SIZE = 513
MIN_INPUT_SIZE = 32


# ----------------------------------------------------------------------------------------------- validation
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nearest_multiple(value: int, stride: int) -> int:
    return max(MIN_INPUT_SIZE, stride * max(1, round(value / stride)))


def validate_input_shape(input_shape: Any, output_stride: int) -> tuple[int, int, int]:
    """``(H, W, C)`` as ints; ModelError unless H and W are multiples of ``output_stride`` and at least 32."""
    if not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3 or not all(map(_is_int, input_shape)):
        raise ModelError(f"input_shape must be (height, width, channels) integers; got {input_shape!r}.")
    height, width, channels = (int(v) for v in input_shape)
    if channels < 1:
        raise ModelError(f"input_shape {input_shape!r} has {channels} channels; need at least 1.")
    if height < MIN_INPUT_SIZE or width < MIN_INPUT_SIZE or height % output_stride or width % output_stride:
        suggestion = f"{_nearest_multiple(height, output_stride)}x{_nearest_multiple(width, output_stride)}"
        raise ModelError(
            f"Input size {height}x{width} does not work with output_stride {output_stride}: height and width must "
            f"both be multiples of {output_stride} and at least {MIN_INPUT_SIZE} (nearest valid size: {suggestion})."
        )
    return height, width, channels


def _validate_options(num_classes: Any, alpha: Any, output_stride: Any, aspp: Any, dropout: Any, upsample: Any) -> None:
    """ModelError naming the allowed values for the first bad option."""
    if not _is_int(num_classes) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer; got {num_classes!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or float(alpha) not in ALPHAS:
        raise ModelError(f"alpha={alpha!r} is not supported; choose one of {', '.join(map(str, ALPHAS))}.")
    if not _is_int(output_stride) or output_stride not in OUTPUT_STRIDES:
        raise ModelError(f"output_stride={output_stride!r} is not supported; choose one of 8, 16.")
    if aspp not in ASPP_VERSIONS:
        raise ModelError(f"aspp={aspp!r} is not supported; choose one of {', '.join(map(repr, ASPP_VERSIONS))}.")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ModelError(f"dropout must be a number in [0, 1); got {dropout!r}.")
    if not isinstance(upsample, bool):
        raise ModelError(f"upsample must be true or false; got {upsample!r}.")


# ------------------------------------------------------------------------------------------- dilation rates
def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def scaled_dilation_rates(feature_size: int, output_stride: int) -> tuple[int, ...]:
    """The (6, 12, 18)@os16 / (12, 24, 36)@os8 rates of a 513 input, scaled to a ``feature_size`` map."""
    reference_feature = REFERENCE_SIZE / output_stride
    factor = 16 / output_stride
    return tuple(max(1, _round_half_up(r * factor * feature_size / reference_feature)) for r in BASE_RATES_OS16)


# ----------------------------------------------------------------------------------------------- layers
def _conv_bn_relu(x: Any, filters: int, name: str, kernel: int = 1, rate: tuple[int, int] = (1, 1)) -> Any:
    import keras

    x = keras.layers.Conv2D(filters, kernel, padding="same", dilation_rate=rate, use_bias=False,
                            kernel_initializer="he_normal", name=f"{name}_conv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return keras.layers.ReLU(name=f"{name}_relu")(x)


def _sep_conv_bn_relu(x: Any, filters: int, name: str, rate: tuple[int, int]) -> Any:
    import keras

    x = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=rate, use_bias=False,
                                     depthwise_initializer="he_normal", name=f"{name}_dwconv")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dwbn")(x)
    x = keras.layers.ReLU(name=f"{name}_dwrelu")(x)
    return _conv_bn_relu(x, filters, name)


def _image_pooling(x: Any, filters: int, feature_hw: tuple[int, int]) -> Any:
    import keras

    y = keras.layers.GlobalAveragePooling2D(keepdims=True, name="aspp_pool_gap")(x)
    y = _conv_bn_relu(y, filters, "aspp_pool")
    return keras.layers.UpSampling2D(size=feature_hw, interpolation="bilinear", name="aspp_pool_upsample")(y)


def aspp_head(x: Any, version: str, output_stride: int, filters: int = ASPP_FILTERS) -> Any:
    """ASPP (``v1``/``v2``/``none``) on feature map ``x``, followed by the 1x1 projection conv + BN + ReLU."""
    import keras

    feature_h, feature_w = int(x.shape[1]), int(x.shape[2])
    branches = [_conv_bn_relu(x, filters, "aspp_b0")]
    if version != "none":
        rates = zip(scaled_dilation_rates(feature_h, output_stride), scaled_dilation_rates(feature_w, output_stride))
        for i, rate in enumerate(rates, start=1):
            if version == "v1":
                branches.append(_conv_bn_relu(x, filters, f"aspp_b{i}", kernel=3, rate=rate))
            else:
                branches.append(_sep_conv_bn_relu(x, filters, f"aspp_b{i}", rate=rate))
    branches.append(_image_pooling(x, filters, (feature_h, feature_w)))
    y = keras.layers.Concatenate(name="aspp_concat")(branches)
    return _conv_bn_relu(y, filters, "aspp_proj")


# ------------------------------------------------------------------------------------------------ builder
BN_MOMENTUM = 0.9
"""Batch-norm momentum of every layer of the model (the head uses it too)."""


def _default_name(alpha: float, output_stride: int, aspp: str) -> str:
    alpha_tag = f"{float(alpha):g}".replace(".", "")
    return f"deeplab_v3_mobilenetv2_{alpha_tag}_{output_stride}_aspp{aspp}"


def _backbone_features(inputs: Any, alpha: float, output_stride: int) -> Any:
    """MobileNetV2 built on ``inputs`` (layers shared, so the final model is flat); the cut feature tensor."""
    import keras

    backbone = keras.applications.MobileNetV2(input_tensor=inputs, input_shape=tuple(inputs.shape[1:]), alpha=alpha,
                                              include_top=False, weights=None)
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Keras' MobileNetV2 uses 0.999, made for long ImageNet runs: the moving statistics then lag
            # far behind the weights in short fine-tuning or from-scratch runs and evaluation collapses.
            layer.momentum = BN_MOMENTUM
    return backbone.get_layer(BACKBONE_CUTS[output_stride]).output


def build_deeplabv3(
    input_shape: tuple[int, int, int] = (512, 512, 3),
    num_classes: int = 21,
    *,
    alpha: float = 0.5,
    output_stride: int = 16,
    aspp: str = "v1",
    dropout: float = 0.1,
    upsample: bool = True,
    name: str | None = None,
) -> "keras.Model":
    """DeepLabV3-MobileNetV2 with random weights (see module docstring); ModelError for any unusable option."""
    _validate_options(num_classes, alpha, output_stride, aspp, dropout, upsample)
    shape = validate_input_shape(input_shape, output_stride)
    alpha = float(alpha)
    import keras

    if keras.config.image_data_format() != "channels_last":
        raise ModelError("segzoo models need Keras image_data_format 'channels_last' (see ~/.keras/keras.json).")
    inputs = keras.Input(shape=shape, name="input")
    features = _backbone_features(inputs, alpha, output_stride)
    x = aspp_head(features, aspp, output_stride)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    x = keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name="logits")(x)
    if upsample:
        x = keras.layers.UpSampling2D(size=output_stride, interpolation="bilinear", name="upsampled_logits")(x)
    model = keras.Model(inputs, x, name=name or _default_name(alpha, output_stride, aspp))
    log.debug("built %s: input %s, output %s", model.name, shape, tuple(model.output.shape[1:]))
    return model


def build(params: "DeepLabV3Params", num_classes: int) -> "keras.Model":
    """The family builder: a DeepLabV3 of ``params`` for ``num_classes`` (weights are loaded by the registry)."""
    return build_deeplabv3(tuple(params.input_shape), num_classes, alpha=params.alpha,
                           output_stride=params.output_stride, aspp=params.aspp, dropout=params.dropout,
                           upsample=params.upsample)
