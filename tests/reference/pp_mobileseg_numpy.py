"""PP-MobileSeg forward in NumPy (NCHW, float64), written from PaddleSeg's code, independent of the Keras port.

Semantics followed (PaddleSeg ``paddleseg/models/pp_mobileseg.py`` and ``backbones/strideformer.py``, current
version with sigmoid AAM gates):

- convolutions pad ``k // 2`` on every side; BatchNorm in inference form with epsilon 1e-5;
- ``F.interpolate(mode="bilinear"/"linear", align_corners=False)``: source ``(i + 0.5) * in / out - 0.5``, clamped
  at 0, the upper neighbour clamped at the last index;
- hard-swish ``x * relu6(x + 3) / 6``; MobileNetV3 SE gate ``clip(0.2 x + 0.5, 0, 1)``; SEA gate
  ``relu6(x + 3) / 6``.

Weights are a flat dict with PaddleSeg's state-dict names (``backbone.smb1.conv.c.weight``...).
:func:`paddle_schema` lists every name and shape the official model has, from the same reading of the code.
"""

from __future__ import annotations

import numpy as np

ARCH = {
    "tiny": {
        "stages": [
            [(3, 16, 16, True, "relu", 1), (3, 64, 32, False, "relu", 2), (3, 48, 24, False, "relu", 1)],
            [(5, 96, 32, True, "hardswish", 2), (5, 96, 32, True, "hardswish", 1)],
            [(5, 160, 64, True, "hardswish", 2), (5, 160, 64, True, "hardswish", 1)],
            [(3, 384, 128, True, "hardswish", 2), (3, 384, 128, True, "hardswish", 1)],
        ],
        "channels": [16, 24, 32, 64, 128], "depths": [2, 2], "embed_dims": [64, 128], "key_dims": [16, 24],
        "num_heads": 4, "mlp_ratios": [2, 4], "inj": "AAM", "out_feat_chs": [32, 64, 128],
    },
    "base": {
        "stages": [
            [(3, 16, 16, True, "relu", 1), (3, 64, 32, False, "relu", 2), (3, 96, 32, False, "relu", 1)],
            [(5, 128, 64, True, "hardswish", 2), (5, 240, 64, True, "hardswish", 1)],
            [(5, 384, 128, True, "hardswish", 2), (5, 384, 128, True, "hardswish", 1)],
            [(5, 768, 192, True, "hardswish", 2), (5, 768, 192, True, "hardswish", 1)],
        ],
        "channels": [16, 32, 64, 128, 192], "depths": [3, 3], "embed_dims": [128, 192], "key_dims": [16, 24],
        "num_heads": 8, "mlp_ratios": [2, 4], "inj": "AAMSx8", "out_feat_chs": [64, 128, 192],
    },
}
ATTN_RATIO = 2
AAM_CHANNELS = 256
EPS = 1e-5


# ------------------------------------------------------------------------------------------------ schema
def _bn_keys(prefix: str, c: int) -> dict:
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "_mean", "_variance")}


def _convbn_keys(prefix: str, cin: int, cout: int, k: int = 1, groups: int = 1, conv: str = "c") -> dict:
    return {f"{prefix}.{conv}.weight": (cout, cin // groups, k, k), **_bn_keys(f"{prefix}.bn", cout)}


def paddle_schema(variant: str, num_classes: int) -> dict[str, tuple]:
    """Every state-dict name of PaddleSeg's PPMobileSeg (``variant``) with its shape."""
    a, keys = ARCH[variant], {}
    keys.update(_convbn_keys("backbone.smb1.conv", 3, a["channels"][0], 3))
    for s, stage in enumerate(a["stages"]):
        cin = a["channels"][s]
        for b, (k, exp, c, se, _act, _stride) in enumerate(stage):
            p = f"backbone.smb{s + 1}.blocks.{b}"
            keys.update(_convbn_keys(f"{p}.expand_conv", cin, exp))
            keys.update(_convbn_keys(f"{p}.bottleneck_conv", exp, exp, k, groups=exp))
            if se:
                keys.update({f"{p}.mid_se.conv1.weight": (exp // 4, exp, 1, 1), f"{p}.mid_se.conv1.bias": (exp // 4,),
                             f"{p}.mid_se.conv2.weight": (exp, exp // 4, 1, 1), f"{p}.mid_se.conv2.bias": (exp,)})
            keys.update(_convbn_keys(f"{p}.linear_conv", exp, c))
            cin = c
    for t, depth in enumerate(a["depths"]):
        dim, kd, h = a["embed_dims"][t], a["key_dims"][t], a["num_heads"]
        nh_kd, dh = kd * h, ATTN_RATIO * kd * h
        for i in range(depth):
            p = f"backbone.trans{t + 1}.transformer_blocks.{i}"
            keys.update(_convbn_keys(f"{p}.attn.to_q", dim, nh_kd))
            keys.update(_convbn_keys(f"{p}.attn.to_k", dim, nh_kd))
            keys.update(_convbn_keys(f"{p}.attn.to_v", dim, dh))
            keys.update({f"{p}.attn.stride_conv.0.weight": (dim, 1, 3, 3), f"{p}.attn.stride_conv.0.bias": (dim,)})
            keys.update(_bn_keys(f"{p}.attn.stride_conv.1", dim))
            keys.update(_convbn_keys(f"{p}.attn.proj.1", dh, dim))
            keys.update(_convbn_keys(f"{p}.attn.proj_encode_row.1", dh, dh))
            keys.update(_convbn_keys(f"{p}.attn.proj_encode_column.1", dh, dh))
            for name in ("rowq", "rowk", "columnq", "columnk"):
                keys[f"{p}.attn.pos_emb_{name}.pos_embed"] = (1, nh_kd, 16)
            keys.update(_convbn_keys(f"{p}.attn.dwconv", 2 * dh, 2 * dh, 3, groups=2 * dh))
            keys.update(_convbn_keys(f"{p}.attn.pwconv", 2 * dh, dim))
            hidden = dim * a["mlp_ratios"][t]
            keys.update(_convbn_keys(f"{p}.mlp.fc1", dim, hidden))
            keys.update({f"{p}.mlp.dwconv.weight": (hidden, 1, 3, 3), f"{p}.mlp.dwconv.bias": (hidden,)})
            keys.update(_convbn_keys(f"{p}.mlp.fc2", hidden, dim))
    chs = a["out_feat_chs"]
    embed_from = [0, 1, 2] if a["inj"] == "AAM" else [0, 2]
    act_from = [0, 1, 2] if a["inj"] == "AAM" else [1, 2]
    for j, i in enumerate(embed_from):
        keys.update(_convbn_keys(f"backbone.inj_module.embedding_list.{j}", chs[i], AAM_CHANNELS, conv="conv"))
    for j, i in enumerate(act_from):
        keys.update(_convbn_keys(f"backbone.inj_module.act_embedding_list.{j}", chs[i], AAM_CHANNELS, conv="conv"))
    keys.update(_convbn_keys("decode_head.linear_fuse", AAM_CHANNELS, AAM_CHANNELS, groups=AAM_CHANNELS, conv="conv"))
    keys.update({"decode_head.conv_seg.weight": (num_classes, AAM_CHANNELS, 1, 1),
                 "decode_head.conv_seg.bias": (num_classes,)})
    return keys


def random_state(variant: str, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights for every key of the schema (BN statistics positive, small weights)."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in paddle_schema(variant, num_classes).items():
        if key.endswith("_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("_mean") or key.endswith(".bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif key.endswith("pos_embed"):
            value = rng.normal(0.0, 0.5, shape)
        elif key.endswith(".weight") and len(shape) == 1:  # BN scale
            value = rng.uniform(0.5, 1.5, shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        state[key] = value.astype(np.float32)
    return state


# ---------------------------------------------------------------------------------------------- operators
def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: int = 1, groups: int = 1) -> np.ndarray:
    """``nn.Conv2D`` with padding ``k // 2`` (x ``[C,H,W]``, w ``[O, C/groups, k, k]``)."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # C,Ho,Wo,k,k
    cin_g, cout_g = x.shape[0] // groups, w.shape[0] // groups
    outs = []
    for g in range(groups):
        xs = win[g * cin_g:(g + 1) * cin_g]
        ws = w[g * cout_g:(g + 1) * cout_g]
        outs.append(np.einsum("chwij,ocij->ohw", xs, ws))
    y = np.concatenate(outs, axis=0)
    return y if b is None else y + b[:, None, None]


def bn(x: np.ndarray, s: dict, p: str) -> np.ndarray:
    scale = s[f"{p}.weight"] / np.sqrt(s[f"{p}._variance"] + EPS)
    return (x - s[f"{p}._mean"][:, None, None]) * scale[:, None, None] + s[f"{p}.bias"][:, None, None]


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


def hardswish(x: np.ndarray) -> np.ndarray:
    return x * relu6(x + 3.0) / 6.0


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


ACTS = {"relu": relu, "hardswish": hardswish, "relu6": relu6}


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    low = np.minimum(np.floor(src).astype(int), n_in - 1)
    return low, np.minimum(low + 1, n_in - 1), src - low


def resize_bilinear(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``F.interpolate(x, size=hw, mode="bilinear", align_corners=False)`` of ``[C,H,W]``."""
    y0, y1, fy = _taps(x.shape[1], hw[0])
    x0, x1, fx = _taps(x.shape[2], hw[1])
    rows = x[:, y0] * (1 - fy)[None, :, None] + x[:, y1] * fy[None, :, None]
    return rows[:, :, x0] * (1 - fx) + rows[:, :, x1] * fx


def resize_linear(x: np.ndarray, n: int) -> np.ndarray:
    """``F.interpolate(x, size=(n,), mode="linear", align_corners=False)`` of ``[C,L]``."""
    i0, i1, f = _taps(x.shape[1], n)
    return x[:, i0] * (1 - f) + x[:, i1] * f


def conv_bn(x: np.ndarray, s: dict, p: str, stride: int = 1, groups: int = 1, conv: str = "c") -> np.ndarray:
    return bn(conv2d(x, s[f"{p}.{conv}.weight"], None, stride, groups), s, f"{p}.bn")


# ---------------------------------------------------------------------------------------------- backbone
def residual_unit(x: np.ndarray, s: dict, p: str, cfg: tuple, act_override: str | None = None) -> np.ndarray:
    k, exp, c, se, act, stride = cfg
    f = ACTS[act_override if (act_override and act == "hardswish") else act]
    y = f(conv_bn(x, s, f"{p}.expand_conv"))
    y = f(conv_bn(y, s, f"{p}.bottleneck_conv", stride=stride, groups=exp))
    if se:
        g = y.mean(axis=(1, 2), keepdims=True)
        g = relu(conv2d(g, s[f"{p}.mid_se.conv1.weight"], s[f"{p}.mid_se.conv1.bias"]))
        g = conv2d(g, s[f"{p}.mid_se.conv2.weight"], s[f"{p}.mid_se.conv2.bias"])
        y = y * np.clip(0.2 * g + 0.5, 0.0, 1.0)
    y = conv_bn(y, s, f"{p}.linear_conv")
    return x + y if stride == 1 and x.shape[0] == c else y


def sea_attention(x: np.ndarray, s: dict, p: str, key_dim: int, num_heads: int) -> np.ndarray:
    """``Sea_Attention`` with ``stride_attention=True`` on one image ``[C,H,W]``."""
    h_ori, w_ori = x.shape[1:]
    x = bn(conv2d(x, s[f"{p}.stride_conv.0.weight"], s[f"{p}.stride_conv.0.bias"], 2, groups=x.shape[0]), s,
           f"{p}.stride_conv.1")
    _, h, w = x.shape
    nh_kd, d = key_dim * num_heads, ATTN_RATIO * key_dim
    dh = d * num_heads
    q, k, v = conv_bn(x, s, f"{p}.to_q"), conv_bn(x, s, f"{p}.to_k"), conv_bn(x, s, f"{p}.to_v")
    qkv = np.concatenate([q, k, v], axis=0)
    qkv = relu6(conv_bn(qkv, s, f"{p}.dwconv", groups=qkv.shape[0]))
    qkv = conv_bn(qkv, s, f"{p}.pwconv")

    def attend(qs: np.ndarray, ks: np.ndarray, vs: np.ndarray, n: int) -> np.ndarray:
        qh = qs.reshape(num_heads, key_dim, n).transpose(0, 2, 1)  # [h, n, kd]
        kh = ks.reshape(num_heads, key_dim, n)  # [h, kd, n]
        vh = vs.reshape(num_heads, d, n).transpose(0, 2, 1)  # [h, n, d]
        logits = qh @ kh * key_dim ** -0.5
        attn = np.exp(logits - logits.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        return (attn @ vh).transpose(0, 2, 1).reshape(dh, n)

    qrow = q.mean(-1) + resize_linear(s[f"{p}.pos_emb_rowq.pos_embed"][0], h)
    krow = k.mean(-1) + resize_linear(s[f"{p}.pos_emb_rowk.pos_embed"][0], h)
    xx_row = attend(qrow, krow, v.mean(-1), h)[:, :, None]  # [dh, H, 1]
    xx_row = conv_bn(relu6(xx_row), s, f"{p}.proj_encode_row.1")
    qcol = q.mean(-2) + resize_linear(s[f"{p}.pos_emb_columnq.pos_embed"][0], w)
    kcol = k.mean(-2) + resize_linear(s[f"{p}.pos_emb_columnk.pos_embed"][0], w)
    xx_col = attend(qcol, kcol, v.mean(-2), w)[:, None, :]  # [dh, 1, W]
    xx_col = conv_bn(relu6(xx_col), s, f"{p}.proj_encode_column.1")
    xx = v + (xx_row + xx_col)
    xx = conv_bn(relu6(xx), s, f"{p}.proj.1")
    xx = relu6(xx + 3.0) / 6.0 * qkv
    return resize_bilinear(xx, (h_ori, w_ori))


def mlp(x: np.ndarray, s: dict, p: str) -> np.ndarray:
    y = conv_bn(x, s, f"{p}.fc1")
    y = relu6(conv2d(y, s[f"{p}.dwconv.weight"], s[f"{p}.dwconv.bias"], groups=y.shape[0]))
    return conv_bn(y, s, f"{p}.fc2")


def aam(feats: list, s: dict, inj: str) -> np.ndarray:
    """``InjectionMultiSumallmultiallsum`` (AAM) or its ``Simpx8`` form (AAMSx8), sigmoid gates."""
    p = "backbone.inj_module"

    def emb(x: np.ndarray, j: int) -> np.ndarray:
        return conv_bn(x, s, f"{p}.embedding_list.{j}", conv="conv")

    def gate(x: np.ndarray, j: int) -> np.ndarray:
        return sigmoid(conv_bn(x, s, f"{p}.act_embedding_list.{j}", conv="conv"))

    x8, x16, x32 = feats
    if inj == "AAM":
        low1 = resize_bilinear(x8, (x8.shape[1] // 2, x8.shape[2] // 2))  # scale_factor 0.5
        hw = low1.shape[1:]
        low1_act, low1 = gate(low1, 0), emb(low1, 0)
        low2 = resize_bilinear(x16, hw)
        low2_act, low2 = gate(low2, 1), emb(low2, 1)
        high_act, high = resize_bilinear(gate(x32, 2), hw), resize_bilinear(emb(x32, 2), hw)
        return low1_act * low2_act * high_act * (low1 + low2) + high
    low1 = emb(x8, 0)
    hw = low1.shape[1:]
    low2_act = gate(resize_bilinear(x16, hw), 0)
    high_act, high = resize_bilinear(gate(x32, 1), hw), resize_bilinear(emb(x32, 1), hw)
    return low2_act * high_act * low1 + high


def head(x: np.ndarray, s: dict) -> np.ndarray:
    y = relu(conv_bn(x, s, "decode_head.linear_fuse", groups=x.shape[0], conv="conv"))
    return conv2d(y, s["decode_head.conv_seg.weight"], s["decode_head.conv_seg.bias"])


def forward(image: np.ndarray, s: dict, variant: str, taps: dict | None = None) -> np.ndarray:
    """Low-resolution logits ``[K,h,w]`` of one ``[3,H,W]`` image (no final upsampling, as VIM's input).

    ``taps`` (optional dict) receives intermediate results: ``smb{i}``, ``trans{t}.{i}.attn`` (the attention
    branch output of each block), ``trans{t}`` (stage output), ``aam``.
    """
    a = ARCH[variant]
    taps = {} if taps is None else taps
    s = {k: np.asarray(v, np.float64) for k, v in s.items()}
    x = hardswish(conv_bn(np.asarray(image, np.float64), s, "backbone.smb1.conv", stride=2))
    feats = []
    for i, stage in enumerate(a["stages"]):
        for b, cfg in enumerate(stage):
            x = residual_unit(x, s, f"backbone.smb{i + 1}.blocks.{b}", cfg)
        taps[f"smb{i + 1}"] = x
        if i == 1:
            feats.append(x)
        if i >= 2:
            t = i - 2
            for j in range(a["depths"][t]):
                p = f"backbone.trans{t + 1}.transformer_blocks.{j}"
                branch = sea_attention(x, s, f"{p}.attn", a["key_dims"][t], a["num_heads"])
                taps[f"trans{t + 1}.{j}.attn"] = branch
                x = x + branch
                x = x + mlp(x, s, f"{p}.mlp")
            taps[f"trans{t + 1}"] = x
            feats.append(x)
    fused = aam(feats, s, a["inj"])
    taps["aam"] = fused
    return head(fused, s)


# ------------------------------------------------------------------------------------------ mmseg naming
def mmseg_name(paddle_key: str) -> str:
    """The name mmsegmentation's ``projects/pp_mobileseg`` gives a PaddleSeg weight (read from its modules)."""
    parts = paddle_key.split(".")
    leaf = {"_mean": "running_mean", "_variance": "running_var"}.get(parts[-1], parts[-1])
    path = parts[:-1]
    out: list[str] = []
    i = 0
    while i < len(path):
        part = path[i]
        nxt = path[i + 1] if i + 1 < len(path) else None
        if part == "mid_se" and nxt in ("conv1", "conv2"):  # SEModule: ConvModule conv_act1/conv_act2
            out += ["mid_se", f"conv_act{nxt[-1]}", "conv"]
            i += 2
            continue
        if part == "stride_conv" and nxt in ("0", "1"):  # ConvModule(conv + bn)
            out += ["stride_conv", "conv" if nxt == "0" else "bn"]
            i += 2
            continue
        if part in ("proj", "proj_encode_row", "proj_encode_column") and nxt == "1":  # ConvModule(act, conv, norm)
            out.append(part)
            i += 2
            continue
        out.append("conv" if part == "c" else part)
        i += 1
    if len(out) >= 2 and out[-2] == "mlp" and out[-1] == "dwconv":  # MLP dwconv is a ConvModule with bias
        out.append("conv")
    return ".".join(out + [leaf])


def mmseg_state(paddle_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same weights under mmsegmentation's names, with the ``num_batches_tracked`` counters it saves."""
    state = {mmseg_name(k): v for k, v in paddle_state.items()}
    for key in list(state):
        if key.endswith(".running_mean"):
            state[key[: -len("running_mean")] + "num_batches_tracked"] = np.array(1000, np.int64)
    return state
