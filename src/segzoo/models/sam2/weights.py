"""Import of the official SAM2.1 checkpoint (``sam2.1_hiera_tiny.pt``: a torch zip holding ``{"model": state_dict}``)
into the Keras encoder and decoder, key by key, every Keras weight filled exactly once.

The mapping (:func:`encoder_plan`, :func:`decoder_plan`) names, for every Keras variable, the official key and the
layout change: ``nn.Linear`` ``[out, in]`` -> Dense ``[in, out]``; ``nn.Conv2d`` ``[out, in, kh, kw]`` ->
``[kh, kw, in, out]``; ``nn.ConvTranspose2d`` ``[in, out, kh, kw]`` -> ``[kh, kw, out, in]``; ``pos_embed``
``[1, C, h, w]`` -> ``[h, w, C]``; embeddings ``[1, C]`` / ``[1, 1, C]`` -> ``[C]``.

Keys of the file that the image-plus-points model does not use are ignored **by prefix**, each group on purpose:

- video memory (:data:`VIDEO_MEMORY_PREFIXES`): ``memory_attention.``, ``memory_encoder.``, ``maskmem_tpos_enc``,
  ``no_mem_pos_enc``, ``no_obj_ptr``, ``no_obj_embed_spatial``, ``obj_ptr_proj.``, ``obj_ptr_tpos_proj.``,
  ``mask_downsample.``;
- prompts this port does not take (:data:`UNUSED_PROMPT_PREFIXES`): box corners
  ``sam_prompt_encoder.point_embeddings.2.``/``.3.`` and mask prompts ``sam_prompt_encoder.mask_downscaling.``;
- the hypernetwork MLPs of the masks not output: ``sam_mask_decoder.output_hypernetworks_mlps.1.``-``.3.`` with
  the single-mask output (``multimask_output=False``), ``.0.`` with the multimask output.

Any other key of the file that nothing uses, any official key the model needs but the file lacks, and any shape
mismatch is a ModelError naming the key(s) and the file. The checkpoint is read by :mod:`segzoo.checkpoints`
(restricted unpickler: arrays only, no code from the file runs, no torch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ModelError
from segzoo.models.sam2.params import Sam2Params

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)

VIDEO_MEMORY_PREFIXES: tuple[str, ...] = (
    "memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
    "no_obj_embed_spatial", "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.",
)
UNUSED_PROMPT_PREFIXES: tuple[str, ...] = (
    "sam_prompt_encoder.point_embeddings.2.", "sam_prompt_encoder.point_embeddings.3.",
    "sam_prompt_encoder.mask_downscaling.",
)
TRUNK, NECK, DECODER, PROMPT = ("image_encoder.trunk.", "image_encoder.neck.", "sam_mask_decoder.",
                                "sam_prompt_encoder.")
Transform = Callable[[np.ndarray], np.ndarray]
_MAX_LISTED = 8


# -------------------------------------------------------------------------------------------- transforms
def linear(w: np.ndarray) -> np.ndarray:
    """``nn.Linear`` weight ``[out, in]`` -> Dense kernel ``[in, out]``."""
    return w.T


def conv(w: np.ndarray) -> np.ndarray:
    """``nn.Conv2d`` weight ``[out, in, kh, kw]`` -> Conv2D kernel ``[kh, kw, in, out]``."""
    return w.transpose(2, 3, 1, 0)


def conv_transpose(w: np.ndarray) -> np.ndarray:
    """``nn.ConvTranspose2d`` weight ``[in, out, kh, kw]`` -> Conv2DTranspose kernel ``[kh, kw, out, in]``."""
    return w.transpose(2, 3, 1, 0)


def channels_last(w: np.ndarray) -> np.ndarray:
    """``[1, C, h, w]`` parameter -> ``[h, w, C]``."""
    return w[0].transpose(1, 2, 0)


def flat(w: np.ndarray) -> np.ndarray:
    """``[1, C]`` or ``[1, 1, C]`` embedding -> ``[C]``."""
    return w.reshape(-1)


def same(w: np.ndarray) -> np.ndarray:
    """Unchanged layout."""
    return w


@dataclass(frozen=True)
class Planned:
    """One Keras variable, the official key that fills it and the layout change."""

    variable: Any
    key: str
    transform: Transform = same


# ------------------------------------------------------------------------------------------------- plans
def _dense(layer: Any, key: str) -> list[Planned]:
    return [Planned(layer.kernel, f"{key}.weight", linear), Planned(layer.bias, f"{key}.bias")]


def _conv(layer: Any, key: str, transform: Transform = conv) -> list[Planned]:
    return [Planned(layer.kernel, f"{key}.weight", transform), Planned(layer.bias, f"{key}.bias")]


def _norm(layer: Any, key: str) -> list[Planned]:
    return [Planned(layer.gamma, f"{key}.weight"), Planned(layer.beta, f"{key}.bias")]


def encoder_plan(encoder: "keras.Model", params: Sam2Params) -> list[Planned]:
    """Every weight of the encoder with its official key."""
    spec = params.spec
    pos = encoder.get_layer("trunk_pos_embed")
    plan = [Planned(pos.pos_embed, f"{TRUNK}pos_embed", channels_last),
            Planned(pos.pos_embed_window, f"{TRUNK}pos_embed_window", channels_last),
            *_conv(encoder.get_layer("trunk_patch_embed_proj"), f"{TRUNK}patch_embed.proj")]
    for i in range(len(spec.blocks())):
        block, key = encoder.get_layer(f"trunk_blocks_{i}"), f"{TRUNK}blocks.{i}"
        plan += [*_norm(block.norm1, f"{key}.norm1"), *_dense(block.attn.qkv, f"{key}.attn.qkv"),
                 *_dense(block.attn.proj, f"{key}.attn.proj"), *_norm(block.norm2, f"{key}.norm2"),
                 *_dense(block.mlp_fc1, f"{key}.mlp.layers.0"), *_dense(block.mlp_fc2, f"{key}.mlp.layers.1")]
        if block.proj is not None:
            plan += _dense(block.proj, f"{key}.proj")
    for j in range(len(spec.stages)):
        plan += _conv(encoder.get_layer(f"neck_convs_{j}"), f"{NECK}convs.{j}.conv")
    plan += [*_conv(encoder.get_layer("conv_s0"), f"{DECODER}conv_s0"),
             *_conv(encoder.get_layer("conv_s1"), f"{DECODER}conv_s1"),
             Planned(encoder.get_layer("no_mem_embed").embedding, "no_mem_embed", flat)]
    return plan


def _attention(layer: Any, key: str) -> list[Planned]:
    return [p for name in ("q_proj", "k_proj", "v_proj", "out_proj")
            for p in _dense(getattr(layer, name), f"{key}.{name}")]


def _mlp(model: "keras.Model", name: str, key: str, depth: int = 3) -> list[Planned]:
    return [p for i in range(depth) for p in _dense(model.get_layer(f"{name}_layers_{i}"), f"{key}.layers.{i}")]


def _mask_tokens_used(params: Sam2Params) -> list[int]:
    return list(range(1, params.spec.num_multimask_outputs + 1)) if params.multimask_output else [0]


def decoder_plan(decoder: "keras.Model", params: Sam2Params) -> list[Planned]:
    """Every weight of the decoder with its official key."""
    prompt, tokens = decoder.get_layer("prompt_encoder"), decoder.get_layer("output_tokens")
    plan = [Planned(prompt.gaussian, f"{PROMPT}pe_layer.positional_encoding_gaussian_matrix"),
            Planned(prompt.point_embed_negative, f"{PROMPT}point_embeddings.0.weight", flat),
            Planned(prompt.point_embed_positive, f"{PROMPT}point_embeddings.1.weight", flat),
            Planned(prompt.not_a_point_embed, f"{PROMPT}not_a_point_embed.weight", flat),
            Planned(prompt.no_mask_embed, f"{PROMPT}no_mask_embed.weight", flat),
            Planned(tokens.obj_score_token, f"{DECODER}obj_score_token.weight"),
            Planned(tokens.iou_token, f"{DECODER}iou_token.weight"),
            Planned(tokens.mask_tokens, f"{DECODER}mask_tokens.weight")]
    for i in range(params.spec.decoder_depth):
        block, key = decoder.get_layer(f"transformer_layers_{i}"), f"{DECODER}transformer.layers.{i}"
        plan += [*_attention(block.self_attn, f"{key}.self_attn"),
                 *_attention(block.cross_attn_token_to_image, f"{key}.cross_attn_token_to_image"),
                 *_attention(block.cross_attn_image_to_token, f"{key}.cross_attn_image_to_token"),
                 *_dense(block.mlp_lin1, f"{key}.mlp.layers.0"), *_dense(block.mlp_lin2, f"{key}.mlp.layers.1")]
        plan += [p for n, norm in enumerate(block.norms, start=1) for p in _norm(norm, f"{key}.norm{n}")]
    plan += [*_attention(decoder.get_layer("transformer_final_attn_token_to_image"),
                         f"{DECODER}transformer.final_attn_token_to_image"),
             *_norm(decoder.get_layer("transformer_norm_final_attn"), f"{DECODER}transformer.norm_final_attn"),
             *_conv(decoder.get_layer("output_upscaling_0"), f"{DECODER}output_upscaling.0", conv_transpose),
             *_norm(decoder.get_layer("output_upscaling_1"), f"{DECODER}output_upscaling.1"),
             *_conv(decoder.get_layer("output_upscaling_3"), f"{DECODER}output_upscaling.3", conv_transpose)]
    for t in _mask_tokens_used(params):
        plan += _mlp(decoder, f"output_hypernetworks_mlps_{t}", f"{DECODER}output_hypernetworks_mlps.{t}")
    plan += [*_mlp(decoder, "iou_prediction_head", f"{DECODER}iou_prediction_head"),
             *_mlp(decoder, "pred_obj_score_head", f"{DECODER}pred_obj_score_head")]
    return plan


def ignored_prefixes(params: Sam2Params) -> tuple[str, ...]:
    """Prefixes of official keys this model does not use (see the module docstring)."""
    used = _mask_tokens_used(params)
    unused_heads = tuple(f"{DECODER}output_hypernetworks_mlps.{t}." for t in
                         range(params.spec.num_multimask_outputs + 1) if t not in used)
    return VIDEO_MEMORY_PREFIXES + UNUSED_PROMPT_PREFIXES + unused_heads


# -------------------------------------------------------------------------------------------- assignment
def _listed(items: list[str]) -> str:
    more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _problems(plan: list[Planned], state_dict: Mapping[str, np.ndarray], models: list[Any],
              ignore: tuple[str, ...]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every problem of applying ``plan`` to ``state_dict``, and the transformed arrays by variable path."""
    problems, arrays, planned = [], {}, {}
    missing = [p.key for p in plan if p.key not in state_dict]
    if missing:
        problems.append(f"official keys missing from the file: {_listed(missing)}")
    for p in plan:
        path = p.variable.path
        if path in planned:
            problems.append(f"Keras weight {path} planned twice ({planned[path]} and {p.key})")
        planned[path] = p.key
        if p.key not in state_dict:
            continue
        value = np.asarray(p.transform(np.asarray(state_dict[p.key])), dtype=np.float32)
        if tuple(value.shape) != tuple(p.variable.shape):
            problems.append(f"{p.key}: shape {list(np.shape(state_dict[p.key]))} in the file, the Keras weight "
                            f"{path} needs {list(p.variable.shape)} after layout change")
        arrays[path] = value
    unplanned = [w.path for m in models for w in m.weights if w.path not in planned]
    if unplanned:
        problems.append(f"Keras weights no official key fills: {_listed(unplanned)}")
    used = {p.key for p in plan}
    extra = sorted(k for k in state_dict if k not in used and not k.startswith(ignore))
    if extra:
        problems.append(f"keys in the file that nothing uses: {_listed(extra)}")
    return problems, arrays


def assign_state_dict(state_dict: Mapping[str, np.ndarray], encoder: "keras.Model", decoder: "keras.Model",
                      params: Sam2Params, *, source: str = "state dict") -> dict[str, int]:
    """Fill both models from an official flat state dict; ModelError (naming ``source`` and every faulty key)
    before anything is written if any key is missing, unused or mis-shaped. Returns counts for the log."""
    plan = encoder_plan(encoder, params) + decoder_plan(decoder, params)
    ignore = ignored_prefixes(params)
    problems, arrays = _problems(plan, state_dict, [encoder, decoder], ignore)
    if problems:
        raise ModelError(f"{source}: cannot load SAM2 ({params.variant}) weights: " + "; ".join(problems)
                         + ". Use the official sam2.1_hiera_tiny.pt with training.model.variant=hiera_tiny.")
    for p in plan:
        p.variable.assign(arrays[p.variable.path])
    ignored = sum(1 for k in state_dict if k.startswith(ignore))
    counts = {"assigned": len(plan), "ignored": ignored, "file_keys": len(state_dict)}
    log.info("%s: %d weights assigned, %d keys ignored (video memory, box/mask prompts, unused mask heads)",
             source, counts["assigned"], counts["ignored"])
    return counts


def import_checkpoint(path: str | Path, params: Sam2Params | None = None, *,
                      encoder: "keras.Model | None" = None,
                      decoder: "keras.Model | None" = None) -> tuple["keras.Model", "keras.Model"]:
    """Read ``sam2.1_hiera_tiny.pt`` and return ``(encoder, decoder)`` with its weights (built from ``params``
    unless given). ModelError for an unreadable file or keys that do not match."""
    from segzoo.checkpoints import read_state_dict
    from segzoo.models.sam2.model import build_decoder, build_encoder

    params = params or Sam2Params()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: SAM2 checkpoint not found; download sam2.1_hiera_tiny.pt from "
                         f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt")
    state_dict = read_state_dict(path, prefixes=("model",))
    encoder = encoder if encoder is not None else build_encoder(params)
    decoder = decoder if decoder is not None else build_decoder(params)
    assign_state_dict(state_dict, encoder, decoder, params, source=str(path))
    return encoder, decoder
