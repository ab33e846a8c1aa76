"""Named runners: functions, per-item batching, LiteRT models (float and quantized I/O), pipelines of them."""

from __future__ import annotations

import numpy as np
import pytest

from segzoo.errors import ModelError
from segzoo.runners import TFLiteRunner
from segzoo.runtime.base import FunctionRunner, NamedRunner, PerItemRunner, TensorSpec, bind_by_shape
from segzoo.runtime.litert import LiteRTRunner
from segzoo.runtime.pipeline import Pipeline, Step


def _double() -> FunctionRunner:
    return FunctionRunner("double", lambda x: {"y": 2 * x}, (TensorSpec("x", (1, 3)),), (TensorSpec("y", (1, 3)),))


def _add() -> FunctionRunner:
    return FunctionRunner("add", lambda a, b: {"total": a + b}, (TensorSpec("a", (1, 3)), TensorSpec("b", (1, 3))),
                          (TensorSpec("total", (1, 3)),))


def test_function_runner_checks_its_inputs_and_outputs():
    runner = _double()
    assert isinstance(runner, NamedRunner)
    np.testing.assert_array_equal(runner.predict({"x": np.ones((1, 3))})["y"], 2 * np.ones((1, 3)))
    with pytest.raises(ModelError, match="double: missing input"):
        runner.predict({"z": np.ones((1, 3))})
    broken = FunctionRunner("broken", lambda x: {"w": x}, (TensorSpec("x", (1,)),), (TensorSpec("y", (1,)),))
    with pytest.raises(ModelError, match="broken: produced no y"):
        broken.predict({"x": np.ones(1)})


def test_pipeline_wires_renames_nests_and_times_its_steps():
    inner = Pipeline("inner", [Step(_double(), inputs={"x": "image"}, outputs={"y": "a"}),
                               Step(_double(), inputs={"x": "a"}, outputs={"y": "b"}, name="double_again")])
    outer = Pipeline("outer", [inner, _add()], outputs=["total"])
    assert [s.name for s in outer.inputs] == ["image"] and [s.name for s in outer.outputs] == ["total"]
    out = outer.predict({"image": np.array([[1.0, 2.0, 3.0]])})
    np.testing.assert_array_equal(out["total"], [[6.0, 12.0, 18.0]])  # 2x + 4x
    assert set(outer.last_timings) == {"inner", "inner/double", "inner/double_again", "add"}
    assert all(ms >= 0 for ms in outer.last_timings.values())
    with pytest.raises(ModelError, match="no step produces nothing"):
        Pipeline("p", [_double()], outputs=["nothing"])
    with pytest.raises(ModelError, match="not unique"):
        Pipeline("p", [_double(), _double()])


def test_per_item_runner_stacks_items_and_handles_none():
    per_item = PerItemRunner(_double())
    assert per_item.inputs[0].shape == (-1, 3)
    np.testing.assert_array_equal(per_item.predict({"x": np.arange(6.0).reshape(2, 3)})["y"],
                                  2 * np.arange(6.0).reshape(2, 3))
    empty = per_item.predict({"x": np.zeros((0, 3))})["y"]
    assert empty.shape == (0, 3) and empty.dtype == np.float32
    with pytest.raises(ModelError, match="leading batch axis"):
        PerItemRunner(FunctionRunner("f", lambda x: {"y": x}, (TensorSpec("x", (3,)),), (TensorSpec("y", (3,)),)))


def test_litert_runner_names_the_pose_models_tensors(mediapipe_dir):
    runner = LiteRTRunner(mediapipe_dir / "pose_detection.tflite", num_threads=1)
    assert [(s.name, s.shape) for s in runner.inputs] == [("input_1", (1, 224, 224, 3))]
    assert {s.name: s.shape for s in runner.outputs} == {"Identity": (1, 2254, 12), "Identity_1": (1, 2254, 1)}
    assert bind_by_shape(runner, {"boxes": (2254, 12), "scores": (2254, 1)}, source="d") == {
        "boxes": "Identity", "scores": "Identity_1"}
    out = runner.predict({"input_1": np.zeros((1, 224, 224, 3), np.float32)})
    assert out["Identity"].shape == (1, 2254, 12) and out["Identity"].dtype == np.float32
    with pytest.raises(ModelError, match=r"no output of shape \[1,7\] for heatmap"):
        bind_by_shape(runner, {"heatmap": (7,)}, source="pose_detection.tflite")
    with pytest.raises(ModelError, match=r"input input_1 expects \[1, 224, 224, 3\]"):
        runner.predict({"input_1": np.zeros((1, 10, 10, 3), np.float32)})
    with pytest.raises(ModelError, match="not found"):
        LiteRTRunner(mediapipe_dir / "missing.tflite")


def test_litert_runner_quantizes_and_dequantizes_like_the_segmentation_runner(coral_model, st_model):
    """A uint8-input model takes the same float values as segzoo.runners.TFLiteRunner and returns the same."""
    named = LiteRTRunner(coral_model, num_threads=2)
    assert named.inputs[0].quantization.quantized and named.inputs[0].dtype == "float32"
    reference = TFLiteRunner(coral_model, num_threads=2)
    x = np.random.default_rng(0).uniform(-1, 1, (1, *reference.input_hw, 3)).astype(np.float32)
    out = named.predict({named.inputs[0].name: x})
    np.testing.assert_array_equal(out[named.outputs[0].name].reshape(-1), reference.predict(x).reshape(-1))
    float_io = LiteRTRunner(st_model, num_threads=2)
    y = float_io.predict({float_io.inputs[0].name: np.zeros(float_io.inputs[0].shape, np.float32)})
    np.testing.assert_allclose(y[float_io.outputs[0].name][0], TFLiteRunner(st_model).predict(
        np.zeros(float_io.inputs[0].shape, np.float32))[0], atol=1e-5)


@pytest.mark.slow  # imports TensorFlow
def test_keras_named_runner_names_and_values():
    import keras

    from segzoo.runtime.keras import KerasNamedRunner

    inputs = keras.Input((4,), name="pixels")
    boxes = keras.layers.Dense(3, name="boxes")(inputs)
    scores = keras.layers.Dense(1, activation="sigmoid", name="scores")(inputs)
    model = keras.Model(inputs, [boxes, scores], name="tiny")
    runner = KerasNamedRunner(model)
    assert [(s.name, s.shape) for s in runner.inputs] == [("pixels", (1, 4))]
    assert [(s.name, s.shape) for s in runner.outputs] == [("boxes", (1, 3)), ("scores", (1, 1))]
    x = np.arange(4, dtype=np.float32)[None]
    out = runner.predict({"pixels": x})
    kernel, bias = model.get_layer("boxes").get_weights()
    np.testing.assert_allclose(out["boxes"], x @ kernel + bias, rtol=1e-5)
    assert 0 < float(out["scores"][0, 0]) < 1
    assert bind_by_shape(runner, {"s": (1,)}, source="tiny") == {"s": "scores"}
