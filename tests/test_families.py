"""Every registered model family and preset, on a tiny input: build, forward, parameters, save/load, batch-1
TFLite conversion (float32 and int8 per-tensor) and the STM32MP2 placement estimate.

A new family is covered by registering it: nothing here names a family.
"""

from __future__ import annotations

import numpy as np
import pytest

from segzoo.models.registry import family_names, get_family

keras = pytest.importorskip("keras")


def _cases() -> list:
    """Every family's first preset in the default run; its other presets are ``slow`` (the same code path, larger
    graphs), so the default test run stays fast as families are added."""
    cases = []
    for name in family_names():
        for i, preset in enumerate(get_family(name).presets):
            marks = () if i == 0 else (pytest.mark.slow,)
            cases.append(pytest.param(name, preset, marks=marks, id=f"{name}-{preset}"))
    return cases


CASES = _cases()


def _tiny_params(name: str, preset: str):
    from segzoo.models.registry import make_params

    family = get_family(name)
    values = {k: v for k, v in family.presets[preset].items() if k not in ("num_classes", "input_shape")}
    return make_params(name, input_shape=list(family.tiny_input_shape), **values)


def test_every_family_has_presets_and_a_valid_tiny_input():
    for name in family_names():
        family = get_family(name)
        assert family.presets, f"{name} has no preset"
        for preset in family.presets:
            assert _tiny_params(name, preset).check() == []


@pytest.mark.parametrize(("name", "preset"), CASES)
def test_family_preset_end_to_end(name, preset, tmp_path):
    from segzoo.benchmarking.estimate import estimate_stm32mp2
    from segzoo.litert.inspect import inspect_tflite
    from segzoo.models.registry import build_from_params, custom_objects, export_model
    from segzoo.quantization.converter import convert
    from segzoo.runners import load_runner

    params, num_classes = _tiny_params(name, preset), 3
    height, width, channels = params.input_shape
    trained = build_from_params(params, num_classes)
    model = export_model(trained, params)
    assert len(model.outputs) == 1
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (2, height, width, channels)).astype(np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape[0] == 2 and y.shape[-1] == num_classes and np.isfinite(y).all()
    assert height % y.shape[1] == 0 and width % y.shape[2] == 0  # logits at the input size or a fraction of it
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    assert 0 < trainable <= model.count_params() <= trained.count_params()

    path = tmp_path / f"{preset}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, custom_objects=custom_objects())
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), y, rtol=1e-5, atol=1e-5)

    float_file = convert(model, None, tmp_path / "float.tflite", quantize=False, input_type="float",
                         output_type="float")
    np.testing.assert_allclose(load_runner(float_file).predict(x[:1])[0], y[0], rtol=1e-3, atol=1e-3)

    def calibration():
        for image in x:
            yield image[None]

    int8_file = convert(model, calibration, tmp_path / "int8.tflite", granularity="per_tensor")
    summary = inspect_tflite(int8_file)
    assert not summary["has_per_channel"] and not summary["float_ops"]
    estimate = estimate_stm32mp2(int8_file)
    assert 0.0 <= estimate["npu_pct"] <= 100.0 and estimate["latency_ms"] > 0
