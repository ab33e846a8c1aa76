"""Requantization limits: an int8 model whose calibration left a branch almost dead still loads in XNNPACK
(LiteRT's default CPU delegate) and computes what the float model does."""

from __future__ import annotations

import numpy as np


def _squeeze_excitation(dead: float):
    """A squeeze-excitation block whose first 1x1 convolution's ReLU output stays within ``dead`` of zero on
    inputs in [-1, 1] (its bias pushes every channel below zero), the pattern that broke a trained PP-MobileSeg."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 8))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(inputs)
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    s = keras.layers.Conv2D(4, 1, activation="relu", name="squeeze")(s)
    s = keras.layers.Conv2D(8, 1, activation="sigmoid", name="excite")(s)
    model = keras.Model(inputs, keras.layers.Rescaling(0.5)(keras.layers.Multiply()([x, s])))  # scalar-constant MUL
    squeeze = model.get_layer("squeeze")
    kernel = np.full((1, 1, 8, 4), 5.0, np.float32)
    squeeze.set_weights([kernel, np.full(4, -400.0, np.float32)])  # pre-activation far below 0
    images = np.random.default_rng(1).uniform(-1, 1, (16, 16, 16, 8)).astype(np.float32)
    pooled = keras.Model(inputs, model.get_layer("pool").output)(images).numpy()
    top = float((pooled.reshape(len(images), -1).sum(1) * 5.0).max())
    squeeze.set_weights([kernel, np.full(4, dead - top, np.float32)])  # the largest pre-activation is ``dead``
    return model, images


def _loads_in_xnnpack(path) -> bool:
    from ai_edge_litert.interpreter import Interpreter

    try:
        Interpreter(model_path=str(path), num_threads=1).allocate_tensors()
    except RuntimeError as exc:
        assert "XNNPACK" in str(exc) or "prepare" in str(exc), exc
        return False
    return True


def test_an_almost_dead_branch_no_longer_breaks_xnnpack(tmp_path, monkeypatch, caplog):
    from ai_edge_litert.interpreter import Interpreter

    from segzoo.quantization import converter, limits
    from segzoo.quantization.quantize import representative

    model, images = _squeeze_excitation(dead=1e-5)
    calibrated = converter.calibrate(model, representative(images))
    widened_model, report = limits.respect_limits(calibrated)
    widened = {w["tensor"].split(";")[0]: w for w in report["widened"]}
    assert any("squeeze" in name for name in widened), widened
    entry = next(w for name, w in widened.items() if "squeeze" in name)
    assert entry["factor"] > 256 and entry["range_after"][1] > entry["range_before"][1] > 0
    from segzoo.quantization.report import _refinement_lines

    line = "".join(_refinement_lines({"requantization_limits": report}))
    assert line.startswith("- Requantization limits: ") and "exceeds 128 " in line and "squeeze" in line, line
    again, second = limits.respect_limits(widened_model)
    assert second == {"widened": [], "max_factor": limits.MAX_FACTOR} and again == widened_model  # idempotent: the converter applies it again

    good = converter.convert_calibrated(calibrated, tmp_path / "good.tflite", input_type="float")
    assert _loads_in_xnnpack(good)
    runner = Interpreter(model_path=str(good), num_threads=1)
    runner.allocate_tensors()
    inp, out = runner.get_input_details()[0], runner.get_output_details()[0]
    expected = model(images[:4]).numpy()
    for image, reference in zip(images[:4], expected):
        runner.set_tensor(inp["index"], image[None])
        runner.invoke()
        np.testing.assert_allclose(runner.get_tensor(out["index"])[0], reference, atol=0.02 * np.ptp(expected))

    # what the limits prevent: the same conversion without them gives a file XNNPACK refuses to prepare
    monkeypatch.setattr(limits, "respect_limits", lambda content: (content, {"widened": [], "max_factor": 1e9}))
    bad = converter.convert_calibrated(calibrated, tmp_path / "bad.tflite", input_type="float")
    assert not _loads_in_xnnpack(bad)
    # such a file from another quantizer still runs, on TFLite's reference kernels, with a warning
    from segzoo.runners import load_runner
    from segzoo.runtime.litert import LiteRTRunner

    with caplog.at_level("WARNING"):
        fallback = load_runner(bad, num_threads=1)
        named = LiteRTRunner(bad, num_threads=1)
    assert fallback.xnnpack is False and named.xnnpack is False and load_runner(good).xnnpack is True
    assert "XNNPACK (LiteRT's CPU delegate) cannot prepare this model" in caplog.text and str(bad) in caplog.text


def test_healthy_ranges_are_left_alone():
    from segzoo.quantization import converter, limits
    from segzoo.quantization.quantize import representative

    model, images = _squeeze_excitation(dead=0.5)
    calibrated = converter.calibrate(model, representative(images))
    content, report = limits.respect_limits(calibrated)
    assert report == {"widened": [], "max_factor": limits.MAX_FACTOR} and content == calibrated
