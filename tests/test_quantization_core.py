"""Quantization core: TFLite conversion (per-tensor / per-channel / I/O types / mixed precision), file inspection,
per-tensor formatting (BN folding, cross-layer equalization, bias absorption) and the mixed-precision search.

Models are tiny registry DeepLabV3s (64x64, alpha 0.35, 5 classes) whose BatchNorm statistics are randomized with a
seeded RNG so that channel ranges differ by 10-100x after folding: the situation that makes per-tensor hard.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from segzoo.errors import ModelError  # noqa: E402
from segzoo.quantization.converter import (  # noqa: E402
    calibrate,
    convert,
    convert_calibrated,
    tensor_layers,
)
from segzoo.litert.inspect import inspect_tflite, npu_ready  # noqa: E402
from segzoo.quantization.mixed import _batches, layer_errors, search_float_layers  # noqa: E402

keras = pytest.importorskip("keras")

HW = (64, 64)
ASPP = ("v1", "v2", "none")


# --------------------------------------------------------------------------------------------- fixtures
def randomize_bn(model: "keras.Model", seed: int = 0) -> None:
    """Seeded BatchNorm statistics with widely different per-channel scales (variance spans ~e^+-3)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.lognormal(0, 0.5, c), rng.normal(0.2, 0.5, c), rng.normal(0, 0.3, c),
                               rng.lognormal(0, 1.5, c) ** 2])


def structured_images(n: int, seed: int) -> np.ndarray:
    """Preprocessed ([-1, 1]) smooth colour fields with filled discs and mild noise, like natural images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HW[0], 0:HW[1]] / HW[0]
    images = []
    for _ in range(n):
        corners = rng.uniform(0, 255, (2, 2, 3))
        image = (corners[0, 0] * ((1 - yy) * (1 - xx))[..., None] + corners[0, 1] * ((1 - yy) * xx)[..., None]
                 + corners[1, 0] * (yy * (1 - xx))[..., None] + corners[1, 1] * (yy * xx)[..., None])
        for _ in range(3):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.35)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 8, image.shape)
        images.append(np.clip(image, 0, 255) / 127.5 - 1.0)
    return np.asarray(images, np.float32)


def build(aspp: str) -> "keras.Model":
    from segzoo.models.registry import build_model

    keras.utils.set_random_seed(0)
    model = build_model("deeplab_v3", input_shape=(*HW, 3), num_classes=5, alpha=0.35, aspp=aspp)
    randomize_bn(model)
    return model


@pytest.fixture(scope="module")
def models() -> dict[str, "keras.Model"]:
    return {aspp: build(aspp) for aspp in ASPP}


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return structured_images(16, seed=0)


@pytest.fixture(scope="module")
def evaluation() -> np.ndarray:
    return structured_images(8, seed=1)


def rep_of(images: np.ndarray):
    return lambda: (images[i:i + 1] for i in range(len(images)))


@pytest.fixture(scope="module")
def int8_file(models, calib, tmp_path_factory):
    """``int8_file(aspp, granularity)``: each model's int8 file converted directly (calibration images ``calib``),
    once for all the tests of the module that read it."""
    folder = tmp_path_factory.mktemp("int8")

    @functools.cache
    def converted(aspp: str, granularity: str = "per_tensor"):
        return convert(models[aspp], rep_of(calib), folder / f"{aspp}_{granularity}.tflite", granularity=granularity)

    return converted


def run_tflite(path, images: np.ndarray) -> np.ndarray:
    from segzoo.runners import load_runner

    return load_runner(path).predict(images)


def error_vs_float(path, images: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(mean |logit error| / mean |logit|, argmax agreement) of a TFLite model against the float logits."""
    out = run_tflite(path, images)
    return (float(np.abs(out - reference).mean() / np.abs(reference).mean()),
            float((out.argmax(-1) == reference.argmax(-1)).mean()))


# ------------------------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("aspp", ASPP)
def test_per_tensor_file_is_all_int8_with_one_scale_per_tensor(int8_file, aspp):
    path = int8_file(aspp)
    summary = inspect_tflite(path)
    assert not summary["has_per_channel"] and summary["per_channel_tensors"] == []
    assert summary["int8_compute_share"] == 1.0 and summary["float_ops"] == []
    assert npu_ready(summary)
    compute = [op for op in summary["ops"] if op["name"] not in ("QUANTIZE", "DEQUANTIZE")]
    assert compute and all(op["int8"] and not op["per_channel"] for op in compute)
    # fixed batch 1: dilated convolutions fused, BN folded, no SPACE_TO_BATCH_ND / MUL
    assert {"SPACE_TO_BATCH_ND", "BATCH_TO_SPACE_ND", "MUL"}.isdisjoint(summary["op_histogram"])
    assert summary["input"]["shape"] == [1, *HW, 3]


def test_per_channel_file_has_per_channel_scales(int8_file):
    summary = inspect_tflite(int8_file("v1", "per_channel"))
    assert summary["has_per_channel"] and summary["per_channel_tensors"]
    assert any(op["per_channel"] for op in summary["ops"] if op["name"] == "DEPTHWISE_CONV_2D")
    assert not npu_ready(summary)


@pytest.mark.parametrize(("input_type", "output_type", "dtypes"), [
    ("uint8", "float", ("uint8", "float32")),
    ("int8", "int8", ("int8", "int8")),
    ("float", "float", ("float32", "float32")),
])
def test_input_output_types_are_honoured(models, calib, evaluation, tmp_path, input_type, output_type, dtypes):
    path = convert(models["none"], rep_of(calib), tmp_path / "io.tflite", input_type=input_type,
                   output_type=output_type)
    summary = inspect_tflite(path)
    assert (summary["input"]["dtype"], summary["output"]["dtype"]) == dtypes
    assert summary["int8_compute_share"] == 1.0
    if input_type != "float":
        assert summary["input"]["scale"] > 0
    reference = np.asarray(models["none"](evaluation, training=False))
    error, _ = error_vs_float(path, evaluation, reference)  # the runner handles the quantized I/O
    assert error < 0.5


def test_one_calibration_serves_every_granularity(models, calib, evaluation, int8_file, tmp_path):
    calibrated = calibrate(models["v1"], rep_of(calib))
    for granularity in ("per_tensor", "per_channel"):
        direct = int8_file("v1", granularity)
        reused = convert_calibrated(calibrated, tmp_path / f"reused_{granularity}.tflite", granularity=granularity)
        assert inspect_tflite(reused)["has_per_channel"] == (granularity == "per_channel")
        np.testing.assert_array_equal(run_tflite(direct, evaluation), run_tflite(reused, evaluation))


def test_float_tflite_matches_keras(models, evaluation, tmp_path):
    path = convert(models["v2"], None, tmp_path / "f.tflite", quantize=False, input_type="float")
    summary = inspect_tflite(path)
    assert summary["int8_compute_share"] == 0.0 and summary["input"]["dtype"] == "float32"
    assert "MUL" not in summary["op_histogram"]  # BN folded at batch 1
    reference = np.asarray(models["v2"](evaluation, training=False))
    np.testing.assert_allclose(run_tflite(path, evaluation), reference, atol=1e-3 * np.abs(reference).max())


# ------------------------------------------------------------------------------------------------ errors
def test_no_calibration_data_is_a_model_error(models, tmp_path):
    with pytest.raises(ModelError, match="no calibration data"):
        convert(models["none"], None, tmp_path / "x.tflite")
    with pytest.raises(ModelError, match="no calibration data"):
        convert(models["none"], lambda: iter(()), tmp_path / "x.tflite")
    assert not (tmp_path / "x.tflite").exists()


def test_bad_calibration_shape_and_options_are_model_errors(models, tmp_path):
    with pytest.raises(ModelError, match="expected float32 batches"):
        convert(models["none"], lambda: iter([np.zeros((1, 32, 32, 3), np.float32)]), tmp_path / "x.tflite")
    with pytest.raises(ModelError, match="granularity"):
        convert(models["none"], None, tmp_path / "x.tflite", granularity="per_axis")
    with pytest.raises(ModelError, match="needs a quantized model"):
        convert(models["none"], None, tmp_path / "x.tflite", quantize=False)  # default uint8 input
    assert not list(tmp_path.iterdir())


def test_unsupported_op_is_a_model_error_naming_it(calib, tmp_path):
    inputs = keras.Input((*HW, 3), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    model = keras.Model(inputs, keras.ops.sin(x))  # SIN has no int8 kernel
    with pytest.raises(ModelError, match="(?i)sin"):
        convert(model, rep_of(calib[:2]), tmp_path / "sin.tflite")
    assert not (tmp_path / "sin.tflite").exists()


def test_unknown_float_layer_is_a_model_error(models, calib, tmp_path):
    with pytest.raises(ModelError, match="'block_3_depthwse' matches no op.*Did you mean 'block_3_depthwise'"):
        convert(models["none"], rep_of(calib[:2]), tmp_path / "x.tflite", float_layers=["block_3_depthwse"])


def test_inspect_missing_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        inspect_tflite(tmp_path / "missing.tflite")


# ------------------------------------------------------------------------------------------- formatting
@pytest.mark.parametrize("aspp", ASPP)
def test_optimize_keeps_the_float_model_and_folds_all_batch_norms(models, aspp):
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = models[aspp]
    x = np.random.default_rng(2).uniform(-1, 1, (4, *HW, 3)).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    optimized, report = optimize_for_per_tensor(model)
    reference = np.asarray(model(x, training=False))
    out = np.asarray(optimized(x, training=False))
    assert np.abs(out - reference).max() <= 1e-4 * np.abs(reference).max()  # float32 round-off (~1e-5 seen)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in optimized.layers)
    assert report["bn_folded"] == sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)
    assert report["bn_left"] == [] and report["cle_groups"] > 10 and report["channel_relus"] > 0
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))  # input model untouched


def test_optimize_works_on_a_model_loaded_from_keras_file(tmp_path):
    from segzoo.models.registry import build_model
    from segzoo.quantization.formatting import optimize_for_per_tensor

    keras.utils.set_random_seed(1)
    model = build_model("deeplab_v3", input_shape=(32, 64, 3), num_classes=3, alpha=1.0, aspp="v2",
                        output_stride=8, upsample=False)
    randomize_bn(model, seed=1)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    x = np.random.default_rng(3).uniform(-1, 1, (2, 32, 64, 3)).astype(np.float32)
    optimized, report = optimize_for_per_tensor(loaded, x)
    reference = np.asarray(model(x, training=False))
    assert report["bn_left"] == [] and report["biases_absorbed"] > 0
    assert np.abs(np.asarray(optimized(x)) - reference).max() <= 1e-4 * np.abs(reference).max()


def test_optimized_model_saves_loads_and_converts_to_int8_minimum(models, calib, tmp_path):
    from segzoo.quantization.formatting import CUSTOM_OBJECTS, optimize_for_per_tensor

    optimized, report = optimize_for_per_tensor(models["v1"])
    optimized.save(tmp_path / "opt.keras")
    loaded = keras.saving.load_model(tmp_path / "opt.keras", custom_objects=CUSTOM_OBJECTS, compile=False)
    np.testing.assert_array_equal(np.asarray(loaded(calib[:2])), np.asarray(optimized(calib[:2])))
    summary = inspect_tflite(convert(loaded, rep_of(calib), tmp_path / "opt.tflite"))
    assert summary["op_histogram"].get("MINIMUM") == report["channel_relus"]  # per-channel ReLU6 caps
    assert npu_ready(summary)


@pytest.mark.parametrize("aspp", ASPP)
def test_optimized_per_tensor_model_is_closer_to_float(models, calib, evaluation, int8_file, tmp_path, aspp):
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = models[aspp]
    reference = np.asarray(model(evaluation, training=False))
    plain = int8_file(aspp)
    optimized, report = optimize_for_per_tensor(model, calib)
    assert report["biases_absorbed"] > 0
    better = convert(optimized, rep_of(calib), tmp_path / "opt.tflite")
    assert npu_ready(inspect_tflite(better))
    plain_error, plain_agree = error_vs_float(plain, evaluation, reference)
    opt_error, opt_agree = error_vs_float(better, evaluation, reference)
    print(f"{aspp}: per-tensor logit error {plain_error:.3f} -> {opt_error:.3f}, "
          f"argmax agreement {plain_agree:.3f} -> {opt_agree:.3f}")
    assert opt_error < 0.6 * plain_error
    assert opt_agree >= plain_agree - 0.005  # the random "none" model predicts nearly one class: both ~1.0


def test_bias_absorption_is_exact_on_calibration_images_and_close_on_others(models, calib, evaluation):
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = models["v2"]
    optimized, report = optimize_for_per_tensor(model, calib)
    assert report["biases_absorbed"] > 0
    reference = np.asarray(model(calib, training=False))
    out = np.asarray(optimized(calib, training=False))
    assert np.abs(out - reference).max() <= 1e-4 * np.abs(reference).max()  # float32 round-off
    held_out = np.asarray(model(evaluation, training=False))
    out = np.asarray(optimized(evaluation, training=False))
    assert np.abs(out - held_out).max() <= 1e-2 * np.abs(held_out).max()  # statistically exact (margin)
    assert (out.argmax(-1) == held_out.argmax(-1)).mean() >= 0.999


def test_optimize_skip_mode_adds_no_layer_and_bad_mode_is_an_error(models):
    from segzoo.quantization.formatting import optimize_for_per_tensor

    optimized, report = optimize_for_per_tensor(models["v2"], relu6="skip")
    assert report["channel_relus"] == 0 and report["cle_groups"] > 0
    assert {type(layer).__name__ for layer in optimized.layers} <= {type(layer).__name__ for layer in
                                                                    models["v2"].layers}
    with pytest.raises(ModelError, match="relu6"):
        optimize_for_per_tensor(models["v2"], relu6="relu")


# --------------------------------------------------------------------------------------- mixed precision
def test_float_layers_stay_float_and_the_rest_int8(models, calib, tmp_path):
    path = convert(models["v1"], rep_of(calib), tmp_path / "mixed.tflite",
                   float_layers=["block_3_depthwise", "aspp_proj_conv"])
    summary = inspect_tflite(path)
    assert len(summary["float_ops"]) == 2
    assert {layer for t in summary["float_ops"] for layer in tensor_layers(t)} >= {"block_3_depthwise",
                                                                                   "aspp_proj_conv"}
    compute = [op for op in summary["ops"] if op["name"] not in ("QUANTIZE", "DEQUANTIZE")]
    assert sum(not op["int8"] for op in compute) == 2
    assert not summary["has_per_channel"]


def test_layer_errors_name_ops_that_convert_keeps_in_float(models, calib, evaluation, tmp_path):
    model = models["v2"]
    calibrated = calibrate(model, rep_of(calib))
    errors = layer_errors(model, rep_of(calib[:4]), calibrated=calibrated)
    ratios = [row["rmse_per_scale"] for row in errors]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > 1.0  # randomized BN: some layers quantize badly
    assert {"CONV_2D", "DEPTHWISE_CONV_2D"} & {row["op"] for row in errors[:5]}
    worst = [row["tensor"] for row in errors[:3]]
    summary = inspect_tflite(convert_calibrated(calibrated, tmp_path / "worst.tflite", float_layers=worst))
    assert len(summary["float_ops"]) == 3 and summary["int8_compute_share"] < 1.0


def test_search_grows_batches_then_bisects():
    errors = [{"tensor": f"t{i}"} for i in range(20)]
    calls: list[int] = []

    def evaluate(layers):  # mIoU recovers as more layers stay float: 0.50 + 0.04 per layer
        calls.append(len(layers))
        return 0.50 + 0.04 * len(layers)

    chosen, trace = search_float_layers(errors, evaluate, float_miou=0.80, max_miou_drop=0.05, max_float_layers=10)
    assert chosen == [f"t{i}" for i in range(7)]  # 0.50 + 0.28 = 0.78: drop 0.02; 6 layers: drop 0.06
    assert calls == [1, 3, 7, 5, 6]  # batches 1, 2, 4, then bisect between 3 (fails) and 7 (fits)
    assert [t["within_budget"] for t in trace] == [False, False, True, False, False]
    assert _batches(list("abcdefghij"), 5) == [list("a"), list("abc"), list("abcde")]


def test_search_returns_best_when_budget_never_met():
    errors = [{"tensor": f"t{i}"} for i in range(6)]
    chosen, trace = search_float_layers(errors, lambda layers: 0.1 * len(layers) / 3, float_miou=0.9,
                                        max_miou_drop=0.01, max_float_layers=4)
    assert chosen == ["t0", "t1", "t2", "t3"] and len(trace) == 3
    assert not any(t["within_budget"] for t in trace)
