"""A NumPy forward of SAM2.1 (image encoder + point prompts + single/multi-mask decoder) with the semantics of the
official PyTorch code, written independently of segzoo's Keras port, to check it.

Layouts follow the official code: images and feature maps NCHW (batch 1), Hiera tokens ``[B, H, W, C]``, weights
as in the state dict (``Linear`` ``[out, in]``, ``Conv2d`` ``[out, in, kh, kw]``, ``ConvTranspose2d``
``[in, out, kh, kw]``). Computation in float64.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import erf

from reference.sam2_schema import TINY, trunk_blocks

Sd = dict  # official name -> array


# ------------------------------------------------------------------------------------------------- basics
def linear(x: np.ndarray, sd: Sd, key: str) -> np.ndarray:
    w = sd[f"{key}.weight"].astype(np.float64)
    y = x.reshape(-1, x.shape[-1]) @ w.T + sd[f"{key}.bias"]
    return y.reshape(*x.shape[:-1], w.shape[0])


def layer_norm(x: np.ndarray, sd: Sd, key: str, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * sd[f"{key}.weight"] + sd[f"{key}.bias"]


def layer_norm_2d(x: np.ndarray, sd: Sd, key: str, eps: float = 1e-6) -> np.ndarray:
    """``LayerNorm2d`` on ``[B, C, H, W]``: statistics over C."""
    mu = x.mean(1, keepdims=True)
    var = ((x - mu) ** 2).mean(1, keepdims=True)
    return (sd[f"{key}.weight"][None, :, None, None] * (x - mu) / np.sqrt(var + eps)
            + sd[f"{key}.bias"][None, :, None, None])


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, padding: int = 0) -> np.ndarray:
    """``[B, C, H, W]`` convolution (cross-correlation, as torch) by explicit sums over the kernel taps."""
    w = w.astype(np.float64)
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    kh, kw = w.shape[2:]
    oh = (x.shape[2] - kh) // stride + 1
    ow = (x.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j])
    return out + b[None, :, None, None]


def conv_transpose_2x2(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``ConvTranspose2d(kernel_size=2, stride=2)``: ``y[o, 2i + a, 2j + c] = sum_ch x[ch, i, j] w[ch, o, a, c]``."""
    bsz, _, h, wd = x.shape
    out = np.zeros((bsz, w.shape[1], 2 * h, 2 * wd))
    for a in range(2):
        for c in range(2):
            out[:, :, a::2, c::2] = np.einsum("bihw,io->bohw", x, w[:, :, a, c])
    return out + b[None, :, None, None]


def max_pool_nhwc(x: np.ndarray) -> np.ndarray:
    """``MaxPool2d(2, 2)`` (floor) on ``[B, H, W, C]``."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def sdpa(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``F.scaled_dot_product_attention`` on ``[..., T, d]``."""
    s = q @ np.swapaxes(k, -1, -2) / math.sqrt(q.shape[-1])
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


# --------------------------------------------------------------------------------------------------- trunk
def window_partition(x: np.ndarray, ws: int) -> tuple[np.ndarray, tuple[int, int]]:
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    x = np.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    hp, wp = h + ph, w + pw
    x = x.reshape(b, hp // ws, ws, wp // ws, ws, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(win: np.ndarray, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> np.ndarray:
    hp, wp = pad_hw
    h, w = hw
    b = win.shape[0] // (hp * wp // ws // ws)
    x = win.reshape(b, hp // ws, wp // ws, ws, ws, -1).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :]


def bicubic_resize(x: np.ndarray, out_h: int, out_w: int, a: float = -0.75) -> np.ndarray:
    """``F.interpolate(x, (out_h, out_w), mode="bicubic", align_corners=False)`` on ``[C, H, W]``: per output
    pixel, a 4x4 neighbourhood of border-clamped source pixels weighted by Keys' cubic kernel."""

    def kernel(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return ((a + 2) * d - (a + 3)) * d * d + 1
        if d < 2:
            return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
        return 0.0

    c, h, w = x.shape
    out = np.zeros((c, out_h, out_w))
    for oy in range(out_h):
        sy = (oy + 0.5) * h / out_h - 0.5
        y0 = math.floor(sy)
        for ox in range(out_w):
            sx = (ox + 0.5) * w / out_w - 0.5
            x0 = math.floor(sx)
            acc = np.zeros(c)
            for m in range(-1, 3):
                yy = min(max(y0 + m, 0), h - 1)
                wy = kernel(sy - (y0 + m))
                for n in range(-1, 3):
                    xx = min(max(x0 + n, 0), w - 1)
                    acc += wy * kernel(sx - (x0 + n)) * x[:, yy, xx]
            out[:, oy, ox] = acc
    return out


def pos_embed(sd: Sd, h: int, w: int) -> np.ndarray:
    """``Hiera._get_pos_embed``: ``[1, H, W, C]``."""
    bg = bicubic_resize(sd["image_encoder.trunk.pos_embed"][0].astype(np.float64), h, w)
    win = sd["image_encoder.trunk.pos_embed_window"][0]
    ws = win.shape[-1]
    return (bg + np.tile(win, (1, h // ws, w // ws))).transpose(1, 2, 0)[None]


def multiscale_attention(x: np.ndarray, sd: Sd, key: str, heads: int, q_stride: bool) -> np.ndarray:
    b, h, w, _ = x.shape
    qkv = linear(x, sd, f"{key}.qkv").reshape(b, h * w, 3, heads, -1)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if q_stride:
        q = max_pool_nhwc(q.reshape(b, h, w, -1))
        h, w = q.shape[1:3]
        q = q.reshape(b, h * w, heads, -1)
    out = sdpa(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
    return linear(out.transpose(0, 2, 1, 3).reshape(b, h, w, -1), sd, f"{key}.proj")


def hiera_mlp(x: np.ndarray, sd: Sd, key: str) -> np.ndarray:
    return linear(gelu(linear(x, sd, f"{key}.layers.0")), sd, f"{key}.layers.1")


def multiscale_block(x: np.ndarray, sd: Sd, key: str, blk: dict) -> np.ndarray:
    shortcut = x
    x = layer_norm(x, sd, f"{key}.norm1", 1e-6)
    if blk["dim"] != blk["dim_out"]:
        shortcut = linear(x, sd, f"{key}.proj")
        if blk["q_stride"]:
            shortcut = max_pool_nhwc(shortcut)
    ws = blk["window"]
    if ws > 0:
        h, w = x.shape[1:3]
        x, pad_hw = window_partition(x, ws)
    x = multiscale_attention(x, sd, f"{key}.attn", blk["heads"], blk["q_stride"])
    if blk["q_stride"]:
        ws = blk["window"] // 2
        h, w = shortcut.shape[1:3]
        pad_hw = (h + (ws - h % ws) % ws, w + (ws - w % ws) % ws)
    if blk["window"] > 0:
        x = window_unpartition(x, ws, pad_hw, (h, w))
    x = shortcut + x
    return x + hiera_mlp(layer_norm(x, sd, f"{key}.norm2", 1e-6), sd, f"{key}.mlp")


def trunk(image_nchw: np.ndarray, sd: Sd) -> list[np.ndarray]:
    """Hiera: stage outputs ``[B, C, H, W]`` at strides 4, 8, 16, 32."""
    t = "image_encoder.trunk"
    x = conv2d(image_nchw, sd[f"{t}.patch_embed.proj.weight"], sd[f"{t}.patch_embed.proj.bias"], 4, 3)
    x = x.transpose(0, 2, 3, 1)
    x = x + pos_embed(sd, x.shape[1], x.shape[2])
    blocks = trunk_blocks(TINY)
    ends = list(np.cumsum(TINY["stages"]) - 1)
    outs = []
    for i, blk in enumerate(blocks):
        x = multiscale_block(x, sd, f"{t}.blocks.{i}", blk)
        if i in ends:
            outs.append(x.transpose(0, 3, 1, 2))
    return outs


def fpn_neck(xs: list[np.ndarray], sd: Sd, top_down: tuple[int, ...] = (2, 3)) -> list[np.ndarray]:
    """``FpnNeck.forward`` (nearest top-down), features only."""
    n = len(xs) - 1
    out: list = [None] * len(xs)
    prev = None
    for i in range(n, -1, -1):
        key = f"image_encoder.neck.convs.{n - i}.conv"
        lat = conv2d(xs[i], sd[f"{key}.weight"], sd[f"{key}.bias"])
        if i in top_down and prev is not None:
            prev = lat + prev.repeat(2, axis=2).repeat(2, axis=3)
        else:
            prev = lat
        out[i] = prev
    return out


def image_encoder(image_nchw: np.ndarray, sd: Sd) -> dict[str, np.ndarray]:
    """``SAM2ImagePredictor.set_image`` after the transforms: ``forward_image`` (neck, scalp 1, conv_s0/s1) and
    ``no_mem_embed``; NCHW outputs."""
    feats = fpn_neck(trunk(image_nchw, sd), sd)[:-1]
    md = "sam_mask_decoder"
    s0 = conv2d(feats[0], sd[f"{md}.conv_s0.weight"], sd[f"{md}.conv_s0.bias"])
    s1 = conv2d(feats[1], sd[f"{md}.conv_s1.weight"], sd[f"{md}.conv_s1.bias"])
    emb = feats[2] + sd["no_mem_embed"].reshape(1, -1, 1, 1)
    return {"image_embeddings": emb, "high_res_features_s0": s0, "high_res_features_s1": s1}


# ------------------------------------------------------------------------------------------- prompt encoder
def _pe_encoding(coords01: np.ndarray, gauss: np.ndarray) -> np.ndarray:
    c = (2 * coords01 - 1) @ gauss.astype(np.float64)
    c = 2 * np.pi * c
    return np.concatenate([np.sin(c), np.cos(c)], axis=-1)


def dense_pe(sd: Sd, size: int) -> np.ndarray:
    """``PromptEncoder.get_dense_pe``: ``[1, C, size, size]``."""
    gauss = sd["sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"]
    grid = np.ones((size, size))
    y = (grid.cumsum(0) - 0.5) / size
    x = (grid.cumsum(1) - 0.5) / size
    return _pe_encoding(np.stack([x, y], -1), gauss).transpose(2, 0, 1)[None]


def embed_points(coords: np.ndarray, labels: np.ndarray, sd: Sd, image_size: int) -> np.ndarray:
    """``PromptEncoder._embed_points(pad=True)``: ``[B, N + 1, C]``."""
    pe = "sam_prompt_encoder"
    pts = coords + 0.5
    pts = np.concatenate([pts, np.zeros((pts.shape[0], 1, 2))], axis=1)
    lab = np.concatenate([labels, -np.ones((labels.shape[0], 1))], axis=1)
    emb = _pe_encoding(pts / image_size, sd[f"{pe}.pe_layer.positional_encoding_gaussian_matrix"])
    lab = lab[..., None]
    emb = np.where(lab == -1, 0.0 * emb + sd[f"{pe}.not_a_point_embed.weight"], emb)
    for value in range(4):
        emb = np.where(lab == value, emb + sd[f"{pe}.point_embeddings.{value}.weight"], emb)
    return emb


# --------------------------------------------------------------------------------------------- mask decoder
def attention_module(q: np.ndarray, k: np.ndarray, v: np.ndarray, sd: Sd, key: str, heads: int = 8) -> np.ndarray:
    """``sam.transformer.Attention``."""
    q, k, v = linear(q, sd, f"{key}.q_proj"), linear(k, sd, f"{key}.k_proj"), linear(v, sd, f"{key}.v_proj")

    def split(x: np.ndarray) -> np.ndarray:
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(0, 2, 1, 3)

    out = sdpa(split(q), split(k), split(v))
    b, _, n, _ = out.shape
    return linear(out.transpose(0, 2, 1, 3).reshape(b, n, -1), sd, f"{key}.out_proj")


def two_way_block(queries, keys, query_pe, key_pe, sd: Sd, key: str, skip_first_layer_pe: bool):
    """``TwoWayAttentionBlock.forward``."""
    if skip_first_layer_pe:
        queries = attention_module(queries, queries, queries, sd, f"{key}.self_attn")
    else:
        q = queries + query_pe
        queries = queries + attention_module(q, q, queries, sd, f"{key}.self_attn")
    queries = layer_norm(queries, sd, f"{key}.norm1", 1e-5)
    q, k = queries + query_pe, keys + key_pe
    queries = layer_norm(queries + attention_module(q, k, keys, sd, f"{key}.cross_attn_token_to_image"),
                         sd, f"{key}.norm2", 1e-5)
    mlp = linear(relu(linear(queries, sd, f"{key}.mlp.layers.0")), sd, f"{key}.mlp.layers.1")
    queries = layer_norm(queries + mlp, sd, f"{key}.norm3", 1e-5)
    q, k = queries + query_pe, keys + key_pe
    keys = layer_norm(keys + attention_module(k, q, queries, sd, f"{key}.cross_attn_image_to_token"),
                      sd, f"{key}.norm4", 1e-5)
    return queries, keys


def two_way_transformer(image_embedding, image_pe, point_embedding, sd: Sd):
    """``TwoWayTransformer.forward`` on NCHW image inputs: ``(queries, keys)``."""
    t = "sam_mask_decoder.transformer"
    keys = image_embedding.reshape(*image_embedding.shape[:2], -1).transpose(0, 2, 1)
    key_pe = image_pe.reshape(*image_pe.shape[:2], -1).transpose(0, 2, 1)
    queries = point_embedding
    for i in range(2):
        queries, keys = two_way_block(queries, keys, point_embedding, key_pe, sd, f"{t}.layers.{i}", i == 0)
    q, k = queries + point_embedding, keys + key_pe
    queries = queries + attention_module(q, k, keys, sd, f"{t}.final_attn_token_to_image")
    return layer_norm(queries, sd, f"{t}.norm_final_attn", 1e-5), keys


def mlp_head(x: np.ndarray, sd: Sd, key: str, depth: int = 3, sigmoid: bool = False) -> np.ndarray:
    for i in range(depth):
        x = linear(x, sd, f"{key}.layers.{i}")
        if i < depth - 1:
            x = relu(x)
    return 1.0 / (1.0 + np.exp(-x)) if sigmoid else x


def mask_decoder(feats: dict[str, np.ndarray], sparse: np.ndarray, sd: Sd, multimask: bool = False):
    """``MaskDecoder.forward`` (``predict_masks`` with ``pred_obj_scores``, high-res features, no dynamic
    stability fallback) with the no-mask dense embedding: ``(masks [B, M, 4h, 4w], iou [B, M], obj [B, 1])``."""
    md = "sam_mask_decoder"
    emb = feats["image_embeddings"]
    b, c, h, w = emb.shape
    tokens = np.concatenate([sd[f"{md}.obj_score_token.weight"], sd[f"{md}.iou_token.weight"],
                             sd[f"{md}.mask_tokens.weight"]], axis=0)
    tokens = np.concatenate([np.broadcast_to(tokens, (b, *tokens.shape)), sparse], axis=1)
    src = emb + sd["sam_prompt_encoder.no_mask_embed.weight"].reshape(1, -1, 1, 1)
    hs, src = two_way_transformer(src, dense_pe(sd, h), tokens, sd)
    src = src.transpose(0, 2, 1).reshape(b, c, h, w)
    up = conv_transpose_2x2(src, sd[f"{md}.output_upscaling.0.weight"], sd[f"{md}.output_upscaling.0.bias"])
    up = gelu(layer_norm_2d(up + feats["high_res_features_s1"], sd, f"{md}.output_upscaling.1"))
    up = conv_transpose_2x2(up, sd[f"{md}.output_upscaling.3.weight"], sd[f"{md}.output_upscaling.3.bias"])
    up = gelu(up + feats["high_res_features_s0"])
    hyper = np.stack([mlp_head(hs[:, 2 + i], sd, f"{md}.output_hypernetworks_mlps.{i}") for i in range(4)], 1)
    bb, cc, hh, ww = up.shape
    masks = (hyper @ up.reshape(bb, cc, hh * ww)).reshape(bb, -1, hh, ww)
    iou = mlp_head(hs[:, 1], sd, f"{md}.iou_prediction_head", sigmoid=True)
    obj = mlp_head(hs[:, 0], sd, f"{md}.pred_obj_score_head")
    if multimask:
        return masks[:, 1:], iou[:, 1:], obj
    return masks[:, :1], iou[:, :1], obj


def decoder(feats: dict[str, np.ndarray], coords: np.ndarray, labels: np.ndarray, sd: Sd, image_size: int,
            multimask: bool = False):
    """Points -> ``(masks, iou, obj)`` as ``SAM2ImagePredictor._predict`` (no resizing)."""
    return mask_decoder(feats, embed_points(coords, labels, sd, image_size), sd, multimask)
