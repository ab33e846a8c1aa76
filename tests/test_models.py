"""segzoo.models: registry, DeepLabV3-MobileNetV2 builder, weights handling, size analysis, TFLite int8 export."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import numpy as np
import pytest

from segzoo.errors import ModelError
from segzoo.models import registry
from segzoo.models.registry import FAMILY_PACKAGES, build_model, get_family

keras = pytest.importorskip("keras")

from segzoo.models import analysis  # noqa: E402  (after the keras import check)
from segzoo.models.deeplab_v3 import model as deeplabv3  # noqa: E402
from segzoo.models.deeplab_v3.model import build_deeplabv3  # noqa: E402
from segzoo.models.deeplab_v3.params import DeepLabV3Params  # noqa: E402

TINY = dict(alpha=0.35)


def _tiny(input_shape=(64, 64, 3), num_classes=5, **kw):
    return build_deeplabv3(input_shape, num_classes, **{**TINY, **kw})


def _layer_names(model) -> set[str]:
    return {layer.name for layer in model.layers}


# -------------------------------------------------------------------------------------------------- registry
def test_registry_module_imports_no_tensorflow():
    code = ("import sys, segzoo.models.registry as r, segzoo.config.validate as v; "
            "[r.get_family(n) for n in r.family_names()]; v.all_key_paths(); "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registry_is_immutable_and_defaults_live_in_the_params():
    family = get_family("deeplab_v3")
    with pytest.raises(TypeError):
        FAMILY_PACKAGES["other"] = "x"  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        family.name = "other"  # type: ignore[misc]
    defaults = DeepLabV3Params()
    model = build_model("deeplab_v3", input_shape=defaults.input_shape, num_classes=5)
    assert model.name == "deeplab_v3_mobilenetv2_035_16_asppv2"  # the params' defaults, nowhere else
    hints = typing.get_type_hints(DeepLabV3Params)
    assert typing.get_args(hints["aspp"]) == ("v1", "v2", "none")
    assert defaults.alpha in typing.get_args(hints["alpha"])


def test_unknown_family_suggests_closest():
    with pytest.raises(ModelError) as err:
        get_family("deeplabv3")
    assert "Did you mean 'deeplab_v3'" in str(err.value)
    assert "Valid families: " in str(err.value) and "deeplab_v3" in str(err.value)


def test_build_model_rejects_unknown_and_bad_params():
    with pytest.raises(ModelError, match="alpah: unknown key for model family deeplab_v3.*did you mean "
                                         "training.model.alpha"):
        build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=2, alpah=0.35)
    with pytest.raises(ModelError, match="aspp: bad value 'v3'; allowed values: v1, v2, none"):
        build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=2, aspp="v3")
    with pytest.raises(ModelError, match="input_shape: 72x72 must be multiples of output_stride"):
        build_model("deeplab_v3", input_shape=(72, 72, 3), num_classes=2)


def test_build_model_through_registry():
    model = build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, alpha=0.35, aspp="none")
    assert tuple(model.output.shape) == (None, 64, 64, 3)
    assert model.name == "deeplab_v3_mobilenetv2_035_16_asppnone"


# ------------------------------------------------------------------------------------------ architecture
@pytest.mark.parametrize("aspp", ["v1", "v2", "none"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_shapes_and_cut(aspp, output_stride):
    model = _tiny((64, 96, 3), 5, aspp=aspp, output_stride=output_stride)
    fh, fw = 64 // output_stride, 96 // output_stride
    assert tuple(model.input.shape) == (None, 64, 96, 3)
    assert tuple(model.output.shape) == (None, 64, 96, 5)
    assert model.layers[-1].name == "upsampled_logits"
    assert tuple(model.get_layer("logits").output.shape) == (None, fh, fw, 5)
    cut = deeplabv3.BACKBONE_CUTS[output_stride]
    assert cut == {16: "block_13_expand_relu", 8: "block_6_expand_relu"}[output_stride]
    assert tuple(model.get_layer(cut).output.shape[1:3]) == (fh, fw)
    names = _layer_names(model)
    deeper = "block_14_expand" if output_stride == 16 else "block_7_expand"
    assert deeper not in names and "Conv_1" not in names  # backbone really cut
    assert {"aspp_b0_conv", "aspp_pool_gap", "aspp_pool_upsample", "aspp_concat", "aspp_proj_conv"} <= names
    assert ("aspp_b3_conv" in names) == (aspp != "none")
    assert ("aspp_b3_dwconv" in names) == (aspp == "v2")
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    y = model(np.zeros((1, 64, 96, 3), np.float32), training=False)
    assert y.shape == (1, 64, 96, 5)


def test_upsample_off_ends_at_logits():
    model = _tiny((96, 128, 3), 4, aspp="v2", upsample=False)
    assert model.layers[-1].name == "logits"
    assert tuple(model.output.shape) == (None, 6, 8, 4)


def test_grayscale_without_weights():
    model = _tiny((64, 64, 1), 2, aspp="none")
    assert tuple(model.input.shape) == (None, 64, 64, 1)


def test_dilation_rates_scaled_to_feature_map():
    assert deeplabv3.scaled_dilation_rates(32, 16) == (6, 12, 18)  # 512 input, os 16: the classic rates
    assert deeplabv3.scaled_dilation_rates(64, 8) == (12, 24, 36)  # 512 input, os 8
    assert deeplabv3.scaled_dilation_rates(8, 16) == (1, 3, 4)  # 128 input, os 16
    assert deeplabv3.scaled_dilation_rates(2, 16) == (1, 1, 1)
    model = _tiny((128, 256, 3), 3, aspp="v1")  # features 8x16: per-axis rates, never larger than the map
    rates = [tuple(model.get_layer(f"aspp_b{i}_conv").dilation_rate) for i in (1, 2, 3)]
    assert rates == [(1, 3), (3, 6), (4, 9)]
    assert all(rh < 8 and rw < 16 for rh, rw in rates)
    v2 = _tiny((128, 128, 3), 3, aspp="v2")
    assert tuple(v2.get_layer("aspp_b3_dwconv").dilation_rate) == (4, 4)
    assert tuple(v2.get_layer("aspp_b3_conv").kernel_size) == (1, 1)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(input_shape=(100, 64, 3)), r"100x64.*output_stride 16.*multiples of 16.*at least 32.*96x64"),
        (dict(input_shape=(16, 16, 3)), r"16x16.*at least 32"),
        (dict(input_shape=(72, 72, 3), output_stride=16), r"72x72.*output_stride 16"),
        (dict(input_shape=(64, 64)), r"input_shape must be \(height, width, channels\)"),
        (dict(alpha=0.6), r"alpha=0.6.*0.35, 0.5, 0.75, 1.0"),
        (dict(aspp="v3"), r"aspp='v3'.*'v1', 'v2', 'none'"),
        (dict(output_stride=32), r"output_stride=32.*8, 16"),
        (dict(num_classes=0), r"num_classes must be a positive integer"),
        (dict(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
    ],
)
def test_invalid_options_raise_model_error(kwargs, pattern):
    args = dict(input_shape=(64, 64, 3), num_classes=3, alpha=0.35)
    args.update(kwargs)
    with pytest.raises(ModelError, match=pattern):
        build_deeplabv3(**args)


def test_save_and_reload_keras_format(tmp_path):
    model = _tiny((64, 96, 3), 5, aspp="v2")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 96, 3)).astype(np.float32)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-5, atol=1e-5)
    assert loaded.name == model.name


# ---------------------------------------------------------------------------------------------- weights
IMAGENET_DIR = ("pretrained", "imagenet_mobilenet_v2", "models")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No download can succeed: Keras's cache is empty and the URL points at a closed loopback port."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    from segzoo.models import deeplab_v3

    source = dataclasses.replace(deeplab_v3.FAMILY.weights["imagenet"], url="http://127.0.0.1:9/{file_name}")
    family = dataclasses.replace(deeplab_v3.FAMILY, weights={"imagenet": source})
    monkeypatch.setattr(deeplab_v3, "FAMILY", family)
    registry._load.cache_clear()
    yield tmp_path
    registry._load.cache_clear()


def _backbone_weights(model) -> list[np.ndarray]:
    return [w.numpy() for w in model.get_layer("block_6_expand").weights]


def test_imagenet_from_weights_dirs_any_input_size(offline, caplog):
    from conftest import shared_path

    folder = shared_path(*IMAGENET_DIR)
    import logging

    with caplog.at_level(logging.INFO, logger="segzoo"):
        model = build_model("deeplab_v3", input_shape=(96, 128, 3), num_classes=3, aspp="none",
                            pretrained_weights="imagenet", weights_dirs=[folder])
    used = folder / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    assert str(used) in caplog.text  # which file was used is logged
    import h5py

    with h5py.File(used, "r") as handle:
        group = handle["block_6_expand"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
        want = [np.asarray(group[n]) for n in names]
    for got, ref in zip(_backbone_weights(model), want):
        np.testing.assert_array_equal(got, ref)


def test_imagenet_offline_names_file_and_every_folder(offline, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    with pytest.raises(ModelError) as err:
        build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, pretrained_weights="imagenet",
                    weights_dirs=[mine])
    message = str(err.value)
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5" in message
    assert str(mine) in message and str(tmp_path / "keras_home" / "models") in message
    assert "http://127.0.0.1:9/" in message  # where it is published


def test_imagenet_file_of_another_alpha_is_refused(offline, tmp_path):
    from conftest import shared_path

    wrong = shared_path(*IMAGENET_DIR) / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    renamed = tmp_path / "dirs" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"
    renamed.parent.mkdir()
    renamed.symlink_to(wrong)
    with pytest.raises(ModelError) as err:
        build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, pretrained_weights="imagenet",
                    weights_dirs=[renamed.parent])
    assert str(renamed) in str(err.value) and "layer 'Conv1'" in str(err.value) and "alpha" in str(err.value)
    with pytest.raises(ModelError, match="layer 'Conv1'"):  # the same file given by path
        build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, pretrained_weights=str(wrong))


def test_imagenet_needs_rgb():
    with pytest.raises(ModelError, match="3 input channels"):
        build_model("deeplab_v3", input_shape=(64, 64, 1), num_classes=3, pretrained_weights="imagenet")


def test_weights_file_by_name(tmp_path):
    trained = _tiny((64, 64, 3), 5, aspp="none")
    path = tmp_path / "trained.keras"
    trained.save(path)
    # Different num_classes: everything but the logits layer is transferred by name.
    model = build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, aspp="none", pretrained_weights=str(path))
    for got, want in zip(_backbone_weights(model), _backbone_weights(trained)):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model.get_layer("aspp_proj_conv").kernel.numpy(),
                                  trained.get_layer("aspp_proj_conv").kernel.numpy())
    # Keras 3 weights-only checkpoint of the same architecture (the mismatching logits are skipped).
    trained.save_weights(tmp_path / "trained.weights.h5")
    model = build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, aspp="none",
                        pretrained_weights=str(tmp_path / "trained.weights.h5"))
    for got, want in zip(_backbone_weights(model), _backbone_weights(trained)):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ModelError, match="neither a file nor a named checkpoint"):
        build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, pretrained_weights=str(tmp_path / "x.h5"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"\.h5, \.hdf5 or \.keras"):
        build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=3, pretrained_weights=str(tmp_path / "weights.bin"))


# --------------------------------------------------------------------------------------------- analysis
def test_macs_exact_for_known_layers():
    inputs = keras.Input((10, 12, 4))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)  # -> 5x6x8
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)  # -> 5x6x16
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(3)(x)
    model = keras.Model(inputs, x)
    total, rows = analysis.count_macs(model)
    conv, dw, dense = 3 * 3 * 4 * 8 * 5 * 6, 3 * 3 * 8 * 2 * 5 * 6, 16 * 3
    by_type = {r["type"]: r for r in rows}
    assert by_type["Conv2D"]["macs"] == conv and by_type["Conv2D"]["output_shape"] == [5, 6, 8]
    assert by_type["DepthwiseConv2D"]["macs"] == dw
    assert by_type["Dense"]["macs"] == dense
    assert by_type["BatchNormalization"]["macs"] == 0
    assert total == conv + dw + dense
    # The same graph nested as a sub-model is counted through the nesting.
    outer_in = keras.Input((10, 12, 4))
    outer = keras.Model(outer_in, keras.layers.Dense(2)(model(outer_in)))
    total_nested, rows_nested = analysis.count_macs(outer)
    assert total_nested == total + 3 * 2
    assert any(r["name"].startswith(f"{model.name}/") for r in rows_nested)
    assert analysis.count_params(outer) == outer.count_params()


def test_deeplab_macs_params_and_summary():
    small = _tiny((64, 64, 3), 5, aspp="v1")
    big = _tiny((128, 128, 3), 5, aspp="v1")
    s_small, s_big = analysis.summarize(small), analysis.summarize(big)
    assert s_small["params"] == small.count_params() == s_big["params"]
    assert s_small["input_shape"] == [64, 64, 3] and s_small["output_shape"] == [64, 64, 5]
    assert s_small["layers"] == len(small.layers) - 1  # every layer but the InputLayer
    assert 3.6 < s_big["macs"] / s_small["macs"] < 4.4
    # One ASPP layer by hand: 3x3 conv, 192 -> 256 channels, on the 8x8 map of the 128 input.
    rows = {r["name"]: r for r in analysis.count_macs(big)[1]}
    assert rows["aspp_b1_conv"]["macs"] == 3 * 3 * 192 * 256 * 8 * 8
    assert rows["upsampled_logits"]["output_shape"] == [128, 128, 5]


# ------------------------------------------------------------------------------------------------ TFLite
ALLOWED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "CONCATENATION", "RESIZE_BILINEAR", "QUANTIZE",
               "DEQUANTIZE", "PAD", "AVERAGE_POOL_2D", "MUL", "RELU6", "RELU"}


def _int8_tflite(model) -> bytes:
    """Per-tensor int8 conversion at batch 1 (a fixed batch lets the converter fuse dilated convs and fold BN)."""
    import tensorflow as tf

    shape = (1, *model.input.shape[1:])
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.float32))
    rng = np.random.default_rng(0)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.uniform(-1, 1, shape).astype(np.float32)] for _ in range(4))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_disable_per_channel = True
    return converter.convert()


@pytest.mark.slow
@pytest.mark.parametrize("aspp", ["none", "v2"])
def test_converts_to_int8_tflite_with_builtin_ops_only(aspp):
    interpreter_mod = pytest.importorskip("ai_edge_litert.interpreter")
    model = _tiny((64, 64, 3), 5, aspp=aspp)
    interpreter = interpreter_mod.Interpreter(model_content=_int8_tflite(model))
    ops = {op["op_name"] for op in interpreter._get_ops_details()}
    assert ops <= ALLOWED_OPS, ops - ALLOWED_OPS  # no Flex/custom ops, no SPACE_TO_BATCH_ND for dilations
    if aspp == "none":
        assert ops - {"QUANTIZE", "DEQUANTIZE"} <= {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "MEAN", "CONCATENATION",
                                                     "RESIZE_BILINEAR"}  # the X-LINUX-AI 257 op set
    interpreter.allocate_tensors()
    out = interpreter.get_output_details()[0]
    assert tuple(out["shape"]) == (1, 64, 64, 5)
    for tensor in interpreter.get_tensor_details():
        scales = tensor["quantization_parameters"]["scales"]
        assert len(scales) <= 1, f"{tensor['name']} is per-channel"


def test_package_dependencies_point_one_way():
    """data does not import config, benchmarking does not import quantization (no import cycles between them)."""
    code = ("import sys; import segzoo.data.resolve, segzoo.data.layouts, segzoo.benchmarking.report, "
            "segzoo.benchmarking.board; "
            "bad = [m for m in sys.modules if m.startswith(('segzoo.config', 'segzoo.quantization'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
