"""Runners on the real third-party TFLite models and on tiny Keras / int8 TFLite models built here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

from segzoo.errors import ModelError
from segzoo.preprocess import Preprocessing, compute_placement, rescale
from segzoo.runners import (KerasRunner, Runner, TFLiteRunner, check_output_classes, load_runner,
                            output_kind_from_shape, quantize, to_labels)

CORAL_PP = Preprocessing(scale=1 / 128, offset=-1.0)


def _random_batch(n: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, *hw, 3), dtype=np.uint8)
    return rescale(pixels, Preprocessing())


def test_st_model_float_io_logits(st_model: Path) -> None:
    runner = load_runner(st_model, num_threads=2)
    assert isinstance(runner, TFLiteRunner) and isinstance(runner, Runner)
    assert (runner.input_hw, runner.channels, runner.output_kind) == ((257, 257), 3, "logits")
    assert not runner.input_quantization.quantized and runner.input_quantization.dtype == "float32"
    batch = _random_batch(2, runner.input_hw)
    out = runner.predict(batch)
    assert out.shape == (2, 257, 257, 21) and out.dtype == np.float32
    np.testing.assert_array_equal(out[1], runner.predict(batch[1:])[0])  # a batch is looped image by image
    assert not np.array_equal(out[0], out[1])


def test_coral_model_uint8_input_argmax_labels(coral_model: Path) -> None:
    runner = load_runner(coral_model, num_threads=2)
    q = runner.input_quantization
    assert (q.scale, q.zero_point, q.dtype) == (0.0078125, 128, "uint8") and q.quantized
    assert runner.output_kind == "labels" and runner.input_hw == (513, 513)
    # With x = pixel / 128 - 1 the quantized input is exactly the raw pixel value.
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    np.testing.assert_array_equal(quantize(rescale(pixels, CORAL_PP), q), pixels)
    image = np.random.default_rng(1).integers(0, 256, size=(1, 513, 513, 3), dtype=np.uint8)
    labels = runner.predict(rescale(image, CORAL_PP))
    assert labels.shape == (1, 513, 513) and labels.dtype == np.int32
    interpreter = Interpreter(model_path=str(coral_model), num_threads=2)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    expected = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_array_equal(labels, expected.astype(np.int32))


def test_input_shape_is_checked(st_model: Path) -> None:
    runner = load_runner(st_model)
    with pytest.raises(ModelError, match=r"expects input \[B,257,257,3\]"):
        runner.predict(np.zeros((1, 256, 256, 3), np.float32))


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        load_runner(tmp_path / "absent.tflite")
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"model\.onnx: unsupported model format '\.onnx'"):
        load_runner(onnx)
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelError, match=r"broken\.tflite: cannot load model"):
        load_runner(broken)
    broken_keras = tmp_path / "broken.keras"
    broken_keras.write_bytes(b"not a zip")
    with pytest.raises(ModelError, match=r"broken\.keras: cannot load model"):
        load_runner(broken_keras)


def test_tflite_runner_never_imports_tensorflow(st_model: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from segzoo.runners import load_runner\n"
        "import segzoo.evaluation.evaluate, segzoo.evaluation.reports, segzoo.prediction\n"
        f"r = load_runner({str(st_model)!r}, num_threads=1)\n"
        "r.predict(np.zeros((1, 257, 257, 3), np.float32))\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("shape, dtype, quantized, kind", [
    ((1, 8, 8, 21), np.float32, False, "logits"),
    ((1, 8, 8, 21), np.int8, True, "logits"),
    ((1, 8, 8, 1), np.float32, False, "sigmoid"),
    ((1, 8, 8, 1), np.uint8, True, "sigmoid"),
    ((1, 8, 8, 1), np.int64, False, "labels"),
    ((1, 8, 8), np.int64, False, "labels"),
])
def test_output_kind_from_shape(shape: tuple, dtype: type, quantized: bool, kind: str) -> None:
    assert output_kind_from_shape(shape, np.dtype(dtype), quantized) == kind


def test_to_labels_restores_each_kind() -> None:
    placement = compute_placement((6, 8), (3, 4), "fit")
    logits = np.zeros((3, 4, 3), np.float32)
    logits[..., 2] = 1.0
    assert np.all(to_labels(logits, "logits", placement) == 2) and to_labels(logits, "logits", placement).shape == (6, 8)
    probs = np.full((3, 4, 1), 0.2, np.float32)
    probs[:, 2:] = 0.9
    sig = to_labels(probs, "sigmoid", placement)
    assert set(np.unique(sig)) == {0, 1} and sig[:, :3].max() == 0 and sig[:, 5:].min() == 1
    labels = np.array([[0, 1, 2, 3]] * 3, np.int32)
    np.testing.assert_array_equal(to_labels(labels, "labels", placement), np.repeat(labels, 2, 0).repeat(2, 1))


# ---- tiny Keras models and their int8 TFLite conversions -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-class logits model and a 1-channel sigmoid model (.keras) with full-int8 TFLite conversions."""
    import keras
    import tensorflow as tf

    out = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    calibration = [rescale(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), Preprocessing()) for _ in range(16)]
    paths = {}
    for name, channels, activation in (("logits", 4, None), ("sigmoid", 1, "sigmoid")):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((32, 32, 3))
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
        outputs = keras.layers.Conv2D(channels, 1, activation=activation)(x)
        model = keras.Model(inputs, outputs)
        paths[name] = out / f"{name}.keras"
        model.save(paths[name])
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([c] for c in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        paths[f"{name}_int8"] = out / f"{name}_int8.tflite"
        paths[f"{name}_int8"].write_bytes(converter.convert())
    return paths


def test_keras_runner(tiny_models: dict[str, Path]) -> None:
    import keras

    runner = load_runner(tiny_models["logits"])
    assert isinstance(runner, KerasRunner)
    assert (runner.input_hw, runner.channels, runner.output_kind) == ((32, 32), 3, "logits")
    batch = _random_batch(3, (32, 32))
    out = runner.predict(batch)
    assert out.shape == (3, 16, 16, 4) and out.dtype == np.float32
    expected = keras.saving.load_model(tiny_models["logits"], compile=False).predict(batch, verbose=0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert load_runner(tiny_models["sigmoid"]).output_kind == "sigmoid"


@pytest.mark.parametrize("name", ["logits", "sigmoid"])
def test_int8_tflite_io_matches_the_float_model(tiny_models: dict[str, Path], name: str) -> None:
    float_runner = load_runner(tiny_models[name])
    runner = load_runner(tiny_models[f"{name}_int8"], num_threads=1)
    q = runner.input_quantization
    assert q.dtype == "int8" and q.quantized and runner.output_quantization.quantized
    assert runner.output_kind == name and runner.input_hw == (32, 32)
    batch = _random_batch(2, (32, 32), seed=5)
    out = runner.predict(batch)
    assert out.dtype == np.float32 and out.shape == float_runner.predict(batch).shape
    reference = float_runner.predict(batch)
    # int8 in, int8 out, int8 weights: on average within 2 output quantization steps of the float model
    error = np.abs(out - reference)
    print(f"{name}: mean |error| {error.mean():.5f}, max {error.max():.5f}, output scale "
          f"{runner.output_quantization.scale:.5f}, corr {np.corrcoef(out.ravel(), reference.ravel())[0, 1]:.4f}")
    assert error.mean() <= 2 * runner.output_quantization.scale
    assert np.corrcoef(out.ravel(), reference.ravel())[0, 1] > 0.95


def test_check_output_classes(st_model: Path) -> None:
    runner = load_runner(st_model)
    check_output_classes(runner, np.zeros((4, 4, 21), np.float32), 21)
    with pytest.raises(ModelError, match="outputs 21 classes .* but the dataset has 11 classes"):
        check_output_classes(runner, np.zeros((4, 4, 21), np.float32), 11)
