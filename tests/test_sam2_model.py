"""SAM2.1 hiera-tiny in Keras against an independent NumPy forward of the official semantics, block by block and end
to end, with a synthetic checkpoint in the official key schema; weight import errors; parameter counts."""

from __future__ import annotations

import numpy as np
import pytest

from reference import sam2_numpy as ref
from reference.sam2_schema import TINY, image_encoder_keys, sam_heads_keys, synthetic_state_dict, trunk_blocks
from segzoo.errors import ModelError
from segzoo.models.sam2 import FAMILY
from segzoo.models.sam2.params import Sam2Params

SIZE = 128  # stage maps 32, 16, 8, 4: stage 3 (8x8) pads to one 14x14 window, stage 4 (4x4) to one 7x7 window


def assert_close(actual, expected, what: str) -> float:
    """Max |difference| <= 1e-4 of the reference output's range; returns the relative error."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(expected.max() - expected.min())
    err = float(np.abs(actual - expected).max())
    assert scale > 0, f"{what}: constant reference output"
    assert err <= 1e-4 * scale, f"{what}: max |diff| {err:.3g} > 1e-4 x range {scale:.3g}"
    return err / scale


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    from reference.sam2_schema import official_shapes

    sd = synthetic_state_dict(seed=0)
    assert set(sd) == set(official_shapes())
    return sd


@pytest.fixture(scope="module")
def params() -> Sam2Params:
    return Sam2Params(input_shape=[SIZE, SIZE, 3], num_points=3)


@pytest.fixture(scope="module")
def models(params, state_dict):
    from segzoo.models.sam2.model import build_decoder, build_encoder
    from segzoo.models.sam2.weights import assign_state_dict

    encoder, decoder = build_encoder(params), build_decoder(params)
    report = assign_state_dict(state_dict, encoder, decoder, params, source="synthetic.pt")
    assert report.assigned == len(encoder.weights) + len(decoder.weights)
    assert report.ignored_keys and all(k.startswith(("memory_", "maskmem", "no_mem_pos", "no_obj", "obj_ptr",
                                                     "mask_downsample", "sam_prompt_encoder.point_embeddings.",
                                                     "sam_prompt_encoder.mask_downscaling",
                                                     "sam_mask_decoder.output_hypernetworks_mlps."))
                                       for k in report.ignored_keys)
    return encoder, decoder


@pytest.fixture(scope="module")
def reference_features(state_dict) -> dict[str, np.ndarray]:
    image = np.random.default_rng(1).normal(0, 1, (1, 3, SIZE, SIZE))
    return {"image": image, **ref.image_encoder(image, state_dict)}


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.asarray(x).transpose(0, 2, 3, 1)


# ------------------------------------------------------------------------------------------------- params
def test_params_defaults_and_checks():
    assert FAMILY.task == "promptable_segmentation" and FAMILY.params is Sam2Params
    assert Sam2Params().check() == [] and Sam2Params().image_size == 1024
    assert Sam2Params().embedding_size == 64 and Sam2Params().mask_size == 256
    source = FAMILY.weights["sam2.1_hiera_tiny"]
    assert source.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    problems = " ".join(Sam2Params(input_shape=[100, 100, 3], num_points=0).check())
    assert "multiple of 32" in problems and "nearest valid 96" in problems and "num_points" in problems
    assert "square" in " ".join(Sam2Params(input_shape=[128, 256, 3]).check())


def test_block_specs_follow_the_official_construction(params):
    ours = [(b.dim, b.dim_out, b.num_heads, b.window_size, b.q_pool) for b in params.spec.blocks()]
    official = [(b["dim"], b["dim_out"], b["heads"], b["window"], b["q_stride"]) for b in trunk_blocks(TINY)]
    assert ours == official
    assert params.spec.channel_list == [96, 192, 384, 768]


def test_invalid_size_is_a_model_error():
    from segzoo.models.sam2.model import build_encoder

    with pytest.raises(ModelError, match="multiple of 32"):
        build_encoder(Sam2Params(input_shape=[144, 144, 3]))


# ------------------------------------------------------------------------------------------ per-block checks
def test_window_partition_and_unpartition_with_padding():
    from segzoo.models.sam2.layers import window_partition, window_unpartition

    x = np.random.default_rng(2).normal(size=(1, 9, 11, 5)).astype(np.float32)
    windows, padded = window_partition(x, 4)
    expected, expected_pad = ref.window_partition(x.astype(np.float64), 4)
    assert padded == expected_pad == (12, 12)
    assert_close(windows, expected, "window_partition")
    back = window_unpartition(windows, 4, padded, (9, 11))
    np.testing.assert_array_equal(np.asarray(back), x)
    assert_close(back, ref.window_unpartition(expected, 4, expected_pad, (9, 11)), "window_unpartition")


def test_position_embedding_bicubic_and_window_tiles(models, state_dict):
    encoder, _ = models
    layer = encoder.get_layer("trunk_pos_embed")
    assert_close(layer.embedding(32, 32)[None], ref.pos_embed(state_dict, 32, 32), "pos_embed 32x32")
    assert_close(layer.embedding(16, 24)[None], ref.pos_embed(state_dict, 16, 24), "pos_embed 16x24")


@pytest.mark.parametrize("block", [1, 3, 10])
def test_hiera_attention_with_query_pooling(models, state_dict, block):
    encoder, _ = models
    spec = trunk_blocks(TINY)[block]
    window = spec["window"]
    x = np.random.default_rng(block).normal(size=(3, window, window, spec["dim"])).astype(np.float32)
    attn = encoder.get_layer(f"trunk_blocks_{block}").attn
    key = f"image_encoder.trunk.blocks.{block}.attn"
    expected = ref.multiscale_attention(x.astype(np.float64), state_dict, key, spec["heads"], True)
    assert expected.shape[1:3] == (window // 2, window // 2)
    assert_close(attn(x), expected, f"block {block} attention")


def test_hiera_mlp(models, state_dict):
    encoder, _ = models
    x = np.random.default_rng(3).normal(size=(1, 4, 4, 384)).astype(np.float32)
    block = encoder.get_layer("trunk_blocks_4")
    assert_close(block.mlp(x), ref.hiera_mlp(x.astype(np.float64), state_dict, "image_encoder.trunk.blocks.4.mlp"),
                 "hiera mlp")


@pytest.mark.parametrize(("block", "side"), [(0, 32), (1, 32), (3, 16), (4, 8), (5, 8), (10, 8), (11, 4),
                                             (4, 16), (11, 9)])
def test_hiera_blocks(models, state_dict, block, side):
    """Windowed (with and without padding), global and stage-change (pooling) blocks."""
    encoder, _ = models
    spec = trunk_blocks(TINY)[block]
    x = np.random.default_rng(10 + block).normal(size=(1, side, side, spec["dim"])).astype(np.float32)
    expected = ref.multiscale_block(x.astype(np.float64), state_dict, f"image_encoder.trunk.blocks.{block}", spec)
    assert_close(encoder.get_layer(f"trunk_blocks_{block}")(x), expected, f"block {block} at {side}x{side}")


def test_fpn_neck(models, state_dict, reference_features):
    import keras

    encoder, _ = models
    ends = [0, 2, 9, 11]
    stages = [encoder.get_layer(f"trunk_blocks_{e}").output for e in ends]
    levels = [encoder.get_layer(n).output for n in ("neck_convs_3", "neck_convs_2", "neck_fuse_2")]
    probe = keras.Model(encoder.input, stages + levels)
    outs = [np.asarray(o) for o in probe(nhwc(reference_features["image"]).astype(np.float32))]
    expected = ref.fpn_neck([o.transpose(0, 3, 1, 2).astype(np.float64) for o in outs[:4]], state_dict)
    for level, (actual, exp) in enumerate(zip(outs[4:], expected[:3])):
        assert_close(actual, nhwc(exp), f"FPN level {level}")


def test_prompt_encoder(models, state_dict, params):
    _, decoder = models
    rng = np.random.default_rng(4)
    coords = rng.uniform(0, SIZE, (2, 3, 2)).astype(np.float32)
    labels = np.array([[1, 0, -1], [0, 0, 1]], np.float32)
    sparse, dense_pe, no_mask = decoder.get_layer("prompt_encoder")(coords, labels)
    expected = ref.embed_points(coords.astype(np.float64), labels.astype(np.float64), state_dict, SIZE)
    assert_close(sparse, expected, "point embeddings")
    e = params.embedding_size
    assert_close(np.asarray(dense_pe).reshape(1, e, e, -1), nhwc(ref.dense_pe(state_dict, e)), "dense PE")
    np.testing.assert_array_equal(np.asarray(no_mask).ravel(),
                                  state_dict["sam_prompt_encoder.no_mask_embed.weight"].ravel())


@pytest.mark.parametrize("block", [0, 1])
def test_two_way_attention_blocks(models, state_dict, block):
    _, decoder = models
    rng = np.random.default_rng(20 + block)
    queries, query_pe = rng.normal(size=(2, 1, 10, 256))
    keys, key_pe = rng.normal(size=(2, 1, 64, 256))
    layer = decoder.get_layer(f"transformer_layers_{block}")
    q, k = layer(*(a.astype(np.float32) for a in (queries, keys, query_pe, key_pe)))
    eq, ek = ref.two_way_block(queries, keys, query_pe, key_pe, state_dict,
                               f"sam_mask_decoder.transformer.layers.{block}", block == 0)
    assert_close(q, eq, f"two-way block {block} queries")
    assert_close(k, ek, f"two-way block {block} keys")


def test_decoder_attention_downsampled(models, state_dict):
    _, decoder = models
    rng = np.random.default_rng(5)
    q, k = rng.normal(size=(1, 9, 256)), rng.normal(size=(1, 64, 256))
    layer = decoder.get_layer("transformer_final_attn_token_to_image")
    expected = ref.attention_module(q, k, k, state_dict, "sam_mask_decoder.transformer.final_attn_token_to_image")
    assert_close(layer(q.astype(np.float32), k.astype(np.float32), k.astype(np.float32)), expected, "attention")


# ------------------------------------------------------------------------------------------------ end to end
def test_encoder_end_to_end(models, reference_features):
    encoder, _ = models
    out = encoder(nhwc(reference_features["image"]).astype(np.float32))
    assert tuple(out["image_embeddings"].shape) == (1, SIZE // 16, SIZE // 16, 256)
    assert tuple(out["high_res_features_s0"].shape) == (1, SIZE // 4, SIZE // 4, 32)
    assert tuple(out["high_res_features_s1"].shape) == (1, SIZE // 8, SIZE // 8, 64)
    for name in ("image_embeddings", "high_res_features_s0", "high_res_features_s1"):
        assert_close(out[name], nhwc(reference_features[name]), f"encoder {name}")


@pytest.mark.parametrize("labels", [[1, -1, -1], [1, 0, 1], [0, 1, -1]])
def test_decoder_end_to_end(models, state_dict, reference_features, labels):
    _, decoder = models
    coords = np.array([[[10.0, 20.0], [100.5, 64.0], [127.0, 0.0]]], np.float32)
    labels = np.array([labels], np.float32)
    feats = {k: nhwc(v).astype(np.float32) for k, v in reference_features.items() if k != "image"}
    out = decoder({**feats, "point_coords": coords, "point_labels": labels})
    masks, iou, obj = ref.decoder({k: v for k, v in reference_features.items() if k != "image"},
                                  coords.astype(np.float64), labels.astype(np.float64), state_dict, SIZE)
    assert tuple(out["masks"].shape) == (1, SIZE // 4, SIZE // 4, 1)
    assert_close(out["masks"], nhwc(masks), "mask logits")
    np.testing.assert_allclose(np.asarray(out["iou"]), iou, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out["object_score_logits"]), obj, atol=1e-4)


def test_multimask_decoder(state_dict, reference_features, models):
    from segzoo.models.sam2.model import build_decoder
    from segzoo.models.sam2.weights import assign_state_dict

    params = Sam2Params(input_shape=[SIZE, SIZE, 3], num_points=2, multimask_output=True)
    decoder = build_decoder(params)
    assign_state_dict(state_dict, models[0], decoder, params)
    coords, labels = np.array([[[40.0, 50.0], [0.0, 0.0]]], np.float32), np.array([[1, -1]], np.float32)
    feats = {k: v for k, v in reference_features.items() if k != "image"}
    out = decoder({**{k: nhwc(v).astype(np.float32) for k, v in feats.items()}, "point_coords": coords,
                   "point_labels": labels})
    masks, iou, _ = ref.decoder(feats, coords.astype(np.float64), labels.astype(np.float64), state_dict, SIZE, True)
    assert tuple(out["masks"].shape) == (1, SIZE // 4, SIZE // 4, 3)
    assert_close(out["masks"], nhwc(masks), "multimask logits")
    np.testing.assert_allclose(np.asarray(out["iou"]), iou, atol=1e-5)


# ------------------------------------------------------------------------------------------ weights, counts
def _official_count(keys: dict[str, tuple]) -> int:
    return sum(int(np.prod(shape)) for shape in keys.values())


def test_parameter_counts_pytorch_convention(models):
    """Trainable Keras weights = the official parameters the split uses (the Fourier matrix is a buffer)."""
    encoder, decoder = models
    heads = sam_heads_keys()
    encoder_keys = {**image_encoder_keys(), "no_mem_embed": (1, 1, 256),
                    **{k: v for k, v in heads.items() if ".conv_s0." in k or ".conv_s1." in k}}
    unused = ("point_embeddings.2", "point_embeddings.3", "mask_downscaling", "conv_s0", "conv_s1",
              "positional_encoding_gaussian_matrix", "hypernetworks_mlps.1", "hypernetworks_mlps.2",
              "hypernetworks_mlps.3")
    decoder_keys = {k: v for k, v in heads.items() if not any(u in k for u in unused)}
    count = lambda m: sum(int(np.prod(w.shape)) for w in m.trainable_weights)  # noqa: E731
    assert count(encoder) == _official_count(encoder_keys) == 27_244_064
    assert count(decoder) == _official_count(decoder_keys) == 3_772_037
    assert sum(int(np.prod(w.shape)) for w in decoder.non_trainable_weights) == 256


def test_renamed_key_is_named(state_dict, params, models):
    from segzoo.models.sam2.weights import assign_state_dict

    encoder, decoder = models
    before = [np.array(w) for w in encoder.weights + decoder.weights]
    broken = {k: v + 1.0 for k, v in state_dict.items()}
    broken["image_encoder.trunk.blocks.3.attn.qkv_renamed.weight"] = broken.pop(
        "image_encoder.trunk.blocks.3.attn.qkv.weight")
    with pytest.raises(ModelError) as info:
        assign_state_dict(broken, encoder, decoder, params, source="sam2.1_hiera_tiny.pt")
    message = str(info.value)
    assert message.startswith("sam2.1_hiera_tiny.pt: cannot import the weights (2 problems")
    missing = message.split("official keys missing from the file (1):")[1].split("\n")[1]
    unused = message.split("keys in the file that no variable uses (1):")[1].split("\n")[1]
    assert missing.startswith("  - image_encoder.trunk.blocks.3.attn.qkv.weight (for trunk_blocks_3/attn/qkv/kernel)")
    assert unused.startswith("  - image_encoder.trunk.blocks.3.attn.qkv_renamed.weight")
    after = [np.array(w) for w in encoder.weights + decoder.weights]
    assert all(np.array_equal(a, b) for a, b in zip(before, after)), "nothing is assigned from a mismatching file"


def test_misshaped_and_extra_keys_are_named(state_dict, params, models):
    from segzoo.models.sam2.weights import assign_state_dict

    encoder, decoder = models
    broken = dict(state_dict)
    broken["sam_mask_decoder.iou_token.weight"] = np.zeros((2, 256), np.float32)
    broken["sam_mask_decoder.extra_head.weight"] = np.zeros((3,), np.float32)
    with pytest.raises(ModelError) as info:
        assign_state_dict(broken, encoder, decoder, params)
    message = str(info.value)
    assert "sam_mask_decoder.iou_token.weight: file shape (2, 256), but output_tokens/iou_token has shape (1, 256)" \
        in message
    assert "  - sam_mask_decoder.extra_head.weight (3,)" in message
    # the video-memory, box/mask-prompt and unused mask-head keys are ignored on purpose
    problems, hint = message.split("\nUse the official sam2.1_hiera_tiny.pt")
    for ignored in ("memory_attention", "maskmem_tpos_enc", "obj_ptr_proj", "mask_downscaling",
                    "point_embeddings.2", "output_hypernetworks_mlps.1"):
        assert ignored not in problems and ignored in hint


def test_import_from_a_torch_zip_in_the_official_layout(state_dict, params, tmp_path):
    """The checkpoint file as Meta ships it ({"model": state_dict} in a torch zip), through the family importer."""
    from segzoo.checkpoints.writers import write_torch_zip
    from segzoo.models.sam2.model import build_sam2
    from segzoo.models.sam2.weights import import_checkpoint, load_checkpoint

    path = tmp_path / "sam2.1_hiera_tiny.pt"
    write_torch_zip(path, {"model": state_dict})
    model = build_sam2(params)
    import_checkpoint(model, path, params)
    qkv = model.get_layer("sam2_encoder").get_layer("trunk_blocks_3").attn.qkv.kernel
    np.testing.assert_array_equal(np.asarray(qkv), state_dict["image_encoder.trunk.blocks.3.attn.qkv.weight"].T)
    tokens = model.get_layer("sam2_decoder").get_layer("output_tokens").mask_tokens
    np.testing.assert_array_equal(np.asarray(tokens), state_dict["sam_mask_decoder.mask_tokens.weight"])

    broken = dict(state_dict)
    broken["sam_mask_decoder.mask_token.weight"] = broken.pop("sam_mask_decoder.mask_tokens.weight")
    write_torch_zip(tmp_path / "renamed.pt", {"model": broken})
    with pytest.raises(ModelError, match=r"renamed.pt: cannot import(.|\n)*sam_mask_decoder.mask_tokens.weight"
                                         r"(.|\n)*sam_mask_decoder.mask_token.weight"):
        load_checkpoint(tmp_path / "renamed.pt", model.get_layer("sam2_encoder"), model.get_layer("sam2_decoder"),
                        params)
    with pytest.raises(ModelError, match="not found; download sam2.1_hiera_tiny.pt from https://dl.fbaipublicfiles"):
        load_checkpoint(tmp_path / "absent.pt", model.get_layer("sam2_encoder"), model.get_layer("sam2_decoder"),
                        params)
