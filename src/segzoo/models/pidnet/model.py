"""PIDNet-S/M/L in Keras, as the official ``XuJiacong/PIDNet`` ``models/pidnet.py`` builds it (our own code).

Three branches from a shared stem (``conv1``, ``layer1``, ``layer2``; 1/8 resolution):

- **I** (integral, context): ``layer3``..``layer5`` down to 1/64, then PAPPM (S, M) or DAPPM (L), upsampled to 1/8.
- **P** (proportional, detail): ``layer3_``..``layer5_`` at 1/8, fused with the I branch by two Pag modules
  (pixel-attention-guided fusion) after ``compression3``/``compression4``.
- **D** (derivative, boundary): ``layer3_d``..``layer5_d`` at 1/8, plus the upsampled ``diff3``/``diff4`` of the
  I branch.
- Bag (L) / Light-Bag (S, M) fuses P and I under the boundary attention ``sigmoid(D)``; ``final_layer`` gives the
  logits at 1/8. Training adds ``seghead_p`` (on the P branch after ``pag3``) and ``seghead_d`` (one channel, on
  the D branch after ``diff4``).

The official forward applies its in-place ReLU to the tensors it kept for the two training heads (``temp_p``,
``temp_d`` alias ``x_`` and ``x_d``), so ``seghead_p`` and ``seghead_d`` see the ReLU'd features; this port does
the same (mmsegmentation clones them first: its heads see them before the ReLU; the main logits are the same).

Keras layer names are the official module paths (``layer3_.0.conv1``, ``spp.scale1.1``), so the weight importer
maps names one to one. Every layer is a stock Keras layer (the model saves and loads without custom objects).

**NPU-friendly forms** (each tested against its literal form in ``tests/test_pidnet.py``):

- Pag's channel sum ``sum_c(x_k * y_q)`` is a 1x1 convolution with a fixed all-ones kernel (non-trainable).
- Gates ``(1-s)*x + s*y`` are ``x + s*(y-x)`` (one MUL, no constant ``1-s``); Light-Bag's ``(1-s)*i + p`` is
  ``(p+i) - s*i``.
- Average pools use the official padding semantics: explicit zero padding, then a 'valid' pool that divides by the
  whole window (``count_include_pad``), not Keras 'same' (which divides by the unpadded count).
- 3x3 convolutions with stride 2 pad 1 pixel on each side explicitly (PyTorch ``padding=1``), not Keras 'same'
  (which pads only bottom/right on even sizes).
- PAPPM's grouped 3x3 convolution (4 groups) is split into one convolution per scale branch, which is exactly the
  group it reads (its BatchNorm splits with it), so no concatenation precedes it.
- A pooled 1x1 map (image pooling, and any scale pooled down to 1x1) is added by broadcasting instead of being
  resized.
- BatchNorm: in the *training* graph (``build``) every BatchNormalization is a Keras layer (it must keep its batch
  statistics while training). The *inference* graph (``export``, same builder with ``fold=True``) folds each
  BatchNorm that follows a convolution into that convolution, and turns each standalone BatchNorm (the pre-activation
  ``BN -> ReLU -> conv`` of the heads, PAPPM/DAPPM and Bag) into a 1x1 DepthwiseConv2D: no MUL/ADD pair is left for
  the converter.

Inputs: ``[H, W, C]`` with H and W multiples of 64. The model contains no normalisation (the official weights expect
ImageNet mean/std normalised RGB).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from segzoo.errors import ModelError
from segzoo.models.pidnet.params import INPUT_MULTIPLE, PidnetParams

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

BN_EPSILON = 1e-5
"""PyTorch's BatchNorm2d epsilon (the official weights were trained with it)."""
BN_MOMENTUM = 0.9
"""Keras momentum for PyTorch's ``momentum=0.1``."""
OUTPUT_STRIDE = 8
CUSTOM_OBJECTS: Mapping[str, type] = MappingProxyType({})
"""Custom Keras objects of the family: none (every layer is a stock Keras layer)."""


@dataclass(frozen=True)
class Arch:
    """The constants of one official variant (``get_seg_model``)."""

    planes: int
    ppm_planes: int
    head_planes: int
    m: int
    n: int

    @property
    def light(self) -> bool:
        """S and M (``m == 2``): PAPPM + Light-Bag and a lighter D branch; L: DAPPM + Bag."""
        return self.m == 2


ARCHS: dict[str, Arch] = {
    "s": Arch(planes=32, ppm_planes=96, head_planes=128, m=2, n=3),
    "m": Arch(planes=64, ppm_planes=96, head_planes=128, m=2, n=3),
    "l": Arch(planes=64, ppm_planes=112, head_planes=256, m=3, n=4),
}

PYRAMID_POOLS: tuple[tuple[int, int, int], ...] = ((5, 2, 2), (9, 4, 4), (17, 8, 8))
"""(kernel, stride, padding) of PAPPM/DAPPM ``scale1``..``scale3`` (``scale4`` is the global average)."""


def arch_of(variant: str) -> Arch:
    """The constants of ``variant``; ModelError naming the choices if unknown."""
    if variant not in ARCHS:
        raise ModelError(f"training.model.variant: {variant!r} is not a PIDNet variant; choose one of "
                         f"{', '.join(sorted(ARCHS))}.")
    return ARCHS[variant]


# ------------------------------------------------------------------------------------------------ builder
@dataclass
class Builder:
    """Builds PIDNet graphs with stock Keras layers.

    ``fold=False``: the training form (Conv2D + BatchNormalization). ``fold=True``: the inference form (BatchNorm
    after a conv folded into the conv's bias; standalone BatchNorm as a 1x1 DepthwiseConv2D). ``folded`` records
    ``conv name -> BatchNorm name`` and ``standalone`` the BatchNorm names turned into depthwise convs, so that
    :mod:`segzoo.models.pidnet.export` can compute their weights from the training model.
    """

    fold: bool = False
    folded: dict[str, str] = field(default_factory=dict)
    standalone: list[str] = field(default_factory=list)
    _names: dict[str, int] = field(default_factory=dict)

    # ---- names
    def name(self, base: str) -> str:
        """A unique name for an unweighted layer (``base``, then ``base_2``, ...)."""
        count = self._names.get(base, 0) + 1
        self._names[base] = count
        return base if count == 1 else f"{base}_{count}"

    # ---- primitive layers
    def conv(self, x: Any, path: str, filters: int, kernel: int = 1, stride: int = 1, bias: bool = False,
             bn: str | None = None) -> Any:
        """PyTorch's ``Conv2d(kernel, stride, padding=kernel//2)``, optionally followed by BatchNorm ``bn``."""
        import keras

        pad = kernel // 2
        padding = "same" if stride == 1 else "valid"
        if stride != 1 and pad:
            x = keras.layers.ZeroPadding2D(pad, name=self.name(f"{path}.pad"))(x)
        use_bias = bias or (bn is not None and self.fold)
        x = keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=use_bias,
                                kernel_initializer=keras.initializers.HeNormal(), name=path)(x)
        if bn is None:
            return x
        if self.fold:
            self.folded[path] = bn
            return x
        return self.batch_norm(x, bn)

    def batch_norm(self, x: Any, path: str) -> Any:
        """A Keras BatchNormalization with PyTorch's epsilon and momentum."""
        import keras

        return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=path)(x)

    def standalone_bn(self, x: Any, path: str) -> Any:
        """A BatchNorm not preceded by a conv: BatchNormalization (training) or a 1x1 DepthwiseConv2D (folded)."""
        import keras

        if not self.fold:
            return self.batch_norm(x, path)
        self.standalone.append(path)
        return keras.layers.DepthwiseConv2D(1, use_bias=True, name=path)(x)

    def relu(self, x: Any, path: str) -> Any:
        import keras

        return keras.layers.ReLU(name=self.name(f"{path}.relu"))(x)

    def add(self, tensors: list, path: str) -> Any:
        import keras

        return keras.layers.Add(name=self.name(f"{path}.add"))(tensors)

    def upsample_to(self, x: Any, size: tuple[int, int], path: str) -> Any:
        """Bilinear resize of ``x`` to ``size`` with PyTorch's ``align_corners=False`` (half-pixel) mapping."""
        import keras

        height, width = int(x.shape[1]), int(x.shape[2])
        if (height, width) == tuple(size):
            return x
        if size[0] % height == 0 and size[1] % width == 0:
            return keras.layers.UpSampling2D(size=(size[0] // height, size[1] // width), interpolation="bilinear",
                                             name=self.name(f"{path}.up"))(x)
        return keras.layers.Resizing(size[0], size[1], interpolation="bilinear", name=self.name(f"{path}.up"))(x)

    def avg_pool(self, x: Any, kernel: int, stride: int, pad: int, path: str) -> Any:
        """PyTorch ``AvgPool2d(kernel, stride, pad)`` (zero padding counted in the divisor): pad + 'valid' pool."""
        import keras

        if pad:
            x = keras.layers.ZeroPadding2D(pad, name=self.name(f"{path}.pad"))(x)
        return keras.layers.AveragePooling2D(kernel, strides=stride, padding="valid", name=self.name(path))(x)

    def add_upsampled(self, small: Any, x: Any, path: str) -> Any:
        """``resize(small, size of x) + x``; a 1x1 ``small`` is added by broadcasting (no resize)."""
        if tuple(small.shape[1:3]) != (1, 1):
            small = self.upsample_to(small, (int(x.shape[1]), int(x.shape[2])), path)
        return self.add([small, x], path)

    # ---- residual blocks
    def basic_block(self, x: Any, path: str, planes: int, stride: int, relu_out: bool) -> Any:
        """Official ``BasicBlock`` (3x3, 3x3, residual; projection when the shape changes)."""
        out = self.conv(x, f"{path}.conv1", planes, 3, stride, bn=f"{path}.bn1")
        out = self.relu(out, path)
        out = self.conv(out, f"{path}.conv2", planes, 3, bn=f"{path}.bn2")
        residual = x
        if stride != 1 or int(x.shape[-1]) != planes:
            residual = self.conv(x, f"{path}.downsample.0", planes, 1, stride, bn=f"{path}.downsample.1")
        out = self.add([out, residual], path)
        return self.relu(out, path) if relu_out else out

    def bottleneck(self, x: Any, path: str, planes: int, stride: int, relu_out: bool) -> Any:
        """Official ``Bottleneck`` (1x1, 3x3, 1x1 to ``2 * planes``, residual)."""
        out = self.conv(x, f"{path}.conv1", planes, 1, bn=f"{path}.bn1")
        out = self.relu(out, path)
        out = self.conv(out, f"{path}.conv2", planes, 3, stride, bn=f"{path}.bn2")
        out = self.relu(out, path)
        out = self.conv(out, f"{path}.conv3", planes * 2, 1, bn=f"{path}.bn3")
        residual = x
        if stride != 1 or int(x.shape[-1]) != planes * 2:
            residual = self.conv(x, f"{path}.downsample.0", planes * 2, 1, stride, bn=f"{path}.downsample.1")
        out = self.add([out, residual], path)
        return self.relu(out, path) if relu_out else out

    def layer(self, x: Any, path: str, block: str, planes: int, blocks: int, stride: int = 1) -> Any:
        """Official ``_make_layer``: the first block keeps the block's default final ReLU (BasicBlock yes,
        Bottleneck no), the next ones have it except the last."""
        make = self.basic_block if block == "basic" else self.bottleneck
        x = make(x, f"{path}.0", planes, stride, relu_out=block == "basic")
        for i in range(1, blocks):
            x = make(x, f"{path}.{i}", planes, 1, relu_out=i != blocks - 1)
        return x

    def single_layer(self, x: Any, path: str, block: str, planes: int) -> Any:
        """Official ``_make_single_layer``: one block without its final ReLU."""
        make = self.basic_block if block == "basic" else self.bottleneck
        return make(x, path, planes, 1, relu_out=False)

    # ---- fusion modules
    def pag(self, x: Any, y: Any, path: str, mid: int) -> Any:
        """Official ``PagFM(after_relu=False, with_channel=False)``: ``x + s * (up(y) - x)``,
        ``s = sigmoid(sum_c(f_x(x) * up(f_y(y))))``."""
        import keras

        size = (int(x.shape[1]), int(x.shape[2]))
        y_q = self.conv(y, f"{path}.f_y.0", mid, 1, bn=f"{path}.f_y.1")
        y_q = self.upsample_to(y_q, size, f"{path}.f_y")
        x_k = self.conv(x, f"{path}.f_x.0", mid, 1, bn=f"{path}.f_x.1")
        product = keras.layers.Multiply(name=self.name(f"{path}.product"))([x_k, y_q])
        similarity = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, kernel_initializer="ones",
                                         name=f"{path}.channel_sum")(product)
        gate = keras.layers.Activation("sigmoid", name=self.name(f"{path}.sigmoid"))(similarity)
        y_up = self.upsample_to(y, size, path)
        return self.gate(x, y_up, gate, path)

    def gate(self, x: Any, y: Any, s: Any, path: str) -> Any:
        """``(1 - s) * x + s * y`` computed as ``x + s * (y - x)``."""
        import keras

        diff = keras.layers.Subtract(name=self.name(f"{path}.diff"))([y, x])
        scaled = keras.layers.Multiply(name=self.name(f"{path}.gate"))([diff, s])
        return self.add([x, scaled], path)

    def light_bag(self, p: Any, i: Any, d: Any, path: str, channels: int) -> Any:
        """Official ``Light_Bag``: ``conv_p((1-s)*i + p) + conv_i(i + s*p)``, ``s = sigmoid(d)``;
        ``(1-s)*i + p`` is computed as ``(p + i) - s*i``."""
        import keras

        s = keras.layers.Activation("sigmoid", name=self.name(f"{path}.sigmoid"))(d)
        s_i = keras.layers.Multiply(name=self.name(f"{path}.gate_i"))([s, i])
        s_p = keras.layers.Multiply(name=self.name(f"{path}.gate_p"))([s, p])
        p_in = keras.layers.Subtract(name=self.name(f"{path}.p_in"))([self.add([p, i], path), s_i])
        i_in = self.add([i, s_p], path)
        p_add = self.conv(p_in, f"{path}.conv_p.0", channels, 1, bn=f"{path}.conv_p.1")
        i_add = self.conv(i_in, f"{path}.conv_i.0", channels, 1, bn=f"{path}.conv_i.1")
        return self.add([p_add, i_add], path)

    def bag(self, p: Any, i: Any, d: Any, path: str, channels: int) -> Any:
        """Official ``Bag``: ``conv(s*p + (1-s)*i)`` = ``conv(i + s*(p - i))``, conv = BN -> ReLU -> 3x3."""
        import keras

        s = keras.layers.Activation("sigmoid", name=self.name(f"{path}.sigmoid"))(d)
        x = self.gate(i, p, s, path)
        x = self.standalone_bn(x, f"{path}.conv.0")
        x = self.relu(x, f"{path}.conv")
        return self.conv(x, f"{path}.conv.2", channels, 3)

    def bn_relu_conv(self, x: Any, path: str, index: int, filters: int, kernel: int = 1) -> Any:
        """``Sequential(BN, ReLU, Conv2d(bias=False))`` at ``path.index``, ``path.index+2``."""
        x = self.standalone_bn(x, f"{path}.{index}")
        x = self.relu(x, path)
        return self.conv(x, f"{path}.{index + 2}", filters, kernel)

    def pyramid_scales(self, x: Any, path: str, branch: int) -> list:
        """``scale1``..``scale4`` of PAPPM/DAPPM: pool, BN, ReLU, 1x1 conv (not yet upsampled)."""
        import keras

        scales = []
        for k, (kernel, stride, pad) in enumerate(PYRAMID_POOLS, start=1):
            pooled = self.avg_pool(x, kernel, stride, pad, f"{path}.scale{k}.0")
            scales.append(self.bn_relu_conv(pooled, f"{path}.scale{k}", 1, branch))
        pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=self.name(f"{path}.scale4.0"))(x)
        scales.append(self.bn_relu_conv(pooled, f"{path}.scale4", 1, branch))
        return scales

    def pappm(self, x: Any, path: str, branch: int, out: int) -> Any:
        """Official ``PAPPM`` with its grouped 3x3 conv split into one conv per scale branch."""
        import keras

        x0 = self.bn_relu_conv(x, f"{path}.scale0", 0, branch)
        processed = []
        for g, scale in enumerate(self.pyramid_scales(x, path, branch)):
            summed = self.add_upsampled(scale, x0, f"{path}.scale{g + 1}")
            group = f"{path}.scale_process.g{g}"
            y = self.standalone_bn(summed, f"{group}.0")
            y = self.relu(y, group)
            processed.append(self.conv(y, f"{group}.2", branch, 3))
        cat = keras.layers.Concatenate(name=self.name(f"{path}.concat"))([x0, *processed])
        compressed = self.bn_relu_conv(cat, f"{path}.compression", 0, out)
        shortcut = self.bn_relu_conv(x, f"{path}.shortcut", 0, out)
        return self.add([compressed, shortcut], path)

    def dappm(self, x: Any, path: str, branch: int, out: int) -> Any:
        """Official ``DAPPM``: each scale adds the previous branch, then BN -> ReLU -> 3x3 conv."""
        import keras

        branches = [self.bn_relu_conv(x, f"{path}.scale0", 0, branch)]
        for k, scale in enumerate(self.pyramid_scales(x, path, branch), start=1):
            summed = self.add_upsampled(scale, branches[-1], f"{path}.scale{k}")
            branches.append(self.bn_relu_conv(summed, f"{path}.process{k}", 0, branch, kernel=3))
        cat = keras.layers.Concatenate(name=self.name(f"{path}.concat"))(branches)
        compressed = self.bn_relu_conv(cat, f"{path}.compression", 0, out)
        shortcut = self.bn_relu_conv(x, f"{path}.shortcut", 0, out)
        return self.add([compressed, shortcut], path)

    def segment_head(self, x: Any, path: str, inter: int, out: int) -> Any:
        """Official ``segmenthead``: BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv (with bias)."""
        x = self.standalone_bn(x, f"{path}.bn1")
        x = self.relu(x, path)
        x = self.conv(x, f"{path}.conv1", inter, 3, bn=f"{path}.bn2")
        x = self.relu(x, path)
        return self.conv(x, f"{path}.conv2", out, 1, bias=True)

    # ---- the network
    def network(self, inputs: Any, arch: Arch, num_classes: int, heads: bool) -> dict[str, Any]:
        """The PIDNet graph on ``inputs``: ``{"logits"}`` plus ``"aux"`` and ``"boundary"`` when ``heads``."""
        planes = arch.planes
        size = (int(inputs.shape[1]) // OUTPUT_STRIDE, int(inputs.shape[2]) // OUTPUT_STRIDE)
        x = self.conv(inputs, "conv1.0", planes, 3, 2, bias=True, bn="conv1.1")
        x = self.relu(x, "conv1")
        x = self.conv(x, "conv1.3", planes, 3, 2, bias=True, bn="conv1.4")
        x = self.relu(x, "conv1")
        x = self.layer(x, "layer1", "basic", planes, arch.m)
        x = self.relu(x, "layer1")
        x = self.relu(self.layer(x, "layer2", "basic", planes * 2, arch.m, stride=2), "layer2")

        x_p = self.layer(x, "layer3_", "basic", planes * 2, arch.m)
        d_planes = planes if arch.light else planes * 2
        x_d = self.single_layer(x, "layer3_d", "basic", d_planes)
        x = self.relu(self.layer(x, "layer3", "basic", planes * 4, arch.n, stride=2), "layer3")
        x_p = self.pag(x_p, self.conv(x, "compression3.0", planes * 2, 1, bn="compression3.1"), "pag3", planes)
        diff = self.conv(x, "diff3.0", d_planes, 3, bn="diff3.1")
        x_d = self.add([x_d, self.upsample_to(diff, size, "diff3")], "diff3")
        # the official in-place ReLU of the next line also changes the tensor kept for seghead_p
        x_p = self.relu(x_p, "layer4_")
        temp_p = x_p

        x = self.relu(self.layer(x, "layer4", "basic", planes * 8, arch.n, stride=2), "layer4")
        x_p = self.layer(x_p, "layer4_", "basic", planes * 2, arch.m)
        x_d = self.relu(x_d, "layer4_d")
        if arch.light:
            x_d = self.layer(x_d, "layer4_d", "bottleneck", planes, 1)
        else:
            x_d = self.single_layer(x_d, "layer4_d", "basic", planes * 2)
        x_p = self.pag(x_p, self.conv(x, "compression4.0", planes * 2, 1, bn="compression4.1"), "pag4", planes)
        diff = self.conv(x, "diff4.0", planes * 2, 3, bn="diff4.1")
        x_d = self.add([x_d, self.upsample_to(diff, size, "diff4")], "diff4")
        x_d = self.relu(x_d, "layer5_d")  # also the input of seghead_d (official in-place ReLU)
        temp_d = x_d

        x_p = self.layer(self.relu(x_p, "layer5_"), "layer5_", "bottleneck", planes * 2, 1)
        x_d = self.layer(x_d, "layer5_d", "bottleneck", planes * 2, 1)
        x = self.layer(x, "layer5", "bottleneck", planes * 8, 2, stride=2)
        if arch.light:
            x = self.pappm(x, "spp", arch.ppm_planes, planes * 4)
            x = self.upsample_to(x, size, "spp")
            x = self.light_bag(x_p, x, x_d, "dfm", planes * 4)
        else:
            x = self.dappm(x, "spp", arch.ppm_planes, planes * 4)
            x = self.upsample_to(x, size, "spp")
            x = self.bag(x_p, x, x_d, "dfm", planes * 4)
        outputs = {"logits": self.segment_head(x, "final_layer", arch.head_planes, num_classes)}
        if heads:
            outputs["aux"] = self.segment_head(temp_p, "seghead_p", arch.head_planes, num_classes)
            outputs["boundary"] = self.segment_head(temp_d, "seghead_d", planes, 1)
        return outputs


# ------------------------------------------------------------------------------------------------ entry
def check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """``(H, W, C)`` as ints; ModelError unless H and W are positive multiples of 64."""
    shape = tuple(input_shape) if isinstance(input_shape, (list, tuple)) else ()
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise ModelError(f"training.model.input_shape: {input_shape!r} must be [height, width, channels] integers.")
    height, width, _ = shape
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        near = [max(INPUT_MULTIPLE, INPUT_MULTIPLE * round(v / INPUT_MULTIPLE)) for v in (height, width)]
        raise ModelError(f"training.model.input_shape: PIDNet needs a height and width that are multiples of "
                         f"{INPUT_MULTIPLE}; got {height}x{width} (nearest: {near[0]}x{near[1]}).")
    return shape


def model_name(variant: str) -> str:
    """The Keras model name of a variant (``pidnet_s``)."""
    return f"pidnet_{variant}"


def build_graph(params: PidnetParams, num_classes: int, *, fold: bool, heads: bool,
                builder: Builder | None = None) -> "keras.Model":
    """A PIDNet Keras model in the training (``fold=False``) or inference (``fold=True``) form."""
    import keras

    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ModelError(f"num_classes must be a positive integer; got {num_classes!r}.")
    if keras.config.image_data_format() != "channels_last":
        raise ModelError("segzoo models need Keras image_data_format 'channels_last' (see ~/.keras/keras.json).")
    arch = arch_of(params.variant)
    shape = check_input_shape(params.input_shape)
    builder = builder if builder is not None else Builder(fold=fold)
    inputs = keras.Input(shape=shape, name="input")
    outputs = builder.network(inputs, arch, num_classes, heads)
    if not heads:
        outputs = outputs["logits"]
    return keras.Model(inputs, outputs, name=model_name(params.variant))


def build(params: PidnetParams, num_classes: int) -> "keras.Model":
    """The training graph: outputs ``{"logits": main (I/Bag path), "aux": P head, "boundary": D head (1 channel)}``,
    all at 1/8 of the input size, raw logits."""
    model = build_graph(params, num_classes, fold=False, heads=True)
    log.debug("built %s: input %s, logits %s", model.name, params.input_shape, model.outputs[0].shape)
    return model
