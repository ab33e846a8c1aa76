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
mismatch is a ModelError naming the key(s) and the file (:func:`segzoo.checkpoints.assign_weights`: nothing is
written unless every key fits). The checkpoint is read by :func:`segzoo.checkpoints.read_state_dict` (restricted
unpickler: arrays only, no code from the file runs, no torch).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.checkpoints import (
    AssignmentReport,
    WeightPlan,
    assign_weights,
    conv_oihw_to_hwio,
    linear_oi_to_io,
    read_state_dict,
    transpose_conv_iohw_to_hwoi,
)
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
ENCODER_NAME, DECODER_NAME = "sam2_encoder", "sam2_decoder"


# -------------------------------------------------------------------------------------------- transforms
def channels_last(w: np.ndarray) -> np.ndarray:
    """``[1, C, h, w]`` parameter -> ``[h, w, C]``."""
    return w[0].transpose(1, 2, 0)


def flat(w: np.ndarray) -> np.ndarray:
    """``[1, C]`` or ``[1, 1, C]`` embedding -> ``[C]``."""
    return w.reshape(-1)


# ------------------------------------------------------------------------------------------------- plans
def _dense(plan: WeightPlan, layer: Any, key: str) -> None:
    plan.add(layer.kernel, f"{key}.weight", linear_oi_to_io).add(layer.bias, f"{key}.bias")


def _conv(plan: WeightPlan, layer: Any, key: str, transform: Any = conv_oihw_to_hwio) -> None:
    plan.add(layer.kernel, f"{key}.weight", transform).add(layer.bias, f"{key}.bias")


def _norm(plan: WeightPlan, layer: Any, key: str) -> None:
    plan.add(layer.gamma, f"{key}.weight").add(layer.beta, f"{key}.bias")


def encoder_plan(encoder: "keras.Model", params: Sam2Params, plan: WeightPlan | None = None) -> WeightPlan:
    """Every weight of the encoder with its official key."""
    plan = plan if plan is not None else WeightPlan()
    spec = params.spec
    pos = encoder.get_layer("trunk_pos_embed")
    plan.add(pos.pos_embed, f"{TRUNK}pos_embed", channels_last)
    plan.add(pos.pos_embed_window, f"{TRUNK}pos_embed_window", channels_last)
    _conv(plan, encoder.get_layer("trunk_patch_embed_proj"), f"{TRUNK}patch_embed.proj")
    for i in range(len(spec.blocks())):
        block, key = encoder.get_layer(f"trunk_blocks_{i}"), f"{TRUNK}blocks.{i}"
        _norm(plan, block.norm1, f"{key}.norm1")
        _dense(plan, block.attn.qkv, f"{key}.attn.qkv")
        _dense(plan, block.attn.proj, f"{key}.attn.proj")
        _norm(plan, block.norm2, f"{key}.norm2")
        _dense(plan, block.mlp_fc1, f"{key}.mlp.layers.0")
        _dense(plan, block.mlp_fc2, f"{key}.mlp.layers.1")
        if block.proj is not None:
            _dense(plan, block.proj, f"{key}.proj")
    for j in range(len(spec.stages)):
        _conv(plan, encoder.get_layer(f"neck_convs_{j}"), f"{NECK}convs.{j}.conv")
    _conv(plan, encoder.get_layer("conv_s0"), f"{DECODER}conv_s0")
    _conv(plan, encoder.get_layer("conv_s1"), f"{DECODER}conv_s1")
    plan.add(encoder.get_layer("no_mem_embed").embedding, "no_mem_embed", flat)
    return plan


def _attention(plan: WeightPlan, layer: Any, key: str) -> None:
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        _dense(plan, getattr(layer, name), f"{key}.{name}")


def _mlp(plan: WeightPlan, model: "keras.Model", name: str, key: str, depth: int = 3) -> None:
    for i in range(depth):
        _dense(plan, model.get_layer(f"{name}_layers_{i}"), f"{key}.layers.{i}")


def _mask_tokens_used(params: Sam2Params) -> list[int]:
    return list(range(1, params.spec.num_multimask_outputs + 1)) if params.multimask_output else [0]


def decoder_plan(decoder: "keras.Model", params: Sam2Params, plan: WeightPlan | None = None) -> WeightPlan:
    """Every weight of the decoder with its official key."""
    plan = plan if plan is not None else WeightPlan()
    prompt, tokens = decoder.get_layer("prompt_encoder"), decoder.get_layer("output_tokens")
    plan.add(prompt.gaussian, f"{PROMPT}pe_layer.positional_encoding_gaussian_matrix")
    plan.add(prompt.point_embed_negative, f"{PROMPT}point_embeddings.0.weight", flat)
    plan.add(prompt.point_embed_positive, f"{PROMPT}point_embeddings.1.weight", flat)
    plan.add(prompt.not_a_point_embed, f"{PROMPT}not_a_point_embed.weight", flat)
    plan.add(prompt.no_mask_embed, f"{PROMPT}no_mask_embed.weight", flat)
    plan.add(tokens.obj_score_token, f"{DECODER}obj_score_token.weight")
    plan.add(tokens.iou_token, f"{DECODER}iou_token.weight")
    plan.add(tokens.mask_tokens, f"{DECODER}mask_tokens.weight")
    for i in range(params.spec.decoder_depth):
        block, key = decoder.get_layer(f"transformer_layers_{i}"), f"{DECODER}transformer.layers.{i}"
        for name in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token"):
            _attention(plan, getattr(block, name), f"{key}.{name}")
        _dense(plan, block.mlp_lin1, f"{key}.mlp.layers.0")
        _dense(plan, block.mlp_lin2, f"{key}.mlp.layers.1")
        for n, norm in enumerate(block.norms, start=1):
            _norm(plan, norm, f"{key}.norm{n}")
    _attention(plan, decoder.get_layer("transformer_final_attn_token_to_image"),
               f"{DECODER}transformer.final_attn_token_to_image")
    _norm(plan, decoder.get_layer("transformer_norm_final_attn"), f"{DECODER}transformer.norm_final_attn")
    _conv(plan, decoder.get_layer("output_upscaling_0"), f"{DECODER}output_upscaling.0", transpose_conv_iohw_to_hwoi)
    _norm(plan, decoder.get_layer("output_upscaling_1"), f"{DECODER}output_upscaling.1")
    _conv(plan, decoder.get_layer("output_upscaling_3"), f"{DECODER}output_upscaling.3", transpose_conv_iohw_to_hwoi)
    for t in _mask_tokens_used(params):
        _mlp(plan, decoder, f"output_hypernetworks_mlps_{t}", f"{DECODER}output_hypernetworks_mlps.{t}")
    _mlp(plan, decoder, "iou_prediction_head", f"{DECODER}iou_prediction_head")
    _mlp(plan, decoder, "pred_obj_score_head", f"{DECODER}pred_obj_score_head")
    return plan


def ignored_prefixes(params: Sam2Params) -> tuple[str, ...]:
    """Prefixes of official keys this model does not use (see the module docstring)."""
    used = _mask_tokens_used(params)
    unused_heads = tuple(f"{DECODER}output_hypernetworks_mlps.{t}." for t in
                         range(params.spec.num_multimask_outputs + 1) if t not in used)
    return VIDEO_MEMORY_PREFIXES + UNUSED_PROMPT_PREFIXES + unused_heads


# -------------------------------------------------------------------------------------------- assignment
def assign_state_dict(state_dict: Mapping[str, np.ndarray], encoder: "keras.Model", decoder: "keras.Model",
                      params: Sam2Params, *, source: str = "state dict") -> AssignmentReport:
    """Fill both models from an official flat state dict. Keys under :func:`ignored_prefixes` are set aside
    first; everything else goes through :func:`segzoo.checkpoints.assign_weights` (ModelError naming ``source``
    and every missing, unused or mis-shaped key before anything is written)."""
    ignore = ignored_prefixes(params)
    kept = {k: v for k, v in state_dict.items() if not k.startswith(ignore)}
    plan = decoder_plan(decoder, params, encoder_plan(encoder, params))
    both = SimpleNamespace(weights=[*encoder.weights, *decoder.weights])
    try:
        report = assign_weights(plan, kept, source=source, model=both)
    except ModelError as exc:
        raise ModelError(f"{exc}\nUse the official sam2.1_hiera_tiny.pt with training.model.variant=hiera_tiny "
                         f"(ignored by prefix: {', '.join(ignore)}).") from None
    ignored = tuple(k for k in state_dict if k.startswith(ignore))
    log.info("%s: %d SAM2 weights assigned, %d keys ignored (video memory, box/mask prompts, unused mask heads)",
             source, report.assigned, len(ignored))
    return AssignmentReport(report.assigned, ignored)


def load_checkpoint(path: str | Path, encoder: "keras.Model", decoder: "keras.Model",
                    params: Sam2Params) -> AssignmentReport:
    """Read ``sam2.1_hiera_tiny.pt`` (``{"model": state_dict}``) into the encoder and decoder."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: SAM2 checkpoint not found; download sam2.1_hiera_tiny.pt from "
                         f"https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt")
    return assign_state_dict(read_state_dict(path, prefixes=("model",)), encoder, decoder, params, source=str(path))


def import_checkpoint(model: "keras.Model", path: str | Path, params: Sam2Params) -> None:
    """The family's importer: fill the chained model of :func:`~segzoo.models.sam2.model.build_sam2` (its
    ``sam2_encoder`` and ``sam2_decoder`` submodels) from the checkpoint at ``path``."""
    load_checkpoint(path, model.get_layer(ENCODER_NAME), model.get_layer(DECODER_NAME), params)
