"""An independent NumPy forward of the official PIDNet (``XuJiacong/PIDNet`` ``models/pidnet.py`` semantics).

Written from the official code's semantics, not from segzoo's Keras port: NCHW float64 tensors, PyTorch
convolutions (``padding=k//2``, OIHW weights, groups), BatchNorm in eval mode (eps 1e-5), ``AvgPool2d`` with
``count_include_pad=True``, ``AdaptiveAvgPool2d(1)``, ``F.interpolate(bilinear, align_corners=False)``.

Weights come from a :class:`StateDict` keyed by the official names. In *init* mode it creates every array the
forward asks for (so the key list and shapes are exactly what the forward reads): conv weights ``N(0, 1/fan_in)``,
BatchNorm affine parameters near (1, 0) and running statistics taken from the actual batch statistics of the
init input (slightly perturbed), so that every activation stays of order 1 and the gates are not saturated.

The official forward keeps ``temp_p = x_`` and ``temp_d = x_d`` and then applies ``nn.ReLU(inplace=True)`` to the
same tensors, so the training heads see ReLU'd features; :func:`forward` reproduces that.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EPS = 1e-5
VARIANTS = {  # planes, ppm_planes, head_planes, m, n (official get_seg_model)
    "s": (32, 96, 128, 2, 3),
    "m": (64, 96, 128, 2, 3),
    "l": (64, 112, 256, 3, 4),
}


class StateDict:
    """Official-name weights; ``init=True`` creates them on first use (random, with data-driven BN stats)."""

    def __init__(self, values: dict[str, np.ndarray] | None = None, rng: np.random.Generator | None = None):
        self.values: dict[str, np.ndarray] = {} if values is None else dict(values)
        self.init = values is None
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.used: set[str] = set()

    def get(self, key: str, shape: tuple[int, ...], make: Callable[[], np.ndarray]) -> np.ndarray:
        if self.init and key not in self.values:
            self.values[key] = np.asarray(make(), np.float32)
        value = self.values[key]
        assert value.shape == tuple(shape), (key, value.shape, shape)
        self.used.add(key)
        return value.astype(np.float64)


# ------------------------------------------------------------------------------------------- primitives
def _windows(x: np.ndarray, k: int, stride: int) -> np.ndarray:
    """[N, C, Ho, Wo, k, k] views of an already padded ``x``."""
    win = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return win[:, :, ::stride, ::stride]


def conv2d(sd: StateDict, x: np.ndarray, key: str, out: int, k: int, stride: int = 1, groups: int = 1,
           bias: bool = False) -> np.ndarray:
    """``nn.Conv2d(c_in, out, k, stride, padding=k//2, groups, bias)``."""
    c_in = x.shape[1]
    fan_in = c_in // groups * k * k
    w = sd.get(f"{key}.weight", (out, c_in // groups, k, k),
               lambda: sd.rng.normal(0, 1 / np.sqrt(fan_in), (out, c_in // groups, k, k)))
    pad = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = _windows(xp, k, stride)
    og, ig = out // groups, c_in // groups
    parts = [np.einsum("nchwij,ocij->nohw", win[:, g * ig:(g + 1) * ig], w[g * og:(g + 1) * og], optimize=True)
             for g in range(groups)]
    y = np.concatenate(parts, axis=1)
    if bias:
        y = y + sd.get(f"{key}.bias", (out,), lambda: sd.rng.normal(0, 0.1, out))[None, :, None, None]
    return y


def batch_norm(sd: StateDict, x: np.ndarray, key: str) -> np.ndarray:
    """``nn.BatchNorm2d`` in eval mode; in init mode the running stats come from ``x`` itself (perturbed)."""
    c = x.shape[1]
    gamma = sd.get(f"{key}.weight", (c,), lambda: sd.rng.uniform(0.7, 1.3, c))
    beta = sd.get(f"{key}.bias", (c,), lambda: sd.rng.normal(0, 0.2, c))
    mean = sd.get(f"{key}.running_mean", (c,),
                  lambda: x.mean(axis=(0, 2, 3)) + sd.rng.normal(0, 0.05, c) * x.std(axis=(0, 2, 3)))
    var = sd.get(f"{key}.running_var", (c,), lambda: np.maximum(x.var(axis=(0, 2, 3)), 0.1 * x.var() + 1e-3)
                 * sd.rng.uniform(0.8, 1.25, c))
    if sd.init and f"{key}.num_batches_tracked" not in sd.values:
        sd.values[f"{key}.num_batches_tracked"] = np.asarray(1000, np.int64)
    sd.used.add(f"{key}.num_batches_tracked")
    scale = gamma / np.sqrt(var + EPS)
    return (x - mean[None, :, None, None]) * scale[None, :, None, None] + beta[None, :, None, None]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def avg_pool(x: np.ndarray, k: int, stride: int, pad: int) -> np.ndarray:
    """``nn.AvgPool2d(k, stride, pad)`` (count_include_pad=True, ceil_mode=False): divide by k*k always."""
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    return _windows(xp, k, stride).sum(axis=(-1, -2)) / (k * k)


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of PyTorch's bilinear align_corners=False along one axis."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def interpolate(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(x, size, mode='bilinear', align_corners=False)``."""
    y0, y1, ly = _axis_weights(x.shape[2], size[0])
    x0, x1, lx = _axis_weights(x.shape[3], size[1])
    rows = x[:, :, y0] * (1 - ly)[None, None, :, None] + x[:, :, y1] * ly[None, None, :, None]
    return rows[:, :, :, x0] * (1 - lx) + rows[:, :, :, x1] * lx


# ----------------------------------------------------------------------------------------------- blocks
def basic_block(sd, x, key, planes, stride=1, downsample=False, no_relu=False):
    out = relu(batch_norm(sd, conv2d(sd, x, f"{key}.conv1", planes, 3, stride), f"{key}.bn1"))
    out = batch_norm(sd, conv2d(sd, out, f"{key}.conv2", planes, 3), f"{key}.bn2")
    if downsample:
        x = batch_norm(sd, conv2d(sd, x, f"{key}.downsample.0", planes, 1, stride), f"{key}.downsample.1")
    out = out + x
    return out if no_relu else relu(out)


def bottleneck(sd, x, key, planes, stride=1, downsample=False, no_relu=True):
    out = relu(batch_norm(sd, conv2d(sd, x, f"{key}.conv1", planes, 1), f"{key}.bn1"))
    out = relu(batch_norm(sd, conv2d(sd, out, f"{key}.conv2", planes, 3, stride), f"{key}.bn2"))
    out = batch_norm(sd, conv2d(sd, out, f"{key}.conv3", planes * 2, 1), f"{key}.bn3")
    if downsample:
        x = batch_norm(sd, conv2d(sd, x, f"{key}.downsample.0", planes * 2, 1, stride), f"{key}.downsample.1")
    out = out + x
    return out if no_relu else relu(out)


def make_layer(sd, x, key, block, planes, blocks, stride=1):
    expansion = 1 if block is basic_block else 2
    downsample = stride != 1 or x.shape[1] != planes * expansion
    x = block(sd, x, f"{key}.0", planes, stride, downsample)  # the block's default no_relu
    for i in range(1, blocks):
        x = block(sd, x, f"{key}.{i}", planes, 1, False, no_relu=i == blocks - 1)
    return x


def make_single_layer(sd, x, key, block, planes):
    expansion = 1 if block is basic_block else 2
    return block(sd, x, key, planes, 1, x.shape[1] != planes * expansion, no_relu=True)


def conv_bn(sd, x, key, out, k, stride=1):
    """``Sequential(Conv2d(bias=False), BatchNorm2d)`` at ``key.0``/``key.1``."""
    return batch_norm(sd, conv2d(sd, x, f"{key}.0", out, k, stride), f"{key}.1")


def bn_relu_conv(sd, x, key, first, out, k=1, groups=1):
    """``Sequential(BatchNorm2d, ReLU, Conv2d(bias=False))`` at ``key.first``/``key.first+2``."""
    return conv2d(sd, relu(batch_norm(sd, x, f"{key}.{first}")), f"{key}.{first + 2}", out, k, groups=groups)


def segmenthead(sd, x, key, inter, out):
    x = conv2d(sd, relu(batch_norm(sd, x, f"{key}.bn1")), f"{key}.conv1", inter, 3)
    return conv2d(sd, relu(batch_norm(sd, x, f"{key}.bn2")), f"{key}.conv2", out, 1, bias=True)


def pag(sd, x, y, key, mid):
    size = x.shape[2:]
    y_q = interpolate(conv_bn(sd, y, f"{key}.f_y", mid, 1), size)
    x_k = conv_bn(sd, x, f"{key}.f_x", mid, 1)
    sim = sigmoid(np.sum(x_k * y_q, axis=1, keepdims=True))
    y = interpolate(y, size)
    return (1 - sim) * x + sim * y


def scales(sd, x, key, branch):
    size = x.shape[2:]
    out = []
    for k, (kernel, stride, pad) in enumerate(((5, 2, 2), (9, 4, 4), (17, 8, 8)), start=1):
        out.append(interpolate(bn_relu_conv(sd, avg_pool(x, kernel, stride, pad), f"{key}.scale{k}", 1, branch),
                               size))
    pooled = x.mean(axis=(2, 3), keepdims=True)
    out.append(interpolate(bn_relu_conv(sd, pooled, f"{key}.scale4", 1, branch), size))
    return out


def pappm(sd, x, key, branch, outplanes):
    x_ = bn_relu_conv(sd, x, f"{key}.scale0", 0, branch)
    scale_list = [s + x_ for s in scales(sd, x, key, branch)]
    scale_out = bn_relu_conv(sd, np.concatenate(scale_list, axis=1), f"{key}.scale_process", 0, branch * 4, 3,
                             groups=4)
    out = bn_relu_conv(sd, np.concatenate([x_, scale_out], axis=1), f"{key}.compression", 0, outplanes)
    return out + bn_relu_conv(sd, x, f"{key}.shortcut", 0, outplanes)


def dappm(sd, x, key, branch, outplanes):
    x_list = [bn_relu_conv(sd, x, f"{key}.scale0", 0, branch)]
    for k, s in enumerate(scales(sd, x, key, branch), start=1):
        x_list.append(bn_relu_conv(sd, s + x_list[-1], f"{key}.process{k}", 0, branch, 3))
    out = bn_relu_conv(sd, np.concatenate(x_list, axis=1), f"{key}.compression", 0, outplanes)
    return out + bn_relu_conv(sd, x, f"{key}.shortcut", 0, outplanes)


def light_bag(sd, p, i, d, key, out):
    edge = sigmoid(d)
    p_add = conv_bn(sd, (1 - edge) * i + p, f"{key}.conv_p", out, 1)
    i_add = conv_bn(sd, i + edge * p, f"{key}.conv_i", out, 1)
    return p_add + i_add


def bag(sd, p, i, d, key, out):
    edge = sigmoid(d)
    return bn_relu_conv(sd, edge * p + (1 - edge) * i, f"{key}.conv", 0, out, 3)


# ---------------------------------------------------------------------------------------------- network
def forward(sd: StateDict, image: np.ndarray, variant: str, num_classes: int) -> dict[str, np.ndarray]:
    """Official ``PIDNet.forward`` with ``augment=True`` on ``image`` [N, C, H, W]: ``{"aux", "logits",
    "boundary"}`` (the official ``[x_extra_p, x_, x_extra_d]``), NCHW at 1/8."""
    planes, ppm, head, m, n = VARIANTS[variant]
    h8, w8 = image.shape[2] // 8, image.shape[3] // 8
    x = relu(batch_norm(sd, conv2d(sd, image, "conv1.0", planes, 3, 2, bias=True), "conv1.1"))
    x = relu(batch_norm(sd, conv2d(sd, x, "conv1.3", planes, 3, 2, bias=True), "conv1.4"))
    x = make_layer(sd, x, "layer1", basic_block, planes, m)
    x = relu(make_layer(sd, relu(x), "layer2", basic_block, planes * 2, m, stride=2))
    x_ = make_layer(sd, x, "layer3_", basic_block, planes * 2, m)
    if m == 2:
        x_d = make_single_layer(sd, x, "layer3_d", basic_block, planes)
    else:
        x_d = make_single_layer(sd, x, "layer3_d", basic_block, planes * 2)
    x = relu(make_layer(sd, x, "layer3", basic_block, planes * 4, n, stride=2))
    x_ = pag(sd, x_, conv_bn(sd, x, "compression3", planes * 2, 1), "pag3", planes)
    x_d = x_d + interpolate(conv_bn(sd, x, "diff3", planes if m == 2 else planes * 2, 3), (h8, w8))
    x_ = relu(x_)  # in place in the official code: temp_p is this tensor
    temp_p = x_
    x = relu(make_layer(sd, x, "layer4", basic_block, planes * 8, n, stride=2))
    x_ = make_layer(sd, x_, "layer4_", basic_block, planes * 2, m)
    if m == 2:
        x_d = make_layer(sd, relu(x_d), "layer4_d", bottleneck, planes, 1)
    else:
        x_d = make_single_layer(sd, relu(x_d), "layer4_d", basic_block, planes * 2)
    x_ = pag(sd, x_, conv_bn(sd, x, "compression4", planes * 2, 1), "pag4", planes)
    x_d = x_d + interpolate(conv_bn(sd, x, "diff4", planes * 2, 3), (h8, w8))
    x_d = relu(x_d)  # in place in the official code: temp_d is this tensor
    temp_d = x_d
    x_ = make_layer(sd, relu(x_), "layer5_", bottleneck, planes * 2, 1)
    x_d = make_layer(sd, x_d, "layer5_d", bottleneck, planes * 2, 1)
    x = make_layer(sd, x, "layer5", bottleneck, planes * 8, 2, stride=2)
    x = (pappm if m == 2 else dappm)(sd, x, "spp", ppm, planes * 4)
    x = interpolate(x, (h8, w8))
    x_ = (light_bag if m == 2 else bag)(sd, x_, x, x_d, "dfm", planes * 4)
    return {"aux": segmenthead(sd, temp_p, "seghead_p", head, num_classes),
            "logits": segmenthead(sd, x_, "final_layer", head, num_classes),
            "boundary": segmenthead(sd, temp_d, "seghead_d", planes, 1)}


def random_state_dict(variant: str, num_classes: int, image: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Every official key of the variant with random values (BN stats fitted to ``image``)."""
    sd = StateDict(rng=np.random.default_rng(seed))
    forward(sd, image, variant, num_classes)
    return sd.values


def inference_keys(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The keys of ``get_pred_model`` (``augment=False``): no ``seghead_p``/``seghead_d``."""
    return {k: v for k, v in state.items() if not k.startswith(("seghead_p.", "seghead_d."))}


# ----------------------------------------------------------------------------------- mmsegmentation names
def _block_suffix(rest: str) -> str:
    """``conv1.weight`` -> ``conv1.conv.weight``; ``bn1.x`` -> ``conv1.bn.x``; ``downsample.0/1`` -> conv/bn."""
    head, _, tail = rest.partition(".")
    if head.startswith("conv"):
        return f"{head}.conv.{tail}"
    if head.startswith("bn"):
        return f"conv{head[2:]}.bn.{tail}"
    if head == "downsample":
        index, _, tail2 = tail.partition(".")
        return f"downsample.{'conv' if index == '0' else 'bn'}.{tail2}"
    raise KeyError(rest)


def official_to_mmseg(key: str) -> str | None:
    """The mmsegmentation name of an official key (None for the stem conv biases, which mmseg does not have)."""
    if key in ("conv1.0.bias", "conv1.3.bias"):
        return None
    parts = key.split(".")
    top = parts[0]
    stem = {"0": "stem.0", "1": "stem.0", "3": "stem.1", "4": "stem.1"}
    if top == "conv1":
        return f"backbone.{stem[parts[1]]}.{'conv' if parts[1] in '03' else 'bn'}.{'.'.join(parts[2:])}"
    layers = {"layer1": "stem.2", "layer2": "stem.4", "layer3": "i_branch_layers.0", "layer4": "i_branch_layers.1",
              "layer5": "i_branch_layers.2", "layer3_": "p_branch_layers.0", "layer4_": "p_branch_layers.1",
              "layer5_": "p_branch_layers.2", "layer3_d": "d_branch_layers.0", "layer4_d": "d_branch_layers.1",
              "layer5_d": "d_branch_layers.2"}
    if top in layers:
        index, rest = (parts[1], ".".join(parts[2:])) if parts[1].isdigit() else (None, ".".join(parts[1:]))
        prefix = layers[top] if index is None else f"{layers[top]}.{index}"
        return f"backbone.{prefix}.{_block_suffix(rest)}"
    pairs = {"compression3": "compression_1", "compression4": "compression_2", "diff3": "diff_1", "diff4": "diff_2"}
    if top in pairs:
        return f"backbone.{pairs[top]}.{'conv' if parts[1] == '0' else 'bn'}.{'.'.join(parts[2:])}"
    if top in ("pag3", "pag4"):
        branch = {"f_x": "f_p", "f_y": "f_i"}[parts[1]]
        return f"backbone.pag_{1 if top == 'pag3' else 2}.{branch}.{'conv' if parts[2] == '0' else 'bn'}." \
               f"{'.'.join(parts[3:])}"
    if top == "spp":
        module, index, tail = parts[1], parts[2], ".".join(parts[3:])
        kind = "bn" if index in ("0", "1") else "conv"
        if module.startswith("scale") and module != "scale_process":
            k = int(module[5:])
            return f"backbone.spp.scales.0.{kind}.{tail}" if k == 0 else f"backbone.spp.scales.{k}.1.{kind}.{tail}"
        if module == "scale_process":
            return f"backbone.spp.processes.{kind}.{tail}"
        if module.startswith("process"):
            return f"backbone.spp.processes.{int(module[7:]) - 1}.{kind}.{tail}"
        return f"backbone.spp.{module}.{kind}.{tail}"
    if top == "dfm":
        if parts[1] == "conv":  # Bag
            return f"backbone.dfm.conv.{'bn' if parts[2] == '0' else 'conv'}.{'.'.join(parts[3:])}"
        branch = {"conv_p": "f_p", "conv_i": "f_i"}[parts[1]]
        return f"backbone.dfm.{branch}.{'conv' if parts[2] == '0' else 'bn'}.{'.'.join(parts[3:])}"
    heads = {"final_layer": ("i_head", "conv_seg"), "seghead_p": ("p_head", "p_cls_seg"),
             "seghead_d": ("d_head", "d_cls_seg")}
    head, cls = heads[top]
    tail = ".".join(parts[2:])
    return {"bn1": f"decode_head.{head}.conv.bn.{tail}", "conv1": f"decode_head.{head}.conv.conv.{tail}",
            "bn2": f"decode_head.{head}.norm.{tail}", "conv2": f"decode_head.{cls}.{tail}"}[parts[1]]
