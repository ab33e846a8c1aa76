"""SAM2.1 as two Keras models, split as Qualcomm's AI Hub splits it (no video memory):

**encoder** ``build_encoder(params)``: input ``image`` ``[1, S, S, 3]``, RGB normalized as SAM2 does
(``(pixel / 255 - mean) / std``, ImageNet mean/std; see :mod:`segzoo.tasks.promptable_segmentation.preprocess`).
Graph: patch embedding (7x7 conv, stride 4, padding 3) -> windowed position embedding -> 12 Hiera blocks ->
FPN neck (1x1 lateral convs, nearest top-down on levels 2 and 3, level 3 dropped: ``scalp=1``) -> the mask
decoder's high-resolution projections ``conv_s0``/``conv_s1`` and the ``no_mem_embed`` the image predictor adds.
Outputs (NHWC): ``image_embeddings`` ``[1, S/16, S/16, 256]``, ``high_res_features_s0`` ``[1, S/4, S/4, 32]``,
``high_res_features_s1`` ``[1, S/8, S/8, 64]`` (at 1024: 64, 256 and 128).

**decoder** ``build_decoder(params)``: inputs ``image_embeddings``, ``high_res_features_s0``,
``high_res_features_s1`` (as above), ``point_coords`` ``[1, N, 2]`` (x, y in input pixels of the ``S x S`` model
image) and ``point_labels`` ``[1, N]`` (float: 1 positive, 0 negative, -1 padding). Graph: prompt encoder ->
two-way transformer (2 blocks + final token-to-image attention) -> 4x upscaling with the high-resolution features
-> hypernetwork MLP x upscaled features. Outputs: ``masks`` ``[1, S/4, S/4, M]`` **NHWC** mask logits (M = 1, the
single-mask output of ``multimask_output=False``; 3 with ``params.multimask_output``), ``iou`` ``[1, M]`` (the
sigmoid IoU estimate) and ``object_score_logits`` ``[1, 1]`` (SAM2's object-presence logit). The masks are upsampled
to the image on the host. SAM2's optional ``dynamic_multimask_via_stability`` fallback (a post-processing switch of
``build_sam2``) is not part of the graph, as in Qualcomm's decoder.

``build_sam2(params)`` chains both (inputs ``image``, ``point_coords``, ``point_labels``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from segzoo.models.sam2.params import Sam2Params

if TYPE_CHECKING:  # pragma: no cover
    import keras

ENCODER_OUTPUTS: tuple[str, ...] = ("image_embeddings", "high_res_features_s0", "high_res_features_s1")
DECODER_INPUTS: tuple[str, ...] = (*ENCODER_OUTPUTS, "point_coords", "point_labels")
DECODER_OUTPUTS: tuple[str, ...] = ("masks", "iou", "object_score_logits")


def _checked(params: Sam2Params) -> Sam2Params:
    from segzoo.errors import ModelError

    problems = params.check()
    if problems:
        raise ModelError("sam2: " + "; ".join(f"training.model.{p}" for p in problems))
    return params


# ------------------------------------------------------------------------------------------------ encoder
def build_encoder(params: Sam2Params) -> "keras.Model":
    """The image encoder (see the module docstring); ModelError for invalid params."""
    import keras

    from segzoo.models.sam2.layers import AddEmbedding, HieraBlock, HieraPositionEmbedding

    params = _checked(params)
    spec, size = params.spec, params.image_size
    image = keras.Input((size, size, 3), name="image")
    x = keras.layers.ZeroPadding2D(3, name="trunk_patch_embed_pad")(image)
    x = keras.layers.Conv2D(spec.embed_dim, 7, strides=4, name="trunk_patch_embed_proj")(x)
    x = HieraPositionEmbedding(spec.pos_embed_size, spec.window_spec[0], name="trunk_pos_embed")(x)
    stages = []
    for i, block in enumerate(spec.blocks()):
        x = HieraBlock(block.dim, block.dim_out, block.num_heads, block.window_size, block.q_pool,
                       spec.mlp_ratio, name=f"trunk_blocks_{i}")(x)
        if i in spec.stage_ends:
            stages.append(x)
    levels = _fpn(stages, spec.d_model, spec.fpn_top_down_levels)[: len(stages) - spec.scalp]
    s0 = keras.layers.Conv2D(spec.d_model // 8, 1, name="conv_s0")(levels[0])
    s1 = keras.layers.Conv2D(spec.d_model // 4, 1, name="conv_s1")(levels[1])
    embeddings = AddEmbedding(name="no_mem_embed")(levels[-1])
    outputs = dict(zip(ENCODER_OUTPUTS, (embeddings, s0, s1), strict=True))
    return keras.Model(image, outputs, name="sam2_encoder")


def _fpn(stages: list[Any], d_model: int, top_down_levels: tuple[int, ...]) -> list[Any]:
    """SAM2's ``FpnNeck`` without position encodings: lateral 1x1 convs (``neck_convs_0`` on the coarsest level),
    coarse-to-fine, adding the nearest-2x-upsampled coarser output on the ``top_down_levels``."""
    import keras

    n = len(stages) - 1
    out: list[Any] = [None] * len(stages)
    previous = None
    for i in range(n, -1, -1):
        lateral = keras.layers.Conv2D(d_model, 1, name=f"neck_convs_{n - i}")(stages[i])
        if i in top_down_levels and previous is not None:
            top_down = keras.layers.UpSampling2D(2, interpolation="nearest", name=f"neck_top_down_{i}")(previous)
            lateral = keras.layers.Add(name=f"neck_fuse_{i}")([lateral, top_down])
        previous = out[i] = lateral
    return out


# ------------------------------------------------------------------------------------------------ decoder
def _mlp(x: Any, hidden: int, out: int, depth: int, name: str, sigmoid: bool = False) -> Any:
    """SAM's ``MLP``: ``depth`` Dense layers (``{name}_layers_{i}``), ReLU between them."""
    import keras

    for i in range(depth):
        last = i == depth - 1
        x = keras.layers.Dense(out if last else hidden, activation=None if last else "relu",
                               name=f"{name}_layers_{i}")(x)
    return keras.activations.sigmoid(x) if sigmoid else x


def build_decoder(params: Sam2Params) -> "keras.Model":
    """The prompt encoder + mask decoder (see the module docstring); ModelError for invalid params."""
    import keras
    from keras import ops

    from segzoo.models.sam2.layers import DecoderAttention, LayerNorm, OutputTokens, PromptEncoder, TwoWayBlock, gelu

    params = _checked(params)
    spec, dim = params.spec, params.spec.d_model
    e, m = params.embedding_size, params.mask_size
    inputs = {
        "image_embeddings": keras.Input((e, e, dim), name="image_embeddings"),
        "high_res_features_s0": keras.Input((m, m, dim // 8), name="high_res_features_s0"),
        "high_res_features_s1": keras.Input((2 * e, 2 * e, dim // 4), name="high_res_features_s1"),
        "point_coords": keras.Input((params.num_points, 2), name="point_coords"),
        "point_labels": keras.Input((params.num_points,), name="point_labels"),
    }
    sparse, dense_pe, no_mask = PromptEncoder(params.image_size, e, dim, name="prompt_encoder")(
        inputs["point_coords"], inputs["point_labels"])
    num_mask_tokens = spec.num_multimask_outputs + 1
    tokens = OutputTokens(num_mask_tokens, name="output_tokens")(sparse)
    keys = ops.reshape(inputs["image_embeddings"] + no_mask[:, None], (-1, e * e, dim))

    queries = tokens
    for i in range(spec.decoder_depth):
        queries, keys = TwoWayBlock(dim, spec.decoder_heads, spec.decoder_mlp_dim, spec.attention_downsample_rate,
                                    skip_first_layer_pe=i == 0, name=f"transformer_layers_{i}")(
            queries, keys, tokens, dense_pe)
    final = DecoderAttention(dim, spec.decoder_heads, spec.attention_downsample_rate,
                             name="transformer_final_attn_token_to_image")
    queries = queries + final(queries + tokens, keys + dense_pe, keys)
    hs = LayerNorm(epsilon=1e-5, name="transformer_norm_final_attn")(queries)

    src = ops.reshape(keys, (-1, e, e, dim))
    up = keras.layers.Conv2DTranspose(dim // 4, 2, strides=2, name="output_upscaling_0")(src)
    up = LayerNorm(epsilon=1e-6, name="output_upscaling_1")(
        up + inputs["high_res_features_s1"])
    up = keras.layers.Conv2DTranspose(dim // 8, 2, strides=2, name="output_upscaling_3")(gelu(up))
    up = gelu(up + inputs["high_res_features_s0"])

    selected = range(1, num_mask_tokens) if params.multimask_output else range(1)
    hyper = [_mlp(hs[:, 2 + t], dim, dim // 8, 3, f"output_hypernetworks_mlps_{t}")[:, None] for t in selected]
    hyper = hyper[0] if len(hyper) == 1 else ops.concatenate(hyper, axis=1)
    masks = ops.matmul(ops.reshape(up, (-1, m * m, dim // 8)), ops.transpose(hyper, (0, 2, 1)))
    masks = ops.reshape(masks, (-1, m, m, len(selected)))

    iou = _mlp(hs[:, 1], 256, num_mask_tokens, 3, "iou_prediction_head", sigmoid=True)
    iou = iou[:, 1:] if params.multimask_output else iou[:, :1]
    obj = _mlp(hs[:, 0], dim, 1, 3, "pred_obj_score_head")
    outputs = {"masks": masks, "iou": iou, "object_score_logits": obj}
    return keras.Model(inputs, outputs, name="sam2_decoder")


# ------------------------------------------------------------------------------------------ both together
def build_sam2(params: Sam2Params, num_classes: int | None = None) -> "keras.Model":
    """Encoder and decoder chained: inputs ``image``, ``point_coords``, ``point_labels``; the decoder's outputs.
    ``num_classes`` is not used (promptable segmentation has no classes); it is the family builder signature."""
    import keras

    encoder, decoder = build_encoder(params), build_decoder(params)
    size = params.image_size
    image = keras.Input((size, size, 3), name="image")
    coords = keras.Input((params.num_points, 2), name="point_coords")
    labels = keras.Input((params.num_points,), name="point_labels")
    features = encoder(image)
    outputs = decoder({**features, "point_coords": coords, "point_labels": labels})
    return keras.Model({"image": image, "point_coords": coords, "point_labels": labels}, outputs, name="sam2")
