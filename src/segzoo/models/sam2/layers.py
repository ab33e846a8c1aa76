"""Keras layers of SAM2.1: Hiera blocks with windowed attention and query pooling, the prompt encoder, the two-way
transformer. Written from the semantics of ``facebookresearch/sam2`` (``modeling/backbones/hieradet.py``,
``backbones/utils.py``, ``sam/prompt_encoder.py``, ``sam/transformer.py``, ``position_encoding.py``), channels last.

Tensor layout: images and feature maps are NHWC; token sequences are ``[B, tokens, channels]``. Every layer works
for any batch size (reshapes fold the batch into the leading axis), but the graph is exported at batch 1.

Weights are created with the shapes Keras uses; :mod:`segzoo.models.sam2.weights` maps the official keys onto them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import keras
import numpy as np
from keras import ops

HIERA_NORM_EPS = 1e-6
"""Hiera blocks and LayerNorm2d use eps 1e-6; the two-way transformer's ``nn.LayerNorm`` uses the default 1e-5."""
TRANSFORMER_NORM_EPS = 1e-5


# ---------------------------------------------------------------------------------------------- helpers
def gelu(x: Any) -> Any:
    """Exact (erf) GELU, as ``torch.nn.GELU()``."""
    return keras.activations.gelu(x, approximate=False)


def bicubic_matrix(out_size: int, in_size: int, a: float = -0.75) -> np.ndarray:
    """``[out_size, in_size]`` matrix of 1-D bicubic resampling with PyTorch's rules (``mode="bicubic"``,
    ``align_corners=False``): source ``(o + 0.5) * in / out - 0.5`` (not clamped), cubic convolution with
    ``a = -0.75``, neighbours beyond the border replaced by the border sample."""
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    scale = in_size / out_size
    for o in range(out_size):
        src = (o + 0.5) * scale - 0.5
        base = math.floor(src)
        t = src - base
        distances = (1.0 + t, t, 1.0 - t, 2.0 - t)
        for offset, d in zip(range(-1, 3), distances):
            if d <= 1.0:
                w = (a + 2.0) * d ** 3 - (a + 3.0) * d ** 2 + 1.0
            else:
                w = a * d ** 3 - 5.0 * a * d ** 2 + 8.0 * a * d - 4.0 * a
            matrix[o, min(max(base + offset, 0), in_size - 1)] += w
    return matrix


def window_partition(x: Any, window: int) -> tuple[Any, tuple[int, int]]:
    """``[B, H, W, C]`` -> ``[B * nH * nW, window, window, C]`` windows (row-major), zero-padding H and W up to
    multiples of ``window`` first; also returns the padded size ``(Hp, Wp)``."""
    height, width, channels = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        x = ops.pad(x, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])
    hp, wp = height + pad_h, width + pad_w
    x = ops.reshape(x, (-1, window, wp // window, window, channels))
    x = ops.transpose(x, (0, 2, 1, 3, 4))
    return ops.reshape(x, (-1, window, window, channels)), (hp, wp)


def window_unpartition(windows: Any, window: int, padded: tuple[int, int], size: tuple[int, int]) -> Any:
    """Inverse of :func:`window_partition`: windows -> ``[B, H, W, C]`` with the padding cropped."""
    (hp, wp), (height, width) = padded, size
    channels = int(windows.shape[-1])
    x = ops.reshape(windows, (-1, wp // window, window, window, channels))
    x = ops.transpose(x, (0, 2, 1, 3, 4))
    x = ops.reshape(x, (-1, hp, wp, channels))
    if hp > height or wp > width:
        x = x[:, :height, :width, :]
    return x


def attention(q: Any, k: Any, v: Any, num_heads: int) -> Any:
    """Scaled dot-product attention of ``[B, Tq, D]`` queries on ``[B, Tk, D]`` keys/values split into heads
    (head-major channels, as ``reshape(b, n, heads, D // heads)``); returns ``[B, Tq, D]``."""
    tq, tk, dim = int(q.shape[1]), int(k.shape[1]), int(q.shape[2])
    head_dim = dim // num_heads
    q = ops.transpose(ops.reshape(q, (-1, tq, num_heads, head_dim)), (0, 2, 1, 3))
    k = ops.transpose(ops.reshape(k, (-1, tk, num_heads, head_dim)), (0, 2, 3, 1))
    v = ops.transpose(ops.reshape(v, (-1, tk, num_heads, head_dim)), (0, 2, 1, 3))
    scores = ops.matmul(q * (1.0 / math.sqrt(head_dim)), k)
    out = ops.matmul(ops.softmax(scores, axis=-1), v)
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (-1, tq, dim))


class LayerNorm(keras.layers.LayerNormalization):
    """Layer normalization over the last axis written as ``d = x - mean(x)``, ``d * rsqrt(mean(d * d) + eps) *
    gamma + beta``: the same numbers as ``keras.layers.LayerNormalization``, but only ops with int8 kernels
    (Keras's own form leaves a float NEG in an int8 TFLite model and a SQUARED_DIFFERENCE the STM32MP2 stack
    lacks)."""

    def call(self, x: Any) -> Any:
        centred = x - ops.mean(x, axis=-1, keepdims=True)
        variance = ops.mean(centred * centred, axis=-1, keepdims=True)
        return centred * ops.rsqrt(variance + self.epsilon) * self.gamma + self.beta


def _max_pool(x: Any) -> Any:
    """2x2 max pooling, stride 2, floor (``nn.MaxPool2d(kernel_size=2, stride=2)``)."""
    return ops.max_pool(x, pool_size=2, strides=2, padding="valid")


# ------------------------------------------------------------------------------------------- trunk layers
class HieraPositionEmbedding(keras.layers.Layer):
    """Adds Hiera's windowed position embedding: the background embedding ``pos_embed`` ``[bh, bw, C]`` resized
    bicubically to the feature size plus the window embedding ``pos_embed_window`` ``[w, w, C]`` tiled over it.
    Both depend only on the weights, so the converter folds them into one constant."""

    def __init__(self, background_size: tuple[int, int], window: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.background_size = tuple(int(v) for v in background_size)
        self.window = int(window)

    def build(self, input_shape: tuple) -> None:
        channels = int(input_shape[-1])
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.pos_embed = self.add_weight(shape=(*self.background_size, channels), initializer=init,
                                         name="pos_embed")
        self.pos_embed_window = self.add_weight(shape=(self.window, self.window, channels), initializer=init,
                                                name="pos_embed_window")

    def embedding(self, height: int, width: int) -> Any:
        """The ``[height, width, C]`` embedding added to a feature map of that size."""
        rows = ops.convert_to_tensor(bicubic_matrix(height, self.background_size[0]), dtype=self.compute_dtype)
        cols = ops.convert_to_tensor(bicubic_matrix(width, self.background_size[1]), dtype=self.compute_dtype)
        background = ops.einsum("hi,ijc->hjc", rows, self.pos_embed)
        background = ops.einsum("wj,hjc->hwc", cols, background)
        tiles = (height // self.window, width // self.window, 1)
        return background + ops.tile(self.pos_embed_window, tiles)

    def call(self, x: Any) -> Any:
        return x + self.embedding(int(x.shape[1]), int(x.shape[2]))[None]

    def get_config(self) -> dict:
        return {**super().get_config(), "background_size": list(self.background_size), "window": self.window}


class HieraAttention(keras.layers.Layer):
    """Hiera's multi-scale attention on ``[B', h, w, C]`` windows: one ``qkv`` projection, queries optionally
    max-pooled 2x2 (stage change), attention over all tokens of the window, output projection ``proj``."""

    def __init__(self, dim_out: int, num_heads: int, q_pool: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim_out, self.num_heads, self.q_pool = int(dim_out), int(num_heads), bool(q_pool)
        self.qkv = keras.layers.Dense(3 * self.dim_out, name="qkv")
        self.proj = keras.layers.Dense(self.dim_out, name="proj")

    def build(self, input_shape: tuple) -> None:
        self.qkv.build(input_shape)
        self.proj.build((*input_shape[:-1], self.dim_out))

    def call(self, x: Any) -> Any:
        height, width = int(x.shape[1]), int(x.shape[2])
        head_dim = self.dim_out // self.num_heads
        qkv = ops.reshape(self.qkv(x), (-1, height * width, 3, self.num_heads * head_dim))
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        if self.q_pool:
            q = _max_pool(ops.reshape(q, (-1, height, width, self.dim_out)))
            height, width = int(q.shape[1]), int(q.shape[2])
            q = ops.reshape(q, (-1, height * width, self.dim_out))
        out = attention(q, k, v, self.num_heads)
        return self.proj(ops.reshape(out, (-1, height, width, self.dim_out)))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim_out": self.dim_out, "num_heads": self.num_heads, "q_pool": self.q_pool}


class HieraBlock(keras.layers.Layer):
    """One Hiera ``MultiScaleBlock``: pre-norm windowed (or global, ``window_size=0``) attention with an optional
    stage change (projected and pooled shortcut, pooled queries), then a pre-norm GELU MLP; both residual."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, window_size: int, q_pool: bool = False,
                 mlp_ratio: float = 4.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dim, self.dim_out, self.num_heads = int(dim), int(dim_out), int(num_heads)
        self.window_size, self.q_pool, self.mlp_ratio = int(window_size), bool(q_pool), float(mlp_ratio)
        self.norm1 = LayerNorm(epsilon=HIERA_NORM_EPS, name="norm1")
        self.attn = HieraAttention(self.dim_out, self.num_heads, self.q_pool, name="attn")
        self.norm2 = LayerNorm(epsilon=HIERA_NORM_EPS, name="norm2")
        self.mlp_fc1 = keras.layers.Dense(int(self.dim_out * self.mlp_ratio), name="mlp_layers_0")
        self.mlp_fc2 = keras.layers.Dense(self.dim_out, name="mlp_layers_1")
        self.proj = keras.layers.Dense(self.dim_out, name="proj") if self.dim != self.dim_out else None

    def build(self, input_shape: tuple) -> None:
        self.norm1.build(input_shape)
        window = self.window_size or int(input_shape[1])
        self.attn.build((None, window, window, self.dim))
        out_shape = (*input_shape[:-1], self.dim_out)
        self.norm2.build(out_shape)
        self.mlp_fc1.build(out_shape)
        self.mlp_fc2.build((*input_shape[:-1], int(self.dim_out * self.mlp_ratio)))
        if self.proj is not None:
            self.proj.build(input_shape)

    def mlp(self, x: Any) -> Any:
        """The block's MLP (``dim_out -> mlp_ratio * dim_out -> dim_out``, exact GELU)."""
        return self.mlp_fc2(gelu(self.mlp_fc1(x)))

    def call(self, x: Any) -> Any:
        height, width = int(x.shape[1]), int(x.shape[2])
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            shortcut = self.proj(x)
            if self.q_pool:
                shortcut = _max_pool(shortcut)
        window = self.window_size
        if window > 0:
            x, padded = window_partition(x, window)
        x = self.attn(x)
        if self.q_pool:
            window //= 2
            height, width = int(shortcut.shape[1]), int(shortcut.shape[2])
            padded = (height + (-height) % window, width + (-width) % window) if window > 0 else (height, width)
        if self.window_size > 0:
            x = window_unpartition(x, window, padded, (height, width))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))

    def get_config(self) -> dict:
        return {**super().get_config(), "dim": self.dim, "dim_out": self.dim_out, "num_heads": self.num_heads,
                "window_size": self.window_size, "q_pool": self.q_pool, "mlp_ratio": self.mlp_ratio}


class AddEmbedding(keras.layers.Layer):
    """Adds one learned ``[C]`` vector to every position (SAM2's ``no_mem_embed`` on the image embeddings)."""

    def build(self, input_shape: tuple) -> None:
        self.embedding = self.add_weight(shape=(int(input_shape[-1]),),
                                         initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                                         name="embedding")

    def call(self, x: Any) -> Any:
        return x + self.embedding


# ----------------------------------------------------------------------------------------- prompt encoder
def _fourier(coords: Any, gaussian: Any) -> Any:
    """Random-Fourier encoding of coordinates in [0, 1]: ``[sin, cos](2 pi (2c - 1) @ G)``."""
    projected = ops.matmul(coords * 2.0 - 1.0, gaussian) * (2.0 * math.pi)
    return ops.concatenate([ops.sin(projected), ops.cos(projected)], axis=-1)


class PromptEncoder(keras.layers.Layer):
    """SAM's prompt encoder for point prompts, without box or mask prompts.

    ``call(coords, labels)`` with coords ``[B, N, 2]`` (x, y) in input-pixel units and labels ``[B, N]`` as floats
    (1 positive, 0 negative, -1 padding) returns ``(sparse, dense_pe, dense)``: the ``N + 1`` point tokens
    ``[B, N + 1, C]`` (the official padding point is appended: no box prompt), the dense positional encoding of the
    ``S/16`` grid ``[1, (S/16)^2, C]`` and the no-mask embedding ``[1, 1, C]`` added to the image embeddings.

    Labels select embeddings arithmetically, exact for -1, 0 and 1: ``pos = relu(l)``, ``pad = pos - l``,
    ``neg = 1 - pos - pad``; token = ``(1 - pad) * fourier(p + 0.5) + pad * not_a_point + neg * point_0 +
    pos * point_1`` (the official ``torch.where`` chain; no comparison ops in the graph).
    """

    def __init__(self, image_size: int, embedding_size: int, dim: int = 256, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_size, self.embedding_size, self.dim = int(image_size), int(embedding_size), int(dim)

    def build(self, coords_shape: tuple, labels_shape: tuple | None = None) -> None:
        dim = self.dim
        init = keras.initializers.RandomNormal(stddev=1.0)
        self.gaussian = self.add_weight(shape=(2, dim // 2), initializer=init, trainable=False,
                                        name="positional_encoding_gaussian_matrix")
        self.point_embed_negative = self.add_weight(shape=(dim,), initializer=init, name="point_embeddings_0")
        self.point_embed_positive = self.add_weight(shape=(dim,), initializer=init, name="point_embeddings_1")
        self.not_a_point_embed = self.add_weight(shape=(dim,), initializer=init, name="not_a_point_embed")
        self.no_mask_embed = self.add_weight(shape=(dim,), initializer=init, name="no_mask_embed")

    def dense_pe(self) -> Any:
        """``[1, (S/16)^2, C]``: the encoding of every cell centre of the embedding grid (row-major)."""
        n = self.embedding_size
        centres = (np.arange(n, dtype=np.float32) + 0.5) / n
        grid = np.stack(np.meshgrid(centres, centres, indexing="xy"), axis=-1).reshape(1, n * n, 2)
        return _fourier(ops.convert_to_tensor(grid, dtype=self.compute_dtype), self.gaussian)

    def call(self, coords: Any, labels: Any) -> tuple[Any, Any, Any]:
        encoded = _fourier((coords + 0.5) * (1.0 / self.image_size), self.gaussian)
        labels = labels[..., None]
        positive = ops.relu(labels)
        padding = positive - labels
        negative = 1.0 - positive - padding
        points = (encoded * (1.0 - padding) + padding * self.not_a_point_embed
                  + negative * self.point_embed_negative + positive * self.point_embed_positive)
        pad_token = ops.zeros_like(points[:, :1]) + self.not_a_point_embed
        sparse = ops.concatenate([points, pad_token], axis=1)
        return sparse, self.dense_pe(), ops.reshape(self.no_mask_embed, (1, 1, -1))


    def get_config(self) -> dict:
        return {**super().get_config(), "image_size": self.image_size, "embedding_size": self.embedding_size,
                "dim": self.dim}


class OutputTokens(keras.layers.Layer):
    """Prepends the mask decoder's learned output tokens to the prompt tokens:
    ``[obj_score_token, iou_token, mask_tokens (1 + 3)] + prompts``."""

    def __init__(self, num_mask_tokens: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.num_mask_tokens = int(num_mask_tokens)

    def build(self, input_shape: tuple) -> None:
        dim = int(input_shape[-1])
        init = keras.initializers.RandomNormal(stddev=1.0)
        self.obj_score_token = self.add_weight(shape=(1, dim), initializer=init, name="obj_score_token")
        self.iou_token = self.add_weight(shape=(1, dim), initializer=init, name="iou_token")
        self.mask_tokens = self.add_weight(shape=(self.num_mask_tokens, dim), initializer=init, name="mask_tokens")

    def call(self, prompts: Any) -> Any:
        tokens = ops.concatenate([self.obj_score_token, self.iou_token, self.mask_tokens], axis=0)
        tokens = ops.zeros_like(prompts[:, :1, :1]) + tokens[None]
        return ops.concatenate([tokens, prompts], axis=1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_mask_tokens": self.num_mask_tokens}


# -------------------------------------------------------------------------------------- two-way transformer
class DecoderAttention(keras.layers.Layer):
    """SAM's ``Attention``: q/k/v projections to ``embedding_dim / downsample_rate``, heads, output projection."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dim, self.num_heads = int(embedding_dim), int(num_heads)
        self.downsample_rate = int(downsample_rate)
        internal = self.embedding_dim // self.downsample_rate
        self.q_proj = keras.layers.Dense(internal, name="q_proj")
        self.k_proj = keras.layers.Dense(internal, name="k_proj")
        self.v_proj = keras.layers.Dense(internal, name="v_proj")
        self.out_proj = keras.layers.Dense(self.embedding_dim, name="out_proj")

    def build(self, q_shape: tuple, k_shape: tuple | None = None, v_shape: tuple | None = None) -> None:
        internal = self.embedding_dim // self.downsample_rate
        for layer in (self.q_proj, self.k_proj, self.v_proj):
            layer.build((None, None, self.embedding_dim))
        self.out_proj.build((None, None, internal))

    def call(self, q: Any, k: Any, v: Any) -> Any:
        return self.out_proj(attention(self.q_proj(q), self.k_proj(k), self.v_proj(v), self.num_heads))

    def get_config(self) -> dict:
        return {**super().get_config(), "embedding_dim": self.embedding_dim, "num_heads": self.num_heads,
                "downsample_rate": self.downsample_rate}


class TwoWayBlock(keras.layers.Layer):
    """SAM's ``TwoWayAttentionBlock``: token self-attention, tokens -> image cross-attention, token MLP (ReLU),
    image -> tokens cross-attention; post-norm after each. The first block skips the query PE in self-attention."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int, downsample_rate: int = 2,
                 skip_first_layer_pe: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.embedding_dim, self.num_heads, self.mlp_dim = int(embedding_dim), int(num_heads), int(mlp_dim)
        self.downsample_rate, self.skip_first_layer_pe = int(downsample_rate), bool(skip_first_layer_pe)
        dim, eps = self.embedding_dim, TRANSFORMER_NORM_EPS
        self.self_attn = DecoderAttention(dim, num_heads, 1, name="self_attn")
        self.cross_attn_token_to_image = DecoderAttention(dim, num_heads, downsample_rate,
                                                          name="cross_attn_token_to_image")
        self.cross_attn_image_to_token = DecoderAttention(dim, num_heads, downsample_rate,
                                                          name="cross_attn_image_to_token")
        self.mlp_lin1 = keras.layers.Dense(self.mlp_dim, name="mlp_layers_0")
        self.mlp_lin2 = keras.layers.Dense(dim, name="mlp_layers_1")
        self.norms = [LayerNorm(epsilon=eps, name=f"norm{i}") for i in range(1, 5)]

    def build(self, *shapes: tuple) -> None:
        dim = self.embedding_dim
        for attn in (self.self_attn, self.cross_attn_token_to_image, self.cross_attn_image_to_token):
            attn.build((None, None, dim))
        self.mlp_lin1.build((None, None, dim))
        self.mlp_lin2.build((None, None, self.mlp_dim))
        for norm in self.norms:
            norm.build((None, None, dim))

    def call(self, queries: Any, keys: Any, query_pe: Any, key_pe: Any) -> tuple[Any, Any]:
        norm1, norm2, norm3, norm4 = self.norms
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = norm3(queries + self.mlp_lin2(ops.relu(self.mlp_lin1(queries))))
        q, k = queries + query_pe, keys + key_pe
        keys = norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


    def get_config(self) -> dict:
        return {**super().get_config(), "embedding_dim": self.embedding_dim, "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim, "downsample_rate": self.downsample_rate,
                "skip_first_layer_pe": self.skip_first_layer_pe}


CUSTOM_OBJECTS: Mapping[str, type] = MappingProxyType({
    cls.__name__: cls for cls in (LayerNorm, HieraPositionEmbedding, HieraAttention, HieraBlock, AddEmbedding,
                                  PromptEncoder, OutputTokens, DecoderAttention, TwoWayBlock)})
"""The layers a saved SAM2 ``.keras`` model needs (``custom_objects`` of ``keras.models.load_model``)."""
