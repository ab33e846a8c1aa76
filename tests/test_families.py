"""Every registered model family and preset, on a tiny input: build, forward, parameters, save/load, batch-1
TFLite conversion (float32 and int8 per-tensor) and the STM32MP2 placement estimate.

A new family is covered by registering it: nothing here names a family. What the checks mean depends on the
family's task (``TASK_CHECKS``): a segmentation model is one single-input network with class logits; a promptable
model (image + point prompts) is made of networks (an image encoder and a prompt decoder) that the pipeline
converts and ships one by one, so each of them is converted, compared with Keras and placed on its own.
"""

from __future__ import annotations

import numpy as np
import pytest

from segzoo.models.registry import family_names, get_family

keras = pytest.importorskip("keras")


SLOW_TASKS = {"promptable_segmentation"}
"""Tasks whose tiny models still convert slowly (SAM2: 12 transformer blocks whatever the input size)."""


def _cases() -> list:
    """Every family's first preset in the default run; its other presets are ``heavy`` (the same code path, larger
    graphs; run by ``.ci/run`` after the quick suite), so the README's test command stays fast as families are
    added. Families of :data:`SLOW_TASKS` are heavy (their own test files cover them in the quick suite)."""
    cases = []
    for name in family_names():
        slow_family = get_family(name).task in SLOW_TASKS
        for i, preset in enumerate(get_family(name).presets):
            marks = (pytest.mark.heavy,) if i > 0 or slow_family else ()
            cases.append(pytest.param(name, preset, marks=marks, id=f"{name}-{preset}"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def converted() -> dict[str, dict]:
    """Networks of identical architecture already converted by this module (presets often share an encoder)."""
    return {}


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
def test_family_preset_end_to_end(name, preset, tmp_path, converted):
    TASK_CHECKS[get_family(name).task](_tiny_params(name, preset), tmp_path, converted)


def _loaded(model, tmp_path, name: str):
    from segzoo.models.registry import custom_objects

    path = tmp_path / f"{name}.keras"
    model.save(path)
    return keras.saving.load_model(path, compile=False, custom_objects=custom_objects())


def _placement_checked(path) -> dict:
    from segzoo.benchmarking.estimate import estimate_stm32mp2

    estimate = estimate_stm32mp2(path)
    assert 0.0 <= estimate["npu_pct"] <= 100.0 and estimate["latency_ms"] > 0
    assert abs(estimate["npu_pct"] + estimate["gpu_pct"] + estimate["cpu_pct"] - 100.0) < 1e-6
    return estimate


# ------------------------------------------------------------------------------------------ semantic segmentation
def check_segmentation(params, tmp_path, converted: dict) -> None:
    """One network: image -> class logits at the input size or a fraction of it."""
    from segzoo.litert.inspect import inspect_tflite
    from segzoo.models.registry import build_from_params, export_model
    from segzoo.quantization.converter import convert
    from segzoo.runners import load_runner

    num_classes = 3
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

    loaded = _loaded(model, tmp_path, "model")
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
    _placement_checked(int8_file)


# ---------------------------------------------------------------------------------------- promptable segmentation
def _prompt_inputs(params, rng) -> dict:
    size, n = params.image_size, params.num_points
    labels = np.full((1, n), -1.0, np.float32)
    labels[0, 0] = 1.0
    return {"image": rng.normal(size=(1, size, size, 3)).astype(np.float32),
            "point_coords": rng.uniform(0, size, (1, n, 2)).astype(np.float32), "point_labels": labels}


def _network_inputs(network, model_inputs: dict, features: dict) -> dict:
    names = [t.name.split(":")[0] for t in network.inputs]
    return {n: np.asarray(model_inputs.get(n, features.get(n))) for n in names}


def _call(network, inputs: dict) -> dict:
    """A network's outputs by name for its inputs by name (a single-input network takes its array)."""
    outputs = network(inputs if len(inputs) > 1 else next(iter(inputs.values())), training=False)
    return {k: np.asarray(v) for k, v in outputs.items()}


def _convert_network(network, inputs: list[dict], tmp_path, converted: dict) -> dict:
    """Float and int8 per-tensor files of one network: float within 1e-4 of Keras' output range, int8 per-tensor
    with only ops TFLite has no int8 kernel for left in float, and its placement."""
    from segzoo.models.sam2.export import export_tflite, run_tflite

    key = network.to_json()
    if key in converted:
        return converted[key]
    float_file = tmp_path / f"{network.name}_float.tflite"
    export_tflite(network, float_file)
    got, want = run_tflite(float_file, inputs[0]), _call(network, inputs[0])
    for name, value in want.items():
        assert np.abs(got[name] - value).max() <= 1e-4 * max(float(np.ptp(value)), 1.0), (network.name, name)
    int8_file = tmp_path / f"{network.name}_int8.tflite"
    summary = export_tflite(network, int8_file, quantize=True, representative=lambda: inputs,
                            float_scopes=("prompt_encoder",))
    floats = {op["name"] for op in summary["ops"] if op["tensor"] in summary["float_ops"]}
    assert not summary["has_per_channel"] and floats <= {"SIN", "COS", "CONCATENATION"}, floats
    converted[key] = {"float": float_file, "int8": int8_file, "estimate": _placement_checked(int8_file)}
    return converted[key]


def check_promptable(params, tmp_path, converted: dict) -> None:
    """The family's model takes an image and point prompts and returns mask logits and IoU estimates; each of its
    networks (sub-models, e.g. encoder and decoder) converts and is placed on its own."""
    from segzoo.models.registry import build_from_params

    model = build_from_params(params, None)
    rng = np.random.default_rng(0)
    samples = [_prompt_inputs(params, rng) for _ in range(2)]
    out = {k: np.asarray(v) for k, v in model(samples[0], training=False).items()}
    masks, size = out["masks"], params.image_size
    assert masks.shape[:3] == (1, size // 4, size // 4) and out["iou"].shape == (1, masks.shape[-1])
    assert all(np.isfinite(v).all() for v in out.values()) and np.ptp(masks) > 0
    assert 0 < sum(int(w.numpy().size) for w in model.trainable_weights) <= model.count_params()

    loaded = _loaded(model, tmp_path, "model")
    again = {k: np.asarray(v) for k, v in loaded(samples[0], training=False).items()}
    assert all(np.array_equal(again[k], out[k]) for k in out)

    networks = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    assert len(networks) >= 2, "a promptable model is made of networks (encoder, decoder)"
    features = [{} for _ in samples]
    for network in networks:
        inputs = [_network_inputs(network, s, f) for s, f in zip(samples, features)]
        _convert_network(network, inputs, tmp_path, converted)
        for sample_features, sample_inputs in zip(features, inputs):
            sample_features.update(_call(network, sample_inputs))


TASK_CHECKS = {"semantic_segmentation": check_segmentation, "promptable_segmentation": check_promptable}
