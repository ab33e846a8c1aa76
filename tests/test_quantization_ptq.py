"""Post-training steps that make per-tensor int8 hold: constant-channel folding, activation ranges chosen by error,
empirical bias correction, AdaRound with weights snapped onto their grid, and quantization-aware fine-tuning.

Each test fails when its mechanism is removed: it checks the effect on real converter output (scales and int8
weights read back from the .tflite file, int8 vs float outputs), not only that the code ran.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from segzoo.quantization.converter import calibrate, quantize_calibrated  # noqa: E402
from test_quantization_core import build, rep_of, structured_images  # noqa: E402

keras = pytest.importorskip("keras")

HW = (64, 64)


def run_bytes(content: bytes, images: np.ndarray) -> np.ndarray:
    """Float outputs of a TFLite model given as bytes (float I/O)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    results = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.asarray(results)


def scales_by_name(content: bytes) -> dict[str, float]:
    """Quantization scale of every tensor, read with LiteRT directly."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    return {t["name"]: float(t["quantization_parameters"]["scales"][0])
            for t in interpreter.get_tensor_details() if len(t["quantization_parameters"]["scales"]) == 1}


def int8_io(calibrated: bytes) -> bytes:
    return quantize_calibrated(calibrated, input_type="float", output_type="float")


# --------------------------------------------------------------------------------------- dead channels
def dead_channel_model() -> "keras.Model":
    """Two producers with constant channels after BN folding (gamma 0), as ImageNet MobileNetV2's Conv1 has.

    A: 3x3 conv, channels 0 and 1 constant relu6(-1) = 0, channel 2 constant relu6(0.5) = 0.5, feeding a padded
    3x3 depthwise conv whose weights on channels 0 and 1 are 40x the others. B: 1x1 conv, channel 0 constant 0.7
    feeding a 1x1 conv (no padding).
    """
    rng = np.random.default_rng(0)
    inputs = keras.Input((*HW, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="a")(inputs)
    a = keras.layers.BatchNormalization(name="a_bn")(a)
    a = keras.layers.ReLU(6.0, name="a_relu")(a)
    d = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(a)
    d = keras.layers.ReLU(6.0, name="dw_relu")(d)
    b = keras.layers.Conv2D(4, 1, name="b")(inputs)
    b = keras.layers.BatchNormalization(name="b_bn")(b)
    b = keras.layers.ReLU(6.0, name="b_relu")(b)
    c = keras.layers.Conv2D(5, 1, name="c")(b)
    x = keras.layers.Concatenate(name="cat")([d, c])
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="logits")(x))
    gamma = np.array([0.0, 0.0, 0.0, 0.01, 1.0, 1.0])  # channel 3: alive, but below 0 on every image
    model.get_layer("a_bn").set_weights([gamma, np.array([-1.0, -1.0, 0.5, -1.0, 0.2, 0.3]), np.zeros(6),
                                         np.ones(6)])
    dw = rng.normal(0, 0.3, (3, 3, 6, 1))
    dw[:, :, :2] *= 40.0
    model.get_layer("dw").set_weights([dw, rng.normal(0, 0.1, 6)])
    model.get_layer("b_bn").set_weights([np.array([0.0, 1, 1, 1]), np.array([0.7, 0, 0, 0]), np.zeros(4),
                                         np.ones(4)])
    return model


def test_dead_channels_fold_exactly_and_leave_what_padding_would_change() -> None:
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = dead_channel_model()
    x = structured_images(4, seed=3)
    reference = np.asarray(model(x))
    optimized, report = optimize_for_per_tensor(model, relu6="skip", dead_channels="exact")
    dead = report["dead_channels"]
    # a: channels 0, 1 (a2 is left: its 0.5 would meet dw's zero padding); b: channel 0; then dw's channels 0, 1,
    # whose weights are now all zero, are constant in turn and fold into the logits
    assert dead["layers"] == {"a": 2, "b": 1, "dw": 2} and dead["left"] == 1 and dead["calibration_dead"] == 0
    assert report["exact"] is True
    np.testing.assert_allclose(np.asarray(optimized(x)), reference, atol=1e-5 * np.abs(reference).max())
    dw = optimized.get_layer("dw").get_weights()[0]
    assert np.all(dw[:, :, :2] == 0)  # the 0-constants are folded, the 0.5 one is kept (zero padding)
    np.testing.assert_array_equal(dw[:, :, 2], model.get_layer("dw").get_weights()[0][:, :, 2])
    assert np.all(optimized.get_layer("c").get_weights()[0][:, :, 0] == 0)  # 0.7-constant folded into c's bias
    x_other = np.random.default_rng(9).uniform(-3, 3, (2, *HW, 3)).astype(np.float32)  # any input: exact
    np.testing.assert_allclose(np.asarray(optimized(x_other)), np.asarray(model(x_other)),
                               atol=1e-5 * np.abs(np.asarray(model(x_other))).max())
    off, report_off = optimize_for_per_tensor(model, relu6="skip", dead_channels="off")
    assert report_off["dead_channels"] is None
    assert np.abs(off.get_layer("dw").get_weights()[0][:, :, :2]).max() > 3.0


def test_dead_channel_folding_lowers_the_per_tensor_error() -> None:
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = dead_channel_model()
    calib, held_out = structured_images(16, seed=0), structured_images(8, seed=1)
    reference = np.asarray(model(held_out))
    errors = {}
    for mode in ("off", "exact"):
        optimized, _ = optimize_for_per_tensor(model, relu6="skip", dead_channels=mode)
        out = run_bytes(int8_io(calibrate(optimized, rep_of(calib))), held_out)
        errors[mode] = float(np.abs(out - reference).mean() / np.abs(reference).mean())
    assert errors["exact"] < 0.5 * errors["off"], errors


def test_calibration_dead_channels_are_exact_on_calibration_images() -> None:
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = dead_channel_model()
    calib = structured_images(8, seed=0)
    optimized, report = optimize_for_per_tensor(model, calib, relu6="skip", dead_channels="calibration")
    assert report["dead_channels"]["calibration_dead"] == 1 and report["exact"] is False
    assert np.all(optimized.get_layer("dw").get_weights()[0][:, :, 3] == 0)
    reference = np.asarray(model(calib))
    assert np.abs(np.asarray(optimized(calib)) - reference).max() <= 1e-5 * np.abs(reference).max()
    exact, report = optimize_for_per_tensor(model, calib, relu6="skip", dead_channels="exact")
    assert report["dead_channels"]["calibration_dead"] == 0
    assert np.abs(exact.get_layer("dw").get_weights()[0][:, :, 3]).max() > 0


def test_bad_dead_channel_mode_is_a_model_error() -> None:
    from segzoo.errors import ModelError
    from segzoo.quantization.formatting import optimize_for_per_tensor

    with pytest.raises(ModelError, match="dead_channels"):
        optimize_for_per_tensor(dead_channel_model(), dead_channels="maybe")


# ------------------------------------------------------------------------------------ activation ranges
@pytest.fixture(scope="module")
def v1_calibrated() -> tuple["keras.Model", bytes, np.ndarray]:
    model = build("v1")
    calib = structured_images(16, seed=0)
    return model, calibrate(model, rep_of(calib)), calib


@pytest.mark.parametrize("method", ["mse", "percentile"])
def test_range_rewrite_changes_exactly_the_chosen_tensors_scales(v1_calibrated, method) -> None:
    from segzoo.quantization.flatbuffer import FlatModel
    from segzoo.quantization.ranges import select_ranges

    _, calibrated, calib = v1_calibrated
    rewritten, report = select_ranges(calibrated, calib, method, percentile=99.9)
    assert report["changed"] == len(report["changed_tensors"]) > 0
    flat = FlatModel(rewritten)
    activations = {flat.tensor_name(t) for op in flat.ops for t in op.outputs}
    before, after = scales_by_name(int8_io(calibrated)), scales_by_name(int8_io(rewritten))
    compared = activations & set(before) & set(after)  # bias scales follow their input's scale: not compared
    changed = {name for name in compared if not np.isclose(before[name], after[name], rtol=1e-6)}
    chosen = set(report["changed_tensors"])
    assert len(compared) > 0.9 * len(activations) and chosen & compared
    assert changed <= chosen  # no other activation moved
    for index in range(len(flat.graph.tensors)):  # every chosen tensor has the chosen range's scale in the file
        name = flat.tensor_name(index)
        if name in chosen & compared:
            low, high = flat.min_max(index)
            assert after[name] == pytest.approx((max(high, 0) - min(low, 0)) / 255, rel=1e-3)
            assert after[name] <= before[name] * 1.0001  # narrowed, never widened beyond the min/max


def test_concatenation_inputs_share_one_range(v1_calibrated) -> None:
    from segzoo.quantization.flatbuffer import FlatModel
    from segzoo.quantization.ranges import select_ranges

    _, calibrated, calib = v1_calibrated
    rewritten, _ = select_ranges(calibrated, calib, "mse")
    flat = FlatModel(rewritten)
    concat = [op for op in flat.ops if op.name == "CONCATENATION"]
    assert concat
    for op in concat:
        members = [t for t in op.inputs + op.outputs if not flat.is_constant(t)]
        assert len({flat.min_max(t) for t in members}) == 1


def test_mse_range_clips_the_tails_and_is_the_best_candidate() -> None:
    from segzoo.quantization.ranges import MSE_LOW_FACTOR, mse_range, quantization_mse

    values = np.random.default_rng(0).laplace(0, 1, 100_000)  # 8-bit MSE optimum: clip near 9.9 (Banner 2019)
    low, high = float(values.min()), float(values.max())
    chosen = mse_range(values, low, high)
    assert low < chosen[0] < -8 and 8 < chosen[1] < high
    best = quantization_mse(values, [chosen[0]], [chosen[1]])[0]
    assert best < 0.9 * quantization_mse(values, [low], [high])[0]
    grid = np.geomspace(MSE_LOW_FACTOR, 1, 15)
    lows, highs = np.meshgrid(low * grid, high * grid)
    brute = quantization_mse(values, lows.ravel(), highs.ravel())  # exact values, not the histogram
    assert best <= 1.05 * brute.min()


def test_minmax_keeps_the_calibrated_model_and_bad_method_is_an_error(v1_calibrated) -> None:
    from segzoo.errors import ModelError
    from segzoo.quantization.ranges import select_ranges

    _, calibrated, calib = v1_calibrated
    assert select_ranges(calibrated, calib, "minmax")[0] == calibrated
    with pytest.raises(ModelError, match="activation_ranges"):
        select_ranges(calibrated, calib, "kl")


# --------------------------------------------------------------------------------------- bias correction
def test_bias_correction_reduces_the_mean_output_error_on_held_out_images(v1_calibrated) -> None:
    from segzoo.quantization.bias_correction import correct_biases
    from segzoo.quantization.flatbuffer import FlatModel

    model, calibrated, calib = v1_calibrated
    held_out = structured_images(8, seed=1)
    reference = np.asarray(model(held_out))
    corrected, report = correct_biases(calibrated, calib)
    assert report["ops"] > 10
    plain_out, corrected_out = run_bytes(int8_io(calibrated), held_out), run_bytes(int8_io(corrected), held_out)

    def channel_bias(out: np.ndarray) -> float:  # mean over logit channels of |E[int8 - float]|
        return float(np.abs((out - reference).reshape(-1, reference.shape[-1]).mean(axis=0)).mean())

    print(f"bias {channel_bias(plain_out):.4f} -> {channel_bias(corrected_out):.4f}, mean |error| "
          f"{np.abs(plain_out - reference).mean():.4f} -> {np.abs(corrected_out - reference).mean():.4f}")
    assert channel_bias(corrected_out) < 0.7 * channel_bias(plain_out)
    assert np.abs(corrected_out - reference).mean() < np.abs(plain_out - reference).mean()
    # only biases moved: every weight tensor and every activation range is the one of the calibrated model
    a, b = FlatModel(calibrated), FlatModel(corrected)
    moved = [a.tensor_name(i) for i in range(len(a.graph.tensors)) if a.is_constant(i)
             and int(a.graph.tensors[i].type) == 0 and not np.array_equal(a.array(i), b.array(i))]
    biases = {a.tensor_name(op.inputs[2]) for op in a.ops if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D")}
    assert moved and set(moved) <= biases
    assert all(a.min_max(i) == b.min_max(i) for i in range(len(a.graph.tensors)))


# ---------------------------------------------------------------------------------------------- AdaRound
@pytest.mark.slow
def test_adaround_levels_survive_conversion_bit_exact_and_lower_the_error(v1_calibrated) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from segzoo.quantization.adaround import adaround
    from segzoo.quantization.flatbuffer import FlatModel

    model, calibrated, calib = v1_calibrated
    rounded, report = adaround(calibrated, calib[:4], iterations=60)
    assert report["layers"] > 20 and 0.0 < report["flipped"] < 0.5 and report["recon_gain"] < 1.0
    flat = FlatModel(rounded)
    quantized = int8_io(rounded)
    interpreter = Interpreter(model_content=quantized)
    tensors = {t["name"]: t for t in interpreter.get_tensor_details()}
    checked = 0
    for op in flat.ops:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            continue
        snapped = flat.array(op.inputs[1])
        scale = np.abs(snapped).max() / 127
        levels = np.round(snapped / scale).astype(np.int64)
        assert np.abs(snapped / scale - levels).max() < 1e-3 and np.abs(levels).max() == 127  # on its grid
        detail = tensors[flat.tensor_name(op.inputs[1])]
        assert detail["dtype"] == np.int8 and detail["quantization_parameters"]["scales"][0] == pytest.approx(scale)
        np.testing.assert_array_equal(interpreter.get_tensor(detail["index"]).astype(np.int64), levels)
        checked += 1
    assert checked == report["layers"]


# ------------------------------------------------------------------------------------------------- QAT
@pytest.mark.slow
def test_qat_trains_a_few_steps_and_converts_with_its_learned_ranges() -> None:
    import tensorflow as tf

    from segzoo.quantization import qat
    from segzoo.quantization.converter import tensor_layers
    from segzoo.quantization.flatbuffer import FlatModel
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from segzoo.quantization.ranges import tied_groups
    from segzoo.training.losses import IgnoreAwareCrossEntropy

    model, _ = optimize_for_per_tensor(build("none"), relu6="skip")
    images = structured_images(8, seed=0)
    labels = (images[..., :1] > 0).astype(np.int32)  # a learnable 2-class target
    clone = qat.fake_quant_model(model)
    fq = [layer for layer in clone.layers if isinstance(layer, qat.ActivationFakeQuant)]
    assert len(fq) > 20 and not any(isinstance(layer, qat.ActivationFakeQuant) for layer in model.layers)
    qat.initialise_ranges(clone, model, images)
    start = qat.learned_ranges(clone)
    reference = np.asarray(model(images))
    assert np.abs(np.asarray(clone(images)) - reference).mean() < 0.1 * np.abs(reference).mean()  # int8-like
    before = [w.copy() for w in clone.get_layer("logits").get_weights()]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4).repeat()
    losses = qat.fine_tune(clone, dataset, epochs=2, learning_rate=1e-3, loss=IgnoreAwareCrossEntropy(5),
                           steps_per_epoch=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    learned = qat.learned_ranges(clone)
    assert any(learned[name] != start[name] for name in learned)  # the EMA moved
    assert not np.array_equal(before[0], clone.get_layer("logits").get_weights()[0])  # weights were trained
    qat.plain_weights(clone, model)
    np.testing.assert_array_equal(model.get_layer("logits").get_weights()[0],
                                  clone.get_layer("logits").get_weights()[0])
    calibrated, report = qat.apply_ranges(calibrate(model, rep_of(images)), learned)
    assert report["tensors"] > 20
    flat = FlatModel(calibrated)
    scales = scales_by_name(int8_io(calibrated))
    shared = {t for group in tied_groups(flat) if len(group) > 1 for t in group}  # these get their group's union
    checked = 0
    for op in flat.ops:
        if op.name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD") or op.outputs[0] in shared:
            continue
        name = flat.tensor_name(op.outputs[0])
        source = next((n for n in tensor_layers(name) if n in learned), None)
        if source is None or name not in scales:
            continue
        low, high = learned[source]
        assert scales[name] == pytest.approx((high - low) / 255, rel=1e-3), name  # the file keeps the learned range
        checked += 1
    assert checked > 15


# ------------------------------------------------------------------------------- whole pipeline, real net
@pytest.mark.slow
def test_default_steps_hold_per_tensor_on_an_imagenet_backbone(tmp_path) -> None:
    """ImageNet MobileNetV2 (real weights: 5 of Conv1's 16 channels are constant after BN folding) in DeepLabV3,
    on real CamVid frames: the default steps fold the constant channels and bring the int8 per-tensor logits far
    closer to the float ones than the old defaults (BN folding, CLE, absorption, min/max)."""
    import cv2

    from conftest import shared_path
    from segzoo.models.registry import build_model
    from segzoo.quantization import bias_correction, ranges
    from segzoo.quantization.formatting import optimize_for_per_tensor

    weights = shared_path("pretrained", "imagenet_mobilenet_v2", "models")
    frames = sorted(shared_path("datasets", "camvid", "CamVid", "train").glob("*.png"))[:24]
    images = np.stack([cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (128, 96),
                                  interpolation=cv2.INTER_AREA) for f in frames]).astype(np.float32) / 127.5 - 1
    calib, held_out = images[:16], images[16:]
    keras.utils.set_random_seed(0)
    model = build_model("deeplab_v3", input_shape=(96, 128, 3), num_classes=11, alpha=0.35, aspp="v2",
                        pretrained_weights="imagenet", weights_dirs=[weights])
    reference = np.asarray(model(held_out))

    def error(content: bytes) -> float:
        return float(np.abs(run_bytes(content, held_out) - reference).mean() / np.abs(reference).mean())

    old, _ = optimize_for_per_tensor(model, calib, relu6="skip", dead_channels="off")
    old_error = error(int8_io(calibrate(old, rep_of(calib))))
    new, report = optimize_for_per_tensor(model, calib, relu6="skip", dead_channels="calibration")
    assert report["dead_channels"]["layers"].get("Conv1") == 4  # the fifth is a 0.15 constant before a padded conv
    np.testing.assert_allclose(np.asarray(new(calib)), np.asarray(model(calib)), atol=1e-4 * np.abs(reference).max())
    calibrated, _ = ranges.select_ranges(calibrate(new, rep_of(calib)), calib, "mse")
    calibrated, _ = bias_correction.correct_biases(calibrated, calib)
    new_error = error(int8_io(calibrated))
    print(f"int8 per-tensor logit error on held-out CamVid: old defaults {old_error:.3f}, new {new_error:.3f}")
    assert new_error < 0.5 * old_error


# ------------------------------------------------------------------------------------ ReLU6 headroom CLE
def test_relu6_headroom_rescales_only_channels_with_room_below_the_cap() -> None:
    """A 1x1 conv -> ReLU6 -> depthwise pair whose depthwise channels 0 and 1 are 30x wider than 2 and 3: channel 0
    reaches the cap on the calibration images (never rescaled), channel 1 stays far below it (rescaled: its
    depthwise weights shrink), the ReLU6 stays a ReLU6 and the outputs on the calibration images are unchanged."""
    from segzoo.quantization.formatting import optimize_for_per_tensor

    inputs = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(4, 1, name="p")(inputs)
    x = keras.layers.ReLU(6.0, name="p_relu")(x)
    model = keras.Model(inputs, keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(x))
    model.get_layer("p").set_weights([np.array([[[[8.0, 0.1, 1.0, 1.0], [0.0, 0.0, 0.5, -0.5]]]]), np.zeros(4)])
    dw = np.random.default_rng(0).uniform(0.5, 1.0, (3, 3, 4, 1))
    dw[:, :, :2] *= 30.0
    model.get_layer("dw").set_weights([dw, np.zeros(4)])
    calib = np.random.default_rng(1).uniform(0, 1, (8, 8, 8, 2)).astype(np.float32)
    head, report = optimize_for_per_tensor(model, calib, relu6="headroom", dead_channels="off")
    _, skip_report = optimize_for_per_tensor(model, calib, relu6="skip", dead_channels="off")
    assert report["relu6_headroom_pairs"] == 1 and skip_report["cle_pairs"] == 0
    assert [type(layer).__name__ for layer in head.layers] == [type(layer).__name__ for layer in model.layers]
    new_dw = np.abs(head.get_layer("dw").get_weights()[0]).reshape(-1, 4).max(axis=0)
    old_dw = np.abs(dw).reshape(-1, 4).max(axis=0)
    assert new_dw[0] == pytest.approx(old_dw[0]) and new_dw[1] < 0.2 * old_dw[1]
    np.testing.assert_allclose(np.asarray(head(calib)), np.asarray(model(calib)), rtol=1e-5, atol=1e-4)


@pytest.mark.slow
def test_relu6_headroom_equalizes_through_relu6_without_new_ops_and_lowers_the_error() -> None:
    """``relu6="headroom"``: pairs across ReLU6 are equalized with the ReLU6 kept (no ChannelReLU, same layer
    types), the float model is unchanged on the calibration images (and within a small error on held-out ones),
    and the per-tensor int8 error on held-out images is lower than with ``skip``."""
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from test_quantization_core import build

    model = build("v1")
    calib, held_out = structured_images(16, seed=1), structured_images(8, seed=2)
    reference = np.asarray(model(held_out))

    def error(optimized) -> float:
        out = run_bytes(int8_io(calibrate(optimized, rep_of(calib))), held_out)
        return float(np.abs(out - reference).mean() / np.abs(reference).mean())

    skip, skip_report = optimize_for_per_tensor(model, calib, relu6="skip", dead_channels="off")
    head, report = optimize_for_per_tensor(model, calib, relu6="headroom", dead_channels="off")
    assert report["relu6_headroom_pairs"] > 10 and report["channel_relus"] == 0 and not report["exact"]
    assert sorted(type(layer).__name__ for layer in head.layers) == \
        sorted(type(layer).__name__ for layer in skip.layers)
    scale = np.abs(np.asarray(model(calib))).max()
    np.testing.assert_allclose(np.asarray(head(calib)), np.asarray(model(calib)), atol=1e-4 * scale)
    assert np.abs(np.asarray(head(held_out)) - reference).max() < 0.02 * np.abs(reference).max()
    skip_error, head_error = error(skip), error(head)
    print(f"held-out int8 logit error: skip {skip_error:.3f}, headroom {head_error:.3f}")
    assert head_error < 0.8 * skip_error


# ------------------------------------------------------------------------------------------------ timings
def test_step_timer_tells_waiting_from_computing_and_the_report_shows_both() -> None:
    import time

    from segzoo.quantization.quantize import StepTimer
    from segzoo.quantization.report import _timing_lines

    timer = StepTimer()
    with timer.step("waiting"):
        time.sleep(0.3)
    with timer.step("computing"):
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
    steps = timer.to_dict()["steps"]
    assert steps["waiting"]["wall_s"] >= 0.29 and steps["waiting"]["cpu_s"] < 0.15
    assert steps["computing"]["cpu_s"] >= 0.29
    line = _timing_lines(timer.to_dict())[0]
    assert "waiting 0.3/0.0" in line and "computing" in line and "process CPU" in line


# ------------------------------------------------------------------------------------------- config keys
def test_post_training_keys_have_defaults_and_checked_values() -> None:
    import yaml

    from conftest import REPO
    from segzoo.config import load_config
    from segzoo.errors import ConfigError

    data = yaml.safe_load((REPO / "user_config.yaml").read_text())
    q = load_config(data).quantization
    assert (q.dead_channels, q.activation_ranges, q.bias_correction, q.adaround, q.quantization_type,
            q.relu6_equalization) == ("calibration", "mse", True, False, "ptq", "headroom")
    data["quantization"] = {"activation_ranges": "kl", "activation_percentile": 20, "adaround_iterations": 0,
                            "dead_channels": "maybe", "qat": {"epochs": 0, "learning_rate": -1}}
    with pytest.raises(ConfigError) as info:
        load_config(data)
    message = str(info.value)
    for key in ("quantization.activation_ranges", "quantization.dead_channels"):
        assert key in message
    data["quantization"] = {"activation_percentile": 20, "adaround_iterations": 0,
                            "qat": {"epochs": 0, "learning_rate": -1}}
    with pytest.raises(ConfigError) as info:
        load_config(data)
    message = str(info.value)
    for key in ("quantization.activation_percentile", "quantization.adaround_iterations", "quantization.qat.epochs",
                "quantization.qat.learning_rate"):
        assert key in message
