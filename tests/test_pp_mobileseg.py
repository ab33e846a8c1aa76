"""PP-MobileSeg: params, official weight import, NumPy reference, NPU rewrites, TFLite placement, VIM, ADE20K."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, shared_path
from reference import pp_mobileseg_numpy as ref
from sshd import deploy_one_image, sshd_server  # noqa: F401  (fixture)
from segzoo.errors import DataError, ModelError
from segzoo.models.pp_mobileseg.params import PPMobileSegParams
from segzoo.models.pp_mobileseg.presets import ARCHITECTURES, PUBLISHED

keras = pytest.importorskip("keras")

from segzoo.models.pp_mobileseg import model as ppm  # noqa: E402
from segzoo.checkpoints import assign_weights  # noqa: E402
from segzoo.models.pp_mobileseg.weights import import_state_dict, official_shape, plan  # noqa: E402

TOLERANCE = 1e-4
"""Max abs difference allowed, as a fraction of the reference output's range."""
SMALL = (96, 128)
"""A small non-square input: the 1/32 maps are 3x4, their strided attention 2x2 (odd sizes, non-integer resizes)."""
CLASSES = 7


def _params(**kwargs) -> PPMobileSegParams:
    return PPMobileSegParams(input_shape=[*SMALL, 3], **kwargs)


def _rel_error(reference: np.ndarray, ours: np.ndarray) -> float:
    assert reference.shape == ours.shape
    return float(np.abs(reference - ours).max() / (reference.max() - reference.min()))


def _load_subset(model, state: dict) -> None:
    """Fill a model made of some official blocks from the keys it needs."""
    weight_plan = plan(model)
    assign_weights(weight_plan, {key: state[key] for key in weight_plan.keys()}, source="test state", model=model)


@pytest.fixture(scope="module")
def built() -> dict:
    """variant -> (Keras model at the small input with random official weights, those weights)."""
    result = {}
    for variant in ("tiny", "base"):
        state = ref.random_state(variant, CLASSES, seed=1)
        model = ppm.build(_params(variant=variant), CLASSES)
        import_state_dict(model, state, "paddle", "random state")
        result[variant] = (model, state)
    return result


@pytest.fixture(params=["tiny", "base"])
def imported(request, built) -> tuple:
    """(variant, model, weights) for each variant."""
    return (request.param, *built[request.param])


@pytest.fixture(scope="module")
def npu_model() -> "keras.Model":
    """Tiny in its NPU-friendly form, with the ImageNet normalization inside."""
    return ppm.build(_params(activation="relu", padding="same", input_normalization="imagenet"), CLASSES)


@pytest.fixture(scope="module")
def scratch() -> "keras.Model":
    """A tiny model that tests may overwrite (imports that fail assign nothing)."""
    return ppm.build(_params(), CLASSES)


# ---------------------------------------------------------------------------------------------------- params
def test_params_defaults_and_cross_field_rules() -> None:
    params = PPMobileSegParams()
    assert (params.name, params.variant, params.activation, params.padding) == ("pp_mobileseg", "tiny", "hardswish",
                                                                                 "symmetric")
    assert params.check() == []
    errors = PPMobileSegParams(input_shape=[360, 480, 3], dropout=1.5).check()
    assert any("360x480 must be multiples of 32" in e and "352x480" in e for e in errors)
    assert any(e.startswith("dropout:") for e in errors)
    with pytest.raises(ModelError, match="input_shape: 100x128"):
        ppm.build(PPMobileSegParams(input_shape=[100, 128, 3]), 3)
    from segzoo.models.registry import make_params

    with pytest.raises(ModelError, match="training.model.activation: bad value 'gelu'"):
        make_params("pp_mobileseg", activation="gelu")


def test_family_package_imports_no_tensorflow() -> None:
    code = ("import sys, segzoo.models.pp_mobileseg as p; p.FAMILY.params().check(); "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={"PYTHONPATH": str(REPO / "src")})


# ----------------------------------------------------------------------------------------- official weights
def test_weight_keys_and_shapes_are_the_official_ones(imported) -> None:
    variant, model, _ = imported
    ours = {e.key: official_shape(e) for e in plan(model)}
    assert ours == ref.paddle_schema(variant, CLASSES)
    assert len({id(e.variable) for e in plan(model)}) == len(model.weights)  # every Keras weight, once


def test_parameter_counts_for_150_classes(built) -> None:
    """Trainable weights (BatchNorm statistics excluded), against the official schema and the published figure."""
    for variant, expected in (("tiny", 1_492_298), ("base", 5_943_878)):
        model = built[variant][0]
        # the models here have 7 classes: 150 classes add (150 - 7) x (256 weights + 1 bias) to the classifier
        trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights) + (150 - CLASSES) * (256 + 1)
        schema = ref.paddle_schema(variant, 150)
        official = sum(int(np.prod(s)) for k, s in schema.items() if not k.endswith(("_mean", "_variance")))
        assert trainable == official == expected
        published = PUBLISHED[variant]["params_m"] * 1e6
        assert abs(trainable - published) / published < 0.08  # see the family notes on the published figures


def test_end_to_end_matches_numpy_reference(imported) -> None:
    variant, model, state = imported
    image = np.random.default_rng(2).normal(size=(*SMALL, 3)).astype(np.float32)
    reference = ref.forward(image.transpose(2, 0, 1), state, variant)
    ours = model(image[None], training=False).numpy()[0].transpose(2, 0, 1)
    stride = ARCHITECTURES[variant].output_stride
    assert ours.shape == (CLASSES, SMALL[0] // stride, SMALL[1] // stride)
    assert _rel_error(reference, ours) <= TOLERANCE


def test_sea_attention_block_matches_numpy_reference() -> None:
    arch, params = ARCHITECTURES["tiny"], _params()
    name = "backbone.trans1.transformer_blocks.0.attn"
    inputs = keras.Input((6, 10, 64))
    block = keras.Model(inputs, ppm.sea_attention(inputs, 64, 16, arch, params, name))
    state = ref.random_state("tiny", CLASSES, seed=3)
    _load_subset(block, state)
    x = np.random.default_rng(4).normal(size=(6, 10, 64)).astype(np.float32)
    reference = ref.sea_attention(x.transpose(2, 0, 1).astype(np.float64), state, name, 16, 4)
    ours = block(x[None]).numpy()[0].transpose(2, 0, 1)
    assert _rel_error(reference, ours) <= TOLERANCE


@pytest.mark.parametrize("variant", ["tiny", "base"])
def test_aam_matches_numpy_reference(variant: str) -> None:
    arch = ARCHITECTURES[variant]
    shapes = [(12, 16), (6, 8), (3, 4)]
    inputs = [keras.Input((h, w, c)) for (h, w), c in zip(shapes, arch.aam_in_channels)]
    block = keras.Model(inputs, ppm.aam(inputs, arch))
    state = ref.random_state(variant, CLASSES, seed=5)
    _load_subset(block, state)
    rng = np.random.default_rng(6)
    feats = [rng.normal(size=(h, w, c)).astype(np.float32) for (h, w), c in zip(shapes, arch.aam_in_channels)]
    reference = ref.aam([f.transpose(2, 0, 1).astype(np.float64) for f in feats], state, arch.aam)
    ours = block([f[None] for f in feats]).numpy()[0].transpose(2, 0, 1)
    assert ours.shape[1:] == ((6, 8) if arch.aam == "AAM" else (12, 16))
    assert _rel_error(reference, ours) <= TOLERANCE


def test_head_matches_numpy_reference() -> None:
    inputs = keras.Input((5, 7, 256))
    block = keras.Model(inputs, ppm.head(inputs, CLASSES, dropout=0.1))
    state = ref.random_state("tiny", CLASSES, seed=7)
    _load_subset(block, state)
    x = np.random.default_rng(8).normal(size=(5, 7, 256)).astype(np.float32)
    reference = ref.head(x.transpose(2, 0, 1).astype(np.float64), state)
    assert _rel_error(reference, block(x[None]).numpy()[0].transpose(2, 0, 1)) <= TOLERANCE


def test_one_mis_shaped_tensor_is_named_and_nothing_is_assigned(scratch) -> None:
    model = scratch
    state = ref.random_state("tiny", CLASSES)
    key = "backbone.trans1.transformer_blocks.1.attn.to_k.c.weight"
    state[key] = np.zeros((64, 64, 3, 3), np.float32)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ModelError) as info:
        import_state_dict(model, state, "paddle", "broken.pdparams")
    message = str(info.value)
    assert "broken.pdparams" in message and key in message
    assert "(64, 64, 3, 3)" in message and "(1, 1, 64, 64)" in message  # file shape, Keras variable shape
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))


def test_missing_and_unused_keys_are_named(scratch) -> None:
    model = scratch
    state = ref.random_state("tiny", CLASSES)
    del state["backbone.smb2.blocks.1.mid_se.conv2.bias"]
    state["backbone.smb9.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ModelError) as info:
        import_state_dict(model, state, "paddle", "x.pdparams")
    assert "backbone.smb2.blocks.1.mid_se.conv2.bias" in str(info.value)
    assert "backbone.smb9.extra.weight" in str(info.value)
    assert "training.model.variant" in str(info.value)  # the usual cause: a checkpoint of the other variant


def test_mmseg_names_import_the_same_network(imported) -> None:
    variant, model, state = imported
    other_state = ref.random_state(variant, CLASSES, seed=2)
    summary = import_state_dict(model, ref.mmseg_state(other_state), "mmseg", "converted.pth")
    assert summary["scope"] == "model" and summary["variables"] == len(model.weights)
    from_mmseg = [w.numpy().copy() for w in model.weights]
    import_state_dict(model, other_state, "paddle", "same weights.pdparams")
    for a, b in zip(from_mmseg, model.weights):
        np.testing.assert_array_equal(a, b.numpy())
    import_state_dict(model, state, "paddle", "back to the fixture's weights")
    broken = ref.mmseg_state(state)
    del broken["backbone.smb1.blocks.0.mid_se.conv_act1.conv.bias"]
    with pytest.raises(ModelError, match=r"backbone\.smb1\.blocks\.0\.mid_se\.conv_act1\.conv\.bias"):
        import_state_dict(model, broken, "mmseg", "broken.pth")


def test_backbone_checkpoint_fills_the_backbone_only(scratch) -> None:
    """A StrideFormer checkpoint (keys relative to the backbone, no AAM): head and AAM keep their values."""
    full = ref.random_state("tiny", CLASSES)
    backbone = {k[len("backbone."):]: v for k, v in full.items() if k.startswith(("backbone.smb", "backbone.trans"))}
    model = scratch
    head_before = model.get_layer("decode_head.conv_seg").get_weights()[0].copy()
    summary = import_state_dict(model, backbone, "paddle", "pretrain.pdparams")
    assert summary["scope"] == "backbone"
    np.testing.assert_array_equal(model.get_layer("backbone.smb1.conv.c").get_weights()[0],
                                  full["backbone.smb1.conv.c.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("decode_head.conv_seg").get_weights()[0], head_before)
    backbone["trans1.transformer_blocks.0.attn.unknown.weight"] = np.zeros(2, np.float32)
    with pytest.raises(ModelError, match="attn.unknown.weight"):
        import_state_dict(model, backbone, "paddle", "pretrain.pdparams")


def test_other_class_count_keeps_the_classifier(scratch, caplog) -> None:
    model = scratch
    head_before = model.get_layer("decode_head.conv_seg").get_weights()[0].copy()
    with caplog.at_level(logging.WARNING):
        summary = import_state_dict(model, ref.random_state("tiny", 150), "paddle", "ade20k_tiny.pdparams")
    assert summary["scope"] == "model without classifier"
    assert "has 150 classes, the model 7" in caplog.text
    np.testing.assert_array_equal(model.get_layer("decode_head.conv_seg").get_weights()[0], head_before)


def test_pdparams_file_with_real_key_names(scratch, tmp_path) -> None:
    """A synthetic PaddleSeg checkpoint file, read without paddle and without running code from it."""
    writers = pytest.importorskip("segzoo.checkpoints.writers")
    from segzoo.models.pp_mobileseg.weights import import_paddle

    state = ref.random_state("tiny", CLASSES)
    path = tmp_path / "model.pdparams"
    writers.write_pdparams(path, state)
    model = scratch
    import_paddle(model, path)
    for layer in ("backbone.trans2.transformer_blocks.1.attn.pos_emb_columnk", "decode_head.linear_fuse.bn"):
        key = {"pos_emb_columnk": ".pos_embed", "bn": "._variance"}[layer.rsplit(".", 1)[-1]]
        np.testing.assert_array_equal(model.get_layer(layer).weights[-1].numpy(), state[layer + key])
    np.testing.assert_array_equal(model.get_layer("decode_head.conv_seg").get_weights()[1],
                                  state["decode_head.conv_seg.bias"])
    state["decode_head.linear_fuse.bn._variance"] = np.ones(255, np.float32)
    writers.write_pdparams(path, state)
    with pytest.raises(ModelError, match=r"decode_head\.linear_fuse\.bn\._variance"):
        import_paddle(model, path)


def test_official_checkpoint_by_name_through_the_registry(tmp_path, monkeypatch) -> None:
    """``pretrained_weights: ade20k_tiny``: found in the user's folder, imported, saved by the converter."""
    writers = pytest.importorskip("segzoo.checkpoints.writers")
    from segzoo.models.pp_mobileseg.convert import main
    from segzoo.models.pp_mobileseg.weights import SOURCES
    from segzoo.models.registry import load_pretrained, make_params

    monkeypatch.setenv("SEGZOO_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("segzoo.models.weights_store.download", _no_network)
    with pytest.raises(ModelError, match="needs"):  # the official weights need the official form
        load_pretrained(None, make_params("pp_mobileseg", pretrained_weights="ade20k_tiny"), 150)
    official = make_params("pp_mobileseg", pretrained_weights="ade20k_tiny", **SOURCES["ade20k_tiny"].params)
    with pytest.raises(ModelError) as info:
        load_pretrained(None, official, 150)
    assert "pp_mobileseg_tiny_ade20k.pdparams" in str(info.value)
    assert "https://bj.bcebos.com/paddleseg/dygraph/ade20k/pp_mobileseg_tiny/model.pdparams" in str(info.value)
    folder = tmp_path / "mine"
    folder.mkdir()
    state = ref.random_state("tiny", 150, seed=4)
    writers.write_pdparams(folder / "pp_mobileseg_tiny_ade20k.pdparams", state)
    out = tmp_path / "tiny_ade20k.keras"
    assert main(["ade20k_tiny", str(out), "--input-shape", "64", "64", "3", "--weights-dir", str(folder)]) == 0
    model = keras.saving.load_model(out)
    np.testing.assert_array_equal(model.get_layer("decode_head.conv_seg").get_weights()[1],
                                  state["decode_head.conv_seg.bias"])
    assert model.get_layer("input_normalization") is not None


def _no_network(url, destination, sha256=None, timeout=0.0):
    raise OSError(f"no network for {url}")


# -------------------------------------------------------------------------------------------- NPU rewrites
def test_aam_average_pool_is_the_bilinear_half_resize() -> None:
    """The AAM's ``F.interpolate(scale_factor=0.5, bilinear)`` is computed as a 2x2 average pool: same numbers."""
    x = np.random.default_rng(9).normal(size=(1, 12, 16, 5)).astype(np.float32)
    pooled = keras.layers.AveragePooling2D(2)(x).numpy()[0]
    literal = ref.resize_bilinear(x[0].transpose(2, 0, 1).astype(np.float64), (6, 8)).transpose(1, 2, 0)
    tf_resize = keras.ops.image.resize(x, (6, 8), interpolation="bilinear").numpy()[0]
    np.testing.assert_allclose(pooled, literal, atol=1e-6)
    np.testing.assert_allclose(pooled, tf_resize, atol=1e-6)


def test_positional_embedding_interpolation_is_a_constant_matrix() -> None:
    """The embedding's linear resize is a fixed [N, 16] matrix on a weight (folded away by the converter)."""
    from segzoo.models.pp_mobileseg.layers import linear_interpolation_matrix

    table = np.random.default_rng(10).normal(size=(5, 16))
    for n in (2, 3, 6, 12, 16, 24):
        np.testing.assert_allclose(table @ linear_interpolation_matrix(16, n).T, ref.resize_linear(table, n),
                                   atol=1e-6)


def test_input_normalization_layer_is_imagenet_mean_std(npu_model) -> None:
    model = npu_model
    probe = keras.Model(model.input, model.get_layer("input_normalization").output)
    x = np.random.default_rng(11).uniform(0, 1, (1, *SMALL, 3)).astype(np.float32)
    expected = (x - np.array(ppm.IMAGENET_MEAN)) / np.array(ppm.IMAGENET_STD)
    np.testing.assert_allclose(probe(x).numpy(), expected, atol=1e-5)
    assert not model.get_layer("input_normalization").trainable


def test_npu_options_change_only_what_they_name(built, npu_model) -> None:
    official, npu = built["tiny"][0], npu_model
    kinds = {layer.name: type(layer).__name__ for layer in official.layers}
    assert sum(k == "ZeroPadding2D" for k in kinds.values()) == 9  # stem, 4 strided MobileNetV3 units, 4 attentions
    assert not any(isinstance(layer, keras.layers.ZeroPadding2D) for layer in npu.layers)
    hard_swish = [layer.name for layer in npu.layers if getattr(layer, "activation", None) is not None
                  and getattr(layer.activation, "__name__", "") == "hard_swish"]
    assert hard_swish == []
    checkpoint_weights = [w.shape for layer in npu.layers if layer.name != "input_normalization" for w in layer.weights]
    assert [w.shape for w in official.weights] == checkpoint_weights


def test_saved_model_reloads_with_the_same_outputs(built, tmp_path) -> None:
    model = built["tiny"][0]
    path = tmp_path / "tiny.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    x = np.random.default_rng(12).normal(size=(1, *SMALL, 3)).astype(np.float32)
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-5)


@pytest.mark.slow
def test_saved_model_loads_in_a_fresh_process_everywhere_a_keras_file_is_read(built, tmp_path) -> None:
    """Quantization, analysis and the named runner load a saved PP-MobileSeg without importing its layers first."""
    path = tmp_path / "tiny.keras"
    built["tiny"][0].save(path)
    code = (f"import sys; path = {str(path)!r}\n"
            "from segzoo.quantization.quantize import load_float_model\n"
            "from segzoo.benchmarking.analysis import analyze_keras\n"
            "from segzoo.runtime.keras import KerasNamedRunner\n"
            "from pathlib import Path\n"
            "assert load_float_model(Path(path)).name == 'pp_mobileseg_tiny'\n"
            "assert analyze_keras(path)['macs'] > 0\n"
            "KerasNamedRunner(path)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={"PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_int8_per_tensor_placement_of_original_and_npu_variants(tmp_path) -> None:
    """Batch-1 int8 per-tensor TFLite of tiny; the STM32MP2 estimate places every op; NPU variant >= 90% NPU."""
    from segzoo.benchmarking.estimate import estimate_stm32mp2
    from segzoo.quantization.converter import convert

    rng = np.random.default_rng(0)
    calibration = [rng.uniform(-1, 1, (1, 128, 128, 3)).astype(np.float32) for _ in range(2)]
    results = {}
    for tag, options in (("original", {}), ("npu", {"activation": "relu", "padding": "same"})):
        model = ppm.build(PPMobileSegParams(input_shape=[128, 128, 3], **options), CLASSES)
        path = convert(model, lambda: iter(calibration), tmp_path / f"{tag}.tflite", granularity="per_tensor")
        results[tag] = estimate_stm32mp2(path)
    for estimate in results.values():
        assert estimate["precision"] == "int8 per-tensor"
        assert all(op["unit"] in ("NPU", "GPU", "CPU") and op["reason"] for op in estimate["ops"])
        assert estimate["op_types_by_unit"]["CPU"] == {}
        assert {"BATCH_MATMUL", "SOFTMAX", "MUL"} <= set(estimate["op_types_by_unit"]["GPU"])
    original, npu = results["original"]["op_types_by_unit"], results["npu"]["op_types_by_unit"]
    assert "HARD_SWISH" in original["GPU"] and "PAD" in original["NPU"]
    assert "HARD_SWISH" not in npu["GPU"] and "PAD" not in npu["NPU"]
    assert results["npu"]["npu_pct"] >= 90.0
    assert results["npu"]["latency_ms"] < results["original"]["latency_ms"]


# ---------------------------------------------------------------------------------------------------- VIM
def _smooth_logits(hw: tuple[int, int], classes: int, present: int, seed: int) -> np.ndarray:
    """Spatially smooth logits (as a trained network gives) where ``present`` classes win in blobs."""
    from segzoo.preprocess import resize_scores

    rng = np.random.default_rng(seed)
    logits = resize_scores(rng.normal(-4.0, 0.5, (3, 3, classes)), hw)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    for c in rng.choice(classes, present, replace=False):
        cy, cx = rng.uniform(0, hw[0]), rng.uniform(0, hw[1])
        logits[..., c] += 6.0 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.1 * hw[0] * hw[1]))
    return logits


def test_vim_matches_full_upsampling_where_classes_are_gathered() -> None:
    from segzoo.models.pp_mobileseg.vim import full_labels, present_classes, vim_labels

    logits = _smooth_logits((16, 16), 150, 6, seed=13)
    vim, full = vim_labels(logits, (256, 256)), full_labels(logits, (256, 256))
    assert set(np.unique(vim)) <= set(present_classes(logits))
    gathered = np.isin(full, present_classes(logits))
    np.testing.assert_array_equal(vim[gathered], full[gathered])
    assert gathered.mean() > 0.99
    one = np.zeros((4, 4, 3), np.float32)
    one[..., 2] = 1.0
    assert np.all(vim_labels(one, (8, 8)) == 2)


# ------------------------------------------------------------------------------------------------- ADE20K
def test_ade20k_layout_on_real_samples() -> None:
    from segzoo.data.ade20k import class_mapping, dataset_section, read_class_names
    from segzoo.data.layouts import list_samples
    from segzoo.data.masks import ClassMapper, read_mask

    root = shared_path("datasets", "ade20k_samples")
    names = read_class_names(root / "objectInfo150.csv")
    assert len(names) == 150 and names[:3] == ["wall", "building", "sky"] and names[44] == "chest of drawers"
    samples = list_samples(root / "images", root / "annotations")
    assert [s.id for s in samples] == ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"]
    mapper = ClassMapper(num_classes=150, mapping=class_mapping())
    for sample in samples:
        raw = read_mask(sample.mask_path)
        mapped = mapper.apply(raw)
        mapper.check(mapped, sample.mask_path)
        assert np.all(mapped[raw == 0] == 255)
        assert np.array_equal(mapped[raw > 0], raw[raw > 0] - 1)
    config = yaml.safe_load((REPO / "config_file_examples" / "evaluation_ade20k.yaml").read_text())
    section = dataset_section(root / "objectInfo150.csv", "../shared/datasets/ade20k_samples/images",
                              "../shared/datasets/ade20k_samples/annotations")
    assert {k: config["dataset"][k] for k in section} == section


def test_ade20k_class_list_rejects_another_file(tmp_path) -> None:
    from segzoo.data.ade20k import read_class_names

    bad = tmp_path / "objectInfo150.csv"
    bad.write_text("Idx,Name\n" + "".join(f"{i},thing{i}\n" for i in range(1, 151)))
    with pytest.raises(DataError, match="Idx=1"):
        read_class_names(bad)


@pytest.mark.heavy
def test_camvid_npu_friendly_config_trains_quantizes_and_deploys_to_a_board(tmp_path, sshd_server):
    """``chain_tqe_camvid_pp_mobileseg.yaml`` with the NPU-friendly options, shrunk (8 real CamVid training and 3
    validation images, 64x64, 2 short epochs): the int8 per-tensor file keeps the 1/16 logits and is NPU-ready; it
    deploys to an SSH board whose application's labels at CamVid's 480x360 equal the argmax of segzoo's restored
    scores from the same file."""
    from pathlib import Path

    from segzoo.cli import run

    camvid = shared_path("datasets", "camvid", "CamVid")
    cfg = yaml.safe_load((REPO / "config_file_examples" / "chain_tqe_camvid_pp_mobileseg.yaml").read_text())
    for split, folder, count in (("training", "train", 8), ("validation", "val", 3)):
        names = (camvid / ("train_subset.txt" if split == "training" else "val.txt")).read_text().splitlines()
        (tmp_path / f"{split}.txt").write_text("\n".join(names[:count]) + "\n")
        cfg["dataset"].update({f"{split}_path": str(camvid / folder),
                               f"{split}_masks_path": str(camvid / f"{folder}annot"),
                               f"{split}_files_path": str(tmp_path / f"{split}.txt")})
    cfg["training"]["model"].update(input_shape=[64, 64, 3], activation="relu", padding="same")
    cfg["training"].update(epochs=2, steps_per_epoch=2, batch_size=4, tensorboard=False)
    cfg["quantization"]["calibration_images"] = 4
    cfg["mlflow"] = {"enabled": False}
    cfg["operation_mode"] = "chain_tqe"
    results = run(cfg, run_dir=tmp_path / "run")
    assert results["quantization"]["npu_ready"] and results["quantization"]["granularity"] == "per_tensor"
    int8 = sorted((tmp_path / "run" / "quantized_models").glob("*.tflite"))
    assert len(int8) == 1

    first = (tmp_path / "validation.txt").read_text().split()[0]
    image = Path(cfg["dataset"]["validation_path"]) / Path(first).name
    board = deploy_one_image(sshd_server, cfg, int8[0], image, tmp_path, "pp mobileseg")
    assert board.board_labels.shape == board.rgb.shape[:2] == (360, 480)
    assert board.output.shape == (4, 4, 11)
    np.testing.assert_array_equal(board.board_labels, np.argmax(board.scores, axis=-1))
