"""Per-tensor formatting of residual networks: equalization across residual streams and dead inputs.

``quantization.residual_equalization`` rescales the channels of a whole residual stream (every convolution that
writes into it and every one that reads from it); ``quantization.dead_inputs`` zeroes the weights that read a ReLU
channel which is 0 on every calibration pixel (also where that channel enters a residual Add). Each test checks
the rewritten weights and that the float function is kept (for every input, or on the calibration images where
the rewrite says so).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")


def residual_model(relu6: bool = True, dead_channel: bool = False) -> "keras.Model":
    """``x1 = act(x0 + p1(act(d1(x0))))`` with ``x0 = act(p0(input))``, read by ``d2`` and a 1x1 head; the stream's
    channel 1 has producer weights 50x smaller than its readers' (a stream plain CLE cannot rescale: it stops at
    the Add). ``dead_channel``: p0's channel 3 is below 0 on inputs in [0, 1] and d1/d2 read it with weights 80."""
    act = (lambda name: keras.layers.ReLU(6.0, name=name)) if relu6 else (lambda name: keras.layers.ReLU(name=name))
    rng = np.random.default_rng(0)
    inputs = keras.Input((12, 12, 3))
    x0 = act("r0")(keras.layers.Conv2D(4, 1, name="p0")(inputs))
    y = act("r1")(keras.layers.DepthwiseConv2D(3, padding="same", name="d1")(x0))
    y = keras.layers.Conv2D(4, 1, name="p1")(y)
    x1 = act("r2")(keras.layers.Add(name="add")([x0, y]))
    pooled = keras.layers.MaxPooling2D(2, name="pool")(x1)
    z = act("r3")(keras.layers.DepthwiseConv2D(3, padding="same", name="d2")(pooled))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(z))
    p0 = rng.uniform(0.2, 0.5, (1, 1, 3, 4))
    p0[..., 1] *= 0.02
    p0_bias = np.zeros(4)
    if dead_channel:
        p0[..., 3], p0_bias[3] = -rng.uniform(0.2, 0.5, 3), -1.5
    model.get_layer("p0").set_weights([p0, p0_bias])
    p1 = rng.uniform(-0.3, 0.3, (1, 1, 4, 4))
    p1[..., 1] *= 0.02
    model.get_layer("p1").set_weights([p1, np.zeros(4)])
    for name in ("d1", "d2"):
        dw = rng.uniform(0.3, 0.6, (3, 3, 4, 1))
        dw[:, :, 1] *= 50.0
        if dead_channel:
            dw[:, :, 3] = 80.0
        model.get_layer(name).set_weights([dw, rng.uniform(-0.1, 0.1, 4)])
    return model


def channel_max(model: "keras.Model", name: str) -> np.ndarray:
    """Largest |w| of each channel of a depthwise layer."""
    kernel = model.get_layer(name).get_weights()[0]
    return np.abs(kernel).reshape(-1, kernel.shape[2]).max(axis=0)


def output_max(model: "keras.Model", name: str) -> np.ndarray:
    """Largest |w| of each output channel of a convolution."""
    kernel = model.get_layer(name).get_weights()[0]
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 12, 12, 3)).astype(np.float32)


def test_linear_stream_is_equalized_exactly_for_every_input() -> None:
    """A ReLU stream: both producers and both readers are rescaled; the model is unchanged on any input."""
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = residual_model(relu6=False)
    plain, plain_report = optimize_for_per_tensor(model, relu6="skip", dead_channels="off")
    stream, report = optimize_for_per_tensor(model, relu6="skip", dead_channels="off", residual=True)
    assert plain_report["residual_streams"] == 0 and report["residual_streams"] == 1
    assert report["residual_stream_convolutions"] == 4 and report["exact"] is True  # p0, p1 -> d1, d2
    # the stream's channel 1 is no longer 50x narrower in the producer p0 than the others
    before, after = output_max(plain, "p0"), output_max(stream, "p0")
    assert before[1] / np.delete(before, 1).min() < 0.1 and after[1] / np.delete(after, 1).min() > 0.3
    x = np.random.default_rng(5).uniform(-2, 3, (3, 12, 12, 3)).astype(np.float32)
    reference = np.asarray(model(x))
    np.testing.assert_allclose(np.asarray(stream(x)), reference, atol=1e-5 * np.abs(reference).max())


def test_relu6_stream_clip_is_exact_and_headroom_keeps_the_ops() -> None:
    """Across ReLU6: ``clip`` turns the stream's ReLU6 into per-channel caps (exact for every input);
    ``headroom`` keeps every layer type and is exact on the calibration images."""
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = residual_model()
    calib = images(8, 1)
    clip, report = optimize_for_per_tensor(model, relu6="clip", dead_channels="off", residual=True)
    assert report["residual_streams"] == 1 and report["channel_relus"] >= 2
    x = np.random.default_rng(7).uniform(-1, 4, (3, 12, 12, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(clip(x)), np.asarray(model(x)), atol=1e-5 * np.abs(model(x)).max())
    head, report = optimize_for_per_tensor(model, calib, relu6="headroom", dead_channels="off", residual=True)
    assert report["residual_streams"] == 1 and report["channel_relus"] == 0
    assert [type(layer).__name__ for layer in head.layers] == [type(layer).__name__ for layer in model.layers]
    assert output_max(head, "p0")[1] > 5 * output_max(model, "p0")[1]
    reference = np.asarray(model(calib))
    np.testing.assert_allclose(np.asarray(head(calib)), reference, atol=1e-4 * np.abs(reference).max())


def test_dead_inputs_zero_the_readers_of_a_dead_stream_channel() -> None:
    """p0's channel 3 is 0 after its ReLU6 on the calibration images and enters the Add: the producer-side fold
    cannot follow it, ``dead_inputs`` zeroes d1's weights for it and keeps the outputs on those images."""
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = residual_model(dead_channel=True)
    calib = images(8, 2)  # 8 x 144 values per channel at d1's input: above the dead-input minimum
    off, off_report = optimize_for_per_tensor(model, calib, relu6="skip")
    on, report = optimize_for_per_tensor(model, calib, relu6="skip", dead_inputs=True)
    assert off_report["dead_channels"]["dead_inputs"] == 0 and channel_max(off, "d1")[3] == pytest.approx(80.0)
    assert report["dead_channels"]["dead_input_layers"].get("d1") == 1 and channel_max(on, "d1")[3] == 0.0
    assert report["exact"] is False
    reference = np.asarray(model(calib))
    np.testing.assert_allclose(np.asarray(on(calib)), reference, atol=1e-5 * np.abs(reference).max())


def test_residual_keys_default_off_and_reach_the_report() -> None:
    import yaml

    from conftest import REPO
    from segzoo.config import load_config
    from segzoo.errors import ConfigError
    from segzoo.quantization.report import _formatting

    data = yaml.safe_load((REPO / "user_config.yaml").read_text())
    q = load_config(data).quantization
    assert (q.residual_equalization, q.dead_inputs) == (False, False)
    assert q.relu6_cap_growth == 2.0
    data["quantization"] = {"residual_equalization": True, "dead_inputs": True, "relu6_cap_growth": 8}
    q = load_config(data).quantization
    assert (q.residual_equalization, q.dead_inputs, q.relu6_cap_growth) == (True, True, 8)
    data["quantization"] = {"relu6_cap_growth": 0.5}
    with pytest.raises(ConfigError, match="quantization.relu6_cap_growth"):
        load_config(data)
    text = _formatting({"residual_streams": 8, "residual_stream_convolutions": 74, "channel_relus": 76,
                        "cap_growth": 8.0,
                        "dead_channels": {"weight_dead": 1, "calibration_dead": 2, "left": 0, "dead_inputs": 466}})
    assert "8 residual streams equalized (74 convolutions)" in text and "466 weight input channels" in text
    assert "76 ReLU6 turned into per-channel caps (raised at most x8)" in text


def test_cap_growth_bounds_how_far_clip_raises_a_cap() -> None:
    """``relu6="clip"``: channel 1 of the stream wants its cap raised ~7x; ``cap_growth`` 2 stops it at 12, 8 lets
    it go further; both stay exact for every input."""
    from segzoo.quantization.formatting import optimize_for_per_tensor

    model = residual_model()
    x = np.random.default_rng(8).uniform(-1, 4, (2, 12, 12, 3)).astype(np.float32)
    caps = {}
    for growth in (2.0, 8.0):
        clip, report = optimize_for_per_tensor(model, relu6="clip", dead_channels="off", residual=True,
                                               cap_growth=growth)
        assert report["cap_growth"] == growth
        caps[growth] = float(clip.get_layer("r2").get_weights()[0][1])
        np.testing.assert_allclose(np.asarray(clip(x)), np.asarray(model(x)), atol=1e-5 * np.abs(model(x)).max())
    assert caps[2.0] <= 12.0 + 1e-6 and caps[8.0] > 1.5 * caps[2.0]


@pytest.mark.heavy
def test_real_landmark_model_keeps_its_outputs_on_real_crops() -> None:
    """MediaPipe's pose landmark model (real file, real COCO person crops): ``clip`` with residual streams and cap
    growth 8 (the example config's formatting, here without calibration statistics) keeps every output within
    1e-3 of its range on every crop; ``headroom`` across the streams with dead inputs keeps them on the
    calibration crops. The model has 8 residual streams that plain CLE skipped. (Bias absorption and
    calibration-dead channels, which the quantization step adds with its calibration images, are exact on
    those images only: on 4 held-out crops the landmarks moved by up to 5% of their range.)"""
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from segzoo.quantization.quantize import load_float_model
    from conftest import landmark_crops

    landmark, crops = landmark_crops(30)
    calib = crops[:16]
    model = load_float_model(landmark)

    def within(optimized: "keras.Model", images: np.ndarray, tolerance: float) -> None:
        for ref, out in zip(model.predict(images, verbose=0), optimized.predict(images, verbose=0)):
            relative = np.abs(ref - out).max() / (ref.max() - ref.min())
            assert relative <= tolerance, (ref.shape, len(images), relative)

    # clip + residual streams, no calibration statistics: exact for every input
    exact, report = optimize_for_per_tensor(model, relu6="clip", dead_channels="exact", residual=True,
                                            cap_growth=8.0)
    assert report["residual_streams"] == 8 and report["channel_relus"] == 76 and report["exact"] is True
    within(exact, crops, 1e-3)
    # headroom across the streams' ReLU6 and dead inputs: exact on the calibration crops
    head, report = optimize_for_per_tensor(model, calib, relu6="headroom", dead_inputs=True, residual=True)
    assert report["residual_streams"] == 8 and report["dead_channels"]["dead_inputs"] > 20
    within(head, calib, 1e-3)
