"""The key schema of the official ``sam2.1_hiera_tiny.pt`` state dict (names and shapes), written from the module
structure of ``facebookresearch/sam2`` (``SAM2Base`` with ``sam2.1_hiera_t.yaml``), independently of segzoo's
Keras code, and synthetic checkpoints in that schema for the tests.

Trunk widths per block follow ``Hiera.__init__``: the first block of a stage widens (``dim_mul=2``) and gets a
``proj`` shortcut. The video-memory modules get a representative set of keys with the official names (they are
ignored by prefix on import, so every key under those prefixes behaves the same).
"""

from __future__ import annotations

import numpy as np

TINY = {"embed_dim": 96, "num_heads": 1, "stages": (1, 2, 7, 2), "global_att_blocks": (5, 7, 9),
        "window_spec": (8, 4, 14, 7), "pos_embed_size": (7, 7)}


def trunk_blocks(cfg: dict = TINY) -> list[dict]:
    """Per block: dim, dim_out, heads, window (0 global), q_stride (bool), as ``Hiera.__init__`` assigns them."""
    stage_ends = list(np.cumsum(cfg["stages"]) - 1)
    q_pool_blocks = [e + 1 for e in stage_ends[:-1]][:3]
    out, embed, heads, cur = [], cfg["embed_dim"], cfg["num_heads"], 1
    for i in range(sum(cfg["stages"])):
        dim_out = embed
        window = cfg["window_spec"][cur - 1]
        if i in cfg["global_att_blocks"]:
            window = 0
        if i - 1 in stage_ends:
            dim_out, heads, cur = embed * 2, heads * 2, cur + 1
        out.append({"dim": embed, "dim_out": dim_out, "heads": heads, "window": window,
                    "q_stride": i in q_pool_blocks})
        embed = dim_out
    return out


def _linear(key: str, n_out: int, n_in: int) -> dict[str, tuple]:
    return {f"{key}.weight": (n_out, n_in), f"{key}.bias": (n_out,)}


def _conv(key: str, n_out: int, n_in: int, k: int) -> dict[str, tuple]:
    return {f"{key}.weight": (n_out, n_in, k, k), f"{key}.bias": (n_out,)}


def _norm(key: str, n: int) -> dict[str, tuple]:
    return {f"{key}.weight": (n,), f"{key}.bias": (n,)}


def _attn(key: str, dim: int, internal: int, kv_in: int | None = None) -> dict[str, tuple]:
    kv_in = kv_in or dim
    return {**_linear(f"{key}.q_proj", internal, dim), **_linear(f"{key}.k_proj", internal, kv_in),
            **_linear(f"{key}.v_proj", internal, kv_in), **_linear(f"{key}.out_proj", dim, internal)}


def _mlp(key: str, dims: list[int]) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        out.update(_linear(f"{key}.layers.{i}", b, a))
    return out


def image_encoder_keys(cfg: dict = TINY) -> dict[str, tuple]:
    """``image_encoder.*``: trunk and FPN neck."""
    c = cfg["embed_dim"]
    keys = {"image_encoder.trunk.pos_embed": (1, c, *cfg["pos_embed_size"]),
            "image_encoder.trunk.pos_embed_window": (1, c, cfg["window_spec"][0], cfg["window_spec"][0]),
            **_conv("image_encoder.trunk.patch_embed.proj", c, 3, 7)}
    for i, b in enumerate(trunk_blocks(cfg)):
        p = f"image_encoder.trunk.blocks.{i}"
        keys.update({**_norm(f"{p}.norm1", b["dim"]), **_linear(f"{p}.attn.qkv", 3 * b["dim_out"], b["dim"]),
                     **_linear(f"{p}.attn.proj", b["dim_out"], b["dim_out"]), **_norm(f"{p}.norm2", b["dim_out"]),
                     **_mlp(f"{p}.mlp", [b["dim_out"], 4 * b["dim_out"], b["dim_out"]])})
        if b["dim"] != b["dim_out"]:
            keys.update(_linear(f"{p}.proj", b["dim_out"], b["dim"]))
    for j, ch in enumerate([768, 384, 192, 96]):
        keys.update(_conv(f"image_encoder.neck.convs.{j}.conv", 256, ch, 1))
    return keys


def sam_heads_keys() -> dict[str, tuple]:
    """``sam_prompt_encoder.*`` and ``sam_mask_decoder.*`` (SAM2Base._build_sam_heads with the 2.1 config)."""
    pe = "sam_prompt_encoder"
    keys = {f"{pe}.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
            **{f"{pe}.point_embeddings.{i}.weight": (1, 256) for i in range(4)},
            f"{pe}.not_a_point_embed.weight": (1, 256), f"{pe}.no_mask_embed.weight": (1, 256),
            **_conv(f"{pe}.mask_downscaling.0", 4, 1, 2), **_norm(f"{pe}.mask_downscaling.1", 4),
            **_conv(f"{pe}.mask_downscaling.3", 16, 4, 2), **_norm(f"{pe}.mask_downscaling.4", 16),
            **_conv(f"{pe}.mask_downscaling.6", 256, 16, 1)}
    md = "sam_mask_decoder"
    keys.update({f"{md}.iou_token.weight": (1, 256), f"{md}.mask_tokens.weight": (4, 256),
                 f"{md}.obj_score_token.weight": (1, 256)})
    for i in range(2):
        p = f"{md}.transformer.layers.{i}"
        keys.update({**_attn(f"{p}.self_attn", 256, 256), **_attn(f"{p}.cross_attn_token_to_image", 256, 128),
                     **_attn(f"{p}.cross_attn_image_to_token", 256, 128), **_mlp(f"{p}.mlp", [256, 2048, 256]),
                     **{k: v for n in range(1, 5) for k, v in _norm(f"{p}.norm{n}", 256).items()}})
    keys.update({**_attn(f"{md}.transformer.final_attn_token_to_image", 256, 128),
                 **_norm(f"{md}.transformer.norm_final_attn", 256),
                 f"{md}.output_upscaling.0.weight": (256, 64, 2, 2), f"{md}.output_upscaling.0.bias": (64,),
                 **_norm(f"{md}.output_upscaling.1", 64),
                 f"{md}.output_upscaling.3.weight": (64, 32, 2, 2), f"{md}.output_upscaling.3.bias": (32,),
                 **_conv(f"{md}.conv_s0", 32, 256, 1), **_conv(f"{md}.conv_s1", 64, 256, 1),
                 **{k: v for t in range(4) for k, v in
                    _mlp(f"{md}.output_hypernetworks_mlps.{t}", [256, 256, 256, 32]).items()},
                 **_mlp(f"{md}.iou_prediction_head", [256, 256, 256, 4]),
                 **_mlp(f"{md}.pred_obj_score_head", [256, 256, 256, 1])})
    return keys


def video_memory_keys() -> dict[str, tuple]:
    """A representative set of the memory-attention, memory-encoder and object-pointer keys."""
    keys: dict[str, tuple] = {"maskmem_tpos_enc": (7, 1, 1, 64), "no_mem_embed": (1, 1, 256),
                              "no_mem_pos_enc": (1, 1, 256), "no_obj_ptr": (1, 256),
                              "no_obj_embed_spatial": (1, 64), **_conv("mask_downsample", 1, 1, 4),
                              **_mlp("obj_ptr_proj", [256, 256, 256, 256]),
                              **_linear("obj_ptr_tpos_proj", 64, 256), **_norm("memory_attention.norm", 256)}
    for i in range(4):
        p = f"memory_attention.layers.{i}"
        keys.update({**_attn(f"{p}.self_attn", 256, 256), **_attn(f"{p}.cross_attn_image", 256, 256, 64),
                     **_linear(f"{p}.linear1", 2048, 256), **_linear(f"{p}.linear2", 256, 2048),
                     **{k: v for n in range(1, 4) for k, v in _norm(f"{p}.norm{n}", 256).items()}})
    me = "memory_encoder"
    for j, (a, b) in enumerate([(1, 4), (4, 16), (16, 64), (64, 256)]):
        keys.update({**_conv(f"{me}.mask_downsampler.encoder.{3 * j}", b, a, 3),
                     **_norm(f"{me}.mask_downsampler.encoder.{3 * j + 1}", b)})
    keys.update({**_conv(f"{me}.mask_downsampler.encoder.12", 256, 256, 1), **_conv(f"{me}.pix_feat_proj", 256, 256, 1),
                 **_conv(f"{me}.out_proj", 64, 256, 1)})
    for j in range(2):
        p = f"{me}.fuser.layers.{j}"
        keys.update({f"{p}.dwconv.weight": (256, 1, 7, 7), f"{p}.dwconv.bias": (256,), **_norm(f"{p}.norm", 256),
                     **_linear(f"{p}.pwconv1", 1024, 256), **_linear(f"{p}.pwconv2", 256, 1024),
                     f"{p}.gamma": (256,)})
    return keys


def official_shapes() -> dict[str, tuple]:
    """Every key of the checkpoint's ``model`` state dict (memory modules: representative) with its shape."""
    return {**image_encoder_keys(), **sam_heads_keys(), **video_memory_keys()}


def synthetic_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 arrays in the official schema, scaled like trained weights so that activations stay O(1)
    through all blocks: linear/conv ~ N(0, 1/fan_in), norms ~ 1 + N(0, 0.1), biases and tokens ~ N(0, 0.1),
    the Fourier matrix ~ N(0, 1) as SAM initializes it."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for key, shape in official_shapes().items():
        if key.endswith("positional_encoding_gaussian_matrix"):
            value = rng.normal(0.0, 1.0, shape)
        elif len(shape) >= 2 and key.endswith(".weight") and "embed" not in key and "token" not in key:
            fan_in = int(np.prod(shape[1:])) if "output_upscaling" not in key else shape[0]
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        elif len(shape) == 1 and key.endswith(".weight"):
            value = 1.0 + rng.normal(0.0, 0.1, shape)
        else:
            value = rng.normal(0.0, 0.1 if not key.endswith("pos_embed") else 0.5, shape)
        out[key] = value.astype(np.float32)
    return out
