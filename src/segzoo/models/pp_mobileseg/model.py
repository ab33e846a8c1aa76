"""PP-MobileSeg (StrideFormer + aggregated attention + head) in Keras, NHWC, ending at low-resolution logits.

Follows PaddleSeg's current code (``paddleseg/models/pp_mobileseg.py``, ``backbones/strideformer.py``; the AAM gates
are sigmoids). Every layer with weights is named after the PaddleSeg module that holds the same weights
(``backbone.smb1.conv.c``, ``backbone.trans1.transformer_blocks.0.attn.to_q.bn``, ``decode_head.conv_seg``...), so
the weight import is a mechanical name map (:mod:`segzoo.models.pp_mobileseg.weights`).

Graph (inference):

- four stacks of MobileNetV3 units (``smb1..smb4``, stem 3x3/2 conv + hard-swish); convolutions with stride 2 pad
  explicitly (``k // 2`` on each side, as PaddleSeg does) instead of Keras' asymmetric ``same``;
- after ``smb3`` and ``smb4``, SEA attention blocks (``trans1``, ``trans2``): a 3x3/2 depthwise conv, q/k/v 1x1
  convs, a detail branch (depthwise 3x3 + ReLU6 + 1x1 on concat(q, k, v)), row and column squeeze-axial
  attention with positional embeddings, a hard-sigmoid gate, bilinear upsampling back, then a conv MLP;
- the AAM: ``sigmoid`` gates of the 1/8, 1/16 and 1/32 features multiply the sum of the detail embeddings, plus the
  semantic embedding of the 1/32 features (tiny, fused at 1/16; the 1/8 features are halved by a 2x2 average pool,
  exactly PaddleSeg's bilinear resize by 0.5) or the ``AAMSx8`` form (base, fused at 1/8);
- head: depthwise 1x1 conv + BN + ReLU, dropout, 1x1 conv to the class logits (``decode_head.conv_seg``).

The model ends at the 1/16 (tiny) or 1/8 (base) logits: upsampling to the image size and the arg-max run on the
host (PaddleSeg's VIM, see :mod:`segzoo.models.pp_mobileseg.vim`), the training loss upsamples them bilinearly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.models.pp_mobileseg.params import PPMobileSegParams
from segzoo.models.pp_mobileseg.presets import ARCHITECTURES, Architecture, MV3Block

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

BN_EPSILON = 1e-5
"""PaddleSeg's (and PyTorch's) BatchNorm epsilon; Keras' default is 1e-3."""
BN_MOMENTUM = 0.9
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ------------------------------------------------------------------------------------------------ primitives
def _bn(x: Any, name: str) -> Any:
    import keras

    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)(x)


def _pad(x: Any, kernel: int, stride: int, name: str, padding: str = "symmetric") -> tuple[Any, str]:
    """Explicit symmetric padding for strided convolutions (PaddleSeg pads ``k // 2`` on every side).

    ``padding="same"``: no PAD op, TensorFlow's ``same`` (pads the bottom/right side more).
    """
    import keras

    if stride == 1 or kernel == 1 or padding == "same":
        return x, "same"
    return keras.layers.ZeroPadding2D(kernel // 2, name=f"{name}.pad")(x), "valid"


def _conv(x: Any, filters: int, name: str, kernel: int = 1, stride: int = 1, bias: bool = False,
          pad: str = "symmetric") -> Any:
    import keras

    x, padding = _pad(x, kernel, stride, name, pad)
    return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=bias,
                               kernel_initializer="he_normal", name=name)(x)


def _dwconv(x: Any, name: str, kernel: int = 3, stride: int = 1, bias: bool = False, pad: str = "symmetric") -> Any:
    import keras

    x, padding = _pad(x, kernel, stride, name, pad)
    return keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding, use_bias=bias,
                                        depthwise_initializer="he_normal", name=name)(x)


def activation(x: Any, kind: str, name: str) -> Any:
    """``relu``, ``relu6``, ``hardswish`` or ``sigmoid`` as a Keras layer."""
    import keras

    if kind == "relu":
        return keras.layers.ReLU(name=name)(x)
    if kind == "relu6":
        return keras.layers.ReLU(6.0, name=name)(x)
    if kind in ("hardswish", "sigmoid"):
        return keras.layers.Activation("hard_swish" if kind == "hardswish" else "sigmoid", name=name)(x)
    raise ModelError(f"unknown activation {kind!r}")


def conv_bn(x: Any, filters: int, name: str, kernel: int = 1, stride: int = 1, conv: str = "c",
            pad: str = "symmetric") -> Any:
    """PaddleSeg's Conv2DBN / ConvBNLayer / ConvBNAct without activation: ``{name}.{conv}`` + ``{name}.bn``."""
    return _bn(_conv(x, filters, f"{name}.{conv}", kernel, stride, pad=pad), f"{name}.bn")


# ------------------------------------------------------------------------------------------------ backbone
def _se(x: Any, name: str, reduction: int) -> Any:
    import keras

    from segzoo.models.pp_mobileseg.layers import HardSigmoid

    channels = int(x.shape[-1])
    y = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}.avg_pool")(x)
    y = _conv(y, channels // reduction, f"{name}.conv1", bias=True)
    y = keras.layers.ReLU(name=f"{name}.relu")(y)
    y = _conv(y, channels, f"{name}.conv2", bias=True)
    y = HardSigmoid(0.2, 0.5, name=f"{name}.hardsigmoid")(y)
    return keras.layers.Multiply(name=f"{name}.mul")([x, y])


def _act_name(block_act: str, params: PPMobileSegParams) -> str:
    return params.activation if block_act == "hardswish" else block_act


def residual_unit(x: Any, block: MV3Block, name: str, arch: Architecture, params: PPMobileSegParams) -> Any:
    """MobileNetV3 unit: 1x1 expand, kxk depthwise (stride), optional SE, 1x1 linear, residual when shapes match."""
    import keras

    act = _act_name(block.act, params)
    y = activation(conv_bn(x, block.expand, f"{name}.expand_conv"), act, f"{name}.expand_conv.act")
    y = _dwconv(y, f"{name}.bottleneck_conv.c", block.kernel, block.stride, pad=params.padding)
    y = activation(_bn(y, f"{name}.bottleneck_conv.bn"), act, f"{name}.bottleneck_conv.act")
    if block.se:
        y = _se(y, f"{name}.mid_se", arch.se_reduction)
    y = conv_bn(y, block.out, f"{name}.linear_conv")
    if block.stride == 1 and int(x.shape[-1]) == block.out:
        y = keras.layers.Add(name=f"{name}.add")([x, y])
    return y


def mv3_stack(x: Any, index: int, arch: Architecture, params: PPMobileSegParams) -> Any:
    """``smb{index+1}``: the stem (first stack only) and the MobileNetV3 units of one stage."""
    name = f"backbone.smb{index + 1}"
    if index == 0:
        x = activation(conv_bn(x, arch.channels[0], f"{name}.conv", kernel=3, stride=2, pad=params.padding),
                       _act_name("hardswish", params), f"{name}.conv.act")
    for i, block in enumerate(arch.stages[index]):
        x = residual_unit(x, block, f"{name}.blocks.{i}", arch, params)
    return x


# ----------------------------------------------------------------------------------------------- attention
def _squeeze(x: Any, axis: int, name: str) -> Any:
    """Mean over rows (``axis=1``) or columns (``axis=2``), kept as a ``[B,1,W,C]`` / ``[B,H,1,C]`` map.

    TFLite MEAN, which the STM32MP2 estimate places on the NPU. The same mean as an average pooling over the whole
    row or column was measured too: the estimate is the same (both count one operation per input element on the
    NPU) and TF 2.21's converter then leaves the row attention's value path in float (8 ops): not offered.
    """
    from segzoo.models.pp_mobileseg.layers import AxisMean

    return AxisMean(axis, name=name)(x)


def _axial_branch(q: Any, k: Any, v: Any, axis: int, key_dim: int, arch: Architecture, name: str,
                  branch: str) -> Any:
    """Squeeze ``q, k, v`` along ``axis`` (1: mean over rows -> column attention), attend, encode."""
    from segzoo.models.pp_mobileseg.layers import AxialPositionalEmbedding, SqueezeAxialAttention

    position_axis = 2 if axis == 1 else 1
    qs = _squeeze(q, axis, f"{name}.{branch}_q_mean")
    ks = _squeeze(k, axis, f"{name}.{branch}_k_mean")
    vs = _squeeze(v, axis, f"{name}.{branch}_v_mean")
    qs = AxialPositionalEmbedding(position_axis, arch.pos_embed_len, name=f"{name}.pos_emb_{branch}q")(qs)
    ks = AxialPositionalEmbedding(position_axis, arch.pos_embed_len, name=f"{name}.pos_emb_{branch}k")(ks)
    out = SqueezeAxialAttention(arch.num_heads, key_dim, position_axis, name=f"{name}.{branch}_attention")(
        [qs, ks, vs])
    out = activation(out, "relu6", f"{name}.proj_encode_{branch}.0")
    return conv_bn(out, int(v.shape[-1]), f"{name}.proj_encode_{branch}.1")


def sea_attention(x: Any, dim: int, key_dim: int, arch: Architecture, params: PPMobileSegParams, name: str) -> Any:
    """Strided SEA attention (PaddleSeg ``Sea_Attention`` with ``stride_attention=True``)."""
    import keras

    from segzoo.models.pp_mobileseg.layers import HardSigmoid, ResizeBilinear

    out_hw = (int(x.shape[1]), int(x.shape[2]))
    nh_kd = key_dim * arch.num_heads
    dh = arch.attn_ratio * key_dim * arch.num_heads
    x = _dwconv(x, f"{name}.stride_conv.0", kernel=3, stride=2, bias=True, pad=params.padding)
    x = _bn(x, f"{name}.stride_conv.1")
    q = conv_bn(x, nh_kd, f"{name}.to_q")
    k = conv_bn(x, nh_kd, f"{name}.to_k")
    v = conv_bn(x, dh, f"{name}.to_v")
    qkv = keras.layers.Concatenate(name=f"{name}.qkv")([q, k, v])
    qkv = _bn(_dwconv(qkv, f"{name}.dwconv.c", kernel=3), f"{name}.dwconv.bn")
    qkv = conv_bn(activation(qkv, "relu6", f"{name}.act"), dim, f"{name}.pwconv")
    # row attention: squeeze the columns (mean over W), attend along H; column attention the other way round
    rows = _axial_branch(q, k, v, 2, key_dim, arch, name, "row")
    columns = _axial_branch(q, k, v, 1, key_dim, arch, name, "column")
    xx = keras.layers.Add(name=f"{name}.row_plus_column")([rows, columns])
    xx = keras.layers.Add(name=f"{name}.plus_v")([v, xx])
    xx = conv_bn(activation(xx, "relu6", f"{name}.proj.0"), dim, f"{name}.proj.1")
    gate = HardSigmoid(1.0 / 6.0, 0.5, name=f"{name}.sigmoid")(xx)
    xx = keras.layers.Multiply(name=f"{name}.gate")([gate, qkv])
    return ResizeBilinear(*out_hw, name=f"{name}.upsample")(xx)


def mlp(x: Any, hidden: int, name: str) -> Any:
    """Conv MLP: 1x1 conv + BN, 3x3 depthwise conv (bias) + ReLU6, 1x1 conv + BN."""
    dim = int(x.shape[-1])
    y = conv_bn(x, hidden, f"{name}.fc1")
    y = activation(_dwconv(y, f"{name}.dwconv", kernel=3, bias=True), "relu6", f"{name}.act")
    return conv_bn(y, dim, f"{name}.fc2")


def _residual(x: Any, branch: Any, rate: float, name: str) -> Any:
    import keras

    from segzoo.models.pp_mobileseg.layers import DropPath

    if rate > 0:
        branch = DropPath(rate, name=f"{name}.drop_path")(branch)
    return keras.layers.Add(name=f"{name}.add")([x, branch])


def transformer_stage(x: Any, index: int, arch: Architecture, params: PPMobileSegParams) -> Any:
    """``trans{index+1}``: SEA attention blocks, each ``x + attn(x)`` then ``x + mlp(x)``."""
    depth, dim = arch.depths[index], arch.embed_dims[index]
    if int(x.shape[-1]) != dim:
        raise ModelError(f"PP-MobileSeg: stage {index + 3} gives {x.shape[-1]} channels, the attention expects {dim}")
    rates = np.linspace(0.0, params.drop_path_rate, depth)  # PaddleSeg: linspace(0, drop_path_rate, depth)
    for i in range(depth):
        name = f"backbone.trans{index + 1}.transformer_blocks.{i}"
        x = _residual(x, sea_attention(x, dim, arch.key_dims[index], arch, params, f"{name}.attn"),
                      float(rates[i]), f"{name}.attn")
        x = _residual(x, mlp(x, dim * arch.mlp_ratios[index], f"{name}.mlp"), float(rates[i]), f"{name}.mlp")
    return x


# --------------------------------------------------------------------------------------------------- AAM
def _resize(x: Any, hw: tuple[int, int], name: str) -> Any:
    from segzoo.models.pp_mobileseg.layers import ResizeBilinear

    if (int(x.shape[1]), int(x.shape[2])) == hw:
        return x
    return ResizeBilinear(*hw, name=name)(x)


def _embed(x: Any, channels: int, name: str) -> Any:
    return conv_bn(x, channels, name, conv="conv")


def _gate(x: Any, channels: int, name: str) -> Any:
    return activation(conv_bn(x, channels, name, conv="conv"), "sigmoid", f"{name}.sigmoid")


def aam(features: list, arch: Architecture) -> Any:
    """Aggregated attention module (``AAM`` of tiny at 1/16, ``AAMSx8`` of base at 1/8)."""
    import keras

    x8, x16, x32 = features
    ch, prefix = arch.aam_channels, "backbone.inj_module"
    if arch.aam == "AAM":
        low1 = keras.layers.AveragePooling2D(2, name=f"{prefix}.x8_half")(x8)  # bilinear 0.5, half-pixel == 2x2 mean
        hw = (int(low1.shape[1]), int(low1.shape[2]))
        low1_act = _gate(low1, ch, f"{prefix}.act_embedding_list.0")
        low1 = _embed(low1, ch, f"{prefix}.embedding_list.0")
        low2 = _resize(x16, hw, f"{prefix}.x16_resize")
        low2_act = _gate(low2, ch, f"{prefix}.act_embedding_list.1")
        low2 = _embed(low2, ch, f"{prefix}.embedding_list.1")
        high_act = _resize(_gate(x32, ch, f"{prefix}.act_embedding_list.2"), hw, f"{prefix}.high_act_resize")
        high = _resize(_embed(x32, ch, f"{prefix}.embedding_list.2"), hw, f"{prefix}.high_resize")
        gates = keras.layers.Multiply(name=f"{prefix}.gates")([low1_act, low2_act, high_act])
        detail = keras.layers.Add(name=f"{prefix}.detail")([low1, low2])
    else:
        low1 = _embed(x8, ch, f"{prefix}.embedding_list.0")
        hw = (int(low1.shape[1]), int(low1.shape[2]))
        low2 = _resize(x16, hw, f"{prefix}.x16_resize")
        low2_act = _gate(low2, ch, f"{prefix}.act_embedding_list.0")
        high_act = _resize(_gate(x32, ch, f"{prefix}.act_embedding_list.1"), hw, f"{prefix}.high_act_resize")
        high = _resize(_embed(x32, ch, f"{prefix}.embedding_list.1"), hw, f"{prefix}.high_resize")
        gates = keras.layers.Multiply(name=f"{prefix}.gates")([low2_act, high_act])
        detail = low1
    fused = keras.layers.Multiply(name=f"{prefix}.gated")([gates, detail])
    return keras.layers.Add(name=f"{prefix}.out")([fused, high])


# -------------------------------------------------------------------------------------------------- model
def head(x: Any, num_classes: int, dropout: float) -> Any:
    """PPMobileSegHead: depthwise 1x1 conv + BN + ReLU, dropout, 1x1 conv (bias) to the logits."""
    import keras

    x = keras.layers.DepthwiseConv2D(1, use_bias=False, depthwise_initializer="he_normal",
                                     name="decode_head.linear_fuse.conv")(x)
    x = activation(_bn(x, "decode_head.linear_fuse.bn"), "relu", "decode_head.linear_fuse.act")
    if dropout > 0:
        x = keras.layers.SpatialDropout2D(dropout, name="decode_head.dropout")(x)
    return keras.layers.Conv2D(num_classes, 1, kernel_initializer="he_normal", name="decode_head.conv_seg")(x)


def _normalization(x: Any) -> Any:
    """``(x - mean) / std`` per channel as a fixed 1x1 depthwise convolution (runs on the NPU, exact)."""
    import keras

    layer = keras.layers.DepthwiseConv2D(1, use_bias=True, trainable=False, name="input_normalization")
    y = layer(x)
    std = np.asarray(IMAGENET_STD, np.float32)
    layer.set_weights([(1.0 / std).reshape(1, 1, 3, 1), -np.asarray(IMAGENET_MEAN, np.float32) / std])
    return y


def _check(params: PPMobileSegParams, num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer; got {num_classes!r}.")
    problems = params.check()
    if problems:
        raise ModelError("PP-MobileSeg: " + "; ".join(f"training.model.{p}" for p in problems))


def build(params: PPMobileSegParams, num_classes: int) -> "keras.Model":
    """The PP-MobileSeg Keras model of ``params`` (ends at low-resolution logits); ModelError for bad options.

    ``params.pretrained_weights`` is loaded by the registry (:func:`segzoo.models.registry.build_from_params`).
    """
    _check(params, num_classes)
    import keras

    if keras.config.image_data_format() != "channels_last":
        raise ModelError("segzoo models need Keras image_data_format 'channels_last' (see ~/.keras/keras.json).")
    arch = ARCHITECTURES[params.variant]
    inputs = keras.Input(shape=tuple(params.input_shape), name="input")
    x = _normalization(inputs) if params.input_normalization == "imagenet" else inputs
    features = []
    for i in range(len(arch.stages)):
        x = mv3_stack(x, i, arch, params)
        if i == 1:
            features.append(x)
        first_attention = len(arch.stages) - len(arch.depths)
        if i >= first_attention:
            x = transformer_stage(x, i - first_attention, arch, params)
            features.append(x)
    logits = head(aam(features, arch), num_classes, params.dropout)
    model = keras.Model(inputs, logits, name=f"pp_mobileseg_{params.variant}")
    log.debug("built %s: input %s, logits %s", model.name, tuple(params.input_shape), tuple(logits.shape[1:]))
    return model
