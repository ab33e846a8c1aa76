"""Outlier channel splitting (``quantization.split_outliers``): exact channel duplication that narrows per-tensor
weight ranges.

Each test builds a small network with planted outlier channels, splits them and checks the rewritten weights
against hand-computed values, that the float function is kept for every input, and that per-tensor int8 gets
closer to the float model.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")


def chain_model() -> "keras.Model":
    """``p1(relu6(d(relu6(p0(x)))))``: d's channel 2 has weights 40x the others'."""
    rng = np.random.default_rng(1)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.ReLU(6.0, name="r0")(keras.layers.Conv2D(5, 1, name="p0")(inputs))
    x = keras.layers.ReLU(6.0, name="r1")(keras.layers.DepthwiseConv2D(3, padding="same", name="d")(x))
    model = keras.Model(inputs, keras.layers.Conv2D(3, 1, name="p1")(x))
    model.get_layer("p0").set_weights([rng.uniform(0.1, 0.4, (1, 1, 3, 5)), rng.uniform(0, 0.1, 5)])
    dw = rng.uniform(0.05, 0.2, (3, 3, 5, 1))
    dw[:, :, 2] *= 40.0
    model.get_layer("d").set_weights([dw, rng.uniform(-0.1, 0.1, 5)])
    model.get_layer("p1").set_weights([rng.uniform(-0.5, 0.5, (1, 1, 5, 3)), np.zeros(3)])
    return model


def residual_model() -> "keras.Model":
    """A ReLU6 residual stream ``x1 = relu6(x0 + p1(relu6(d1(x0))))``, pooled, upsampled and concatenated with
    itself before a 1x1 head; planted outliers: p1's output channel 1 (x30), d1's channel 3 (x30), the head's input
    channel 5 (x30)."""
    rng = np.random.default_rng(2)
    inputs = keras.Input((12, 12, 3))
    x0 = keras.layers.ReLU(6.0, name="r0")(keras.layers.Conv2D(6, 1, name="p0")(inputs))
    y = keras.layers.ReLU(6.0, name="r1")(keras.layers.DepthwiseConv2D(3, padding="same", name="d1")(x0))
    y = keras.layers.Conv2D(6, 1, name="p1")(y)
    x1 = keras.layers.ReLU(6.0, name="r2")(keras.layers.Add(name="add")([x0, y]))
    pooled = keras.layers.MaxPooling2D(2, name="pool")(x1)
    up = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(pooled)
    both = keras.layers.Concatenate(name="cat")([up, x1])
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(both))
    model.get_layer("p0").set_weights([rng.uniform(0.1, 0.4, (1, 1, 3, 6)), rng.uniform(0, 0.1, 6)])
    dw = rng.uniform(0.05, 0.2, (3, 3, 6, 1))
    dw[:, :, 3] *= 30.0
    model.get_layer("d1").set_weights([dw, rng.uniform(-0.1, 0.1, 6)])
    p1 = rng.uniform(-0.3, 0.3, (1, 1, 6, 6))
    p1[..., 1] *= 30.0
    model.get_layer("p1").set_weights([p1, np.zeros(6)])
    head = rng.uniform(-0.3, 0.3, (1, 1, 12, 2))
    head[:, :, 5] *= 30.0
    model.get_layer("head").set_weights([head, np.zeros(2)])
    return model


def images(n: int, seed: int, size: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def graph_of(model: "keras.Model"):
    from segzoo.quantization.formatting import _read_graph

    return _read_graph(model)


def test_depthwise_split_divides_that_channel_and_keeps_the_function() -> None:
    """Splitting d's channel 2 in two: the depthwise copies hold half the weights and bias, the ReLU6 caps of the
    copies are 3, p0 duplicates its output channel 2 whole and p1 reads both copies with its full weights."""
    from segzoo.quantization.formatting import rebuild
    from segzoo.quantization.outlier_split import DIVIDED, DUPLICATED, apply, plan

    model = chain_model()
    graph, calls = graph_of(model)
    split = plan(graph, "d", "dw", 2, new_caps=True)
    assert split.tensors[("d", 2)] == DIVIDED and split.tensors[("r1", 2)] == DIVIDED
    assert split.tensors[("p0", 2)] == DUPLICATED and split.tensors[("r0", 2)] == DUPLICATED
    assert split.writers == [("p0", 2, DUPLICATED)] and split.readers == [("p1", 2, DIVIDED)]
    apply(graph, split, 2)
    rebuilt = rebuild(graph, calls)
    dw, dw_bias = model.get_layer("d").get_weights()
    new_dw, new_bias = rebuilt.get_layer("d").get_weights()
    assert new_dw.shape == (3, 3, 6, 1)
    np.testing.assert_allclose(new_dw[:, :, 2], dw[:, :, 2] / 2, rtol=1e-6)
    np.testing.assert_allclose(new_dw[:, :, 3], dw[:, :, 2] / 2, rtol=1e-6)
    np.testing.assert_allclose(new_dw[:, :, 4], dw[:, :, 3], rtol=1e-6)
    np.testing.assert_allclose(new_bias[[2, 3]], [dw_bias[2] / 2] * 2, rtol=1e-6)
    np.testing.assert_allclose(rebuilt.get_layer("r1").get_weights()[0], [6, 6, 3, 3, 6, 6])
    p0 = model.get_layer("p0").get_weights()[0]
    np.testing.assert_allclose(rebuilt.get_layer("p0").get_weights()[0][..., [2, 3]], p0[..., [2, 2]], rtol=1e-6)
    p1 = model.get_layer("p1").get_weights()[0]
    np.testing.assert_allclose(rebuilt.get_layer("p1").get_weights()[0][:, :, [2, 3]], p1[:, :, [2, 2]], rtol=1e-6)
    x = images(4, 0, 10) * 8.0  # beyond the caps too
    np.testing.assert_allclose(rebuilt.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)


def test_splits_that_cannot_be_exact_are_refused() -> None:
    """A model output cannot grow a channel; a sigmoid does not commute with dividing a channel."""
    from segzoo.quantization.formatting import _Invalid
    from segzoo.quantization.outlier_split import plan

    graph, _ = graph_of(chain_model())
    with pytest.raises(_Invalid):
        plan(graph, "p1", "out", 0, new_caps=True)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Activation("sigmoid", name="sig")(keras.layers.Conv2D(4, 1, name="c0")(inputs))
    graph, _ = graph_of(keras.Model(inputs, keras.layers.Conv2D(2, 1, name="c1")(x)))
    with pytest.raises(_Invalid):
        plan(graph, "c0", "out", 1, new_caps=True)
    with pytest.raises(_Invalid):
        plan(graph, "c1", "in", 1, new_caps=True)


def snapped_error(model: "keras.Model", name: str, x: np.ndarray) -> float:
    """Mean |output error| over the mean |output| when only ``name``'s kernel is rounded to its per-tensor grid."""
    layer = model.get_layer(name)
    weights = layer.get_weights()
    step = np.abs(weights[0]).max() / 127.0
    want = model.predict(x, verbose=0)
    layer.set_weights([np.round(weights[0] / step) * step, *weights[1:]])
    got = model.predict(x, verbose=0)
    layer.set_weights(weights)
    return float(np.abs(got - want).mean() / np.abs(want).mean())


def test_residual_network_outliers_are_split_exactly(tmp_path) -> None:
    """Through an Add, a ReLU6 stream, pooling, upsampling and a concatenation (which holds the stream's channels
    twice): p1's outlier output channel becomes 4 divided copies, d1's outlier channel 2; the float model is
    unchanged for every input, p1's kernel is 4x narrower and rounds with 4x less output error, and the head,
    which only follows the splits, reads divided copies with its full weight and duplicated ones with its weight
    on the first copy (so that no rounding error is repeated)."""
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from segzoo.quantization.outlier_split import outlier_ratio

    model = residual_model()
    options = {"relu6": "clip", "dead_channels": "off", "residual": True, "cap_growth": 8.0}
    plain, plain_report = optimize_for_per_tensor(model, **options)
    split, report = optimize_for_per_tensor(model, **options, split_outliers=True)
    assert plain_report["outlier_splits"] == {}
    assert report["outlier_splits"] == {"p1": 3, "d1": 1} and report["exact"] is True
    x = images(6, 3, 12) * 3.0
    np.testing.assert_allclose(split.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)
    assert split.get_layer("cat").output.shape[-1] == 20

    def widest(m: "keras.Model", name: str) -> float:
        return float(np.abs(m.get_layer(name).get_weights()[0]).max())

    assert widest(split, "p1") == pytest.approx(widest(plain, "p1") / 4, rel=1e-5)
    assert widest(split, "d1") == pytest.approx(widest(plain, "d1") / 2, rel=1e-5)
    test = images(8, 5, 12)
    assert snapped_error(split, "p1", test) < 0.5 * snapped_error(plain, "p1", test)
    assert outlier_ratio(graph_of(split)[0].nodes["p1"]) < outlier_ratio(graph_of(plain)[0].nodes["p1"]) / 3
    # stream channels after the splits: 0, 1 (4 divided copies), 2, 3 (2 duplicated copies: d1's input), 4, 5;
    # the concatenation holds them twice (upsampled, then as they are)
    head = plain.get_layer("head").get_weights()[0][0, 0]
    expected = np.concatenate([[h[0], h[1], h[1], h[1], h[1], h[2], h[3], 0 * h[3], h[4], h[5]]
                               for h in (head[:6], head[6:])])
    np.testing.assert_allclose(split.get_layer("head").get_weights()[0][0, 0], expected, rtol=1e-6)


def test_calibration_refuses_splits_that_coarsen_an_activation() -> None:
    """With calibration images p1's output split is refused: it would divide d1's channel 1 (peak 1.3 of 17.0 on
    the calibration images) into copies of fewer than 8 activation steps; without them it is made."""
    from segzoo.quantization import formatting
    from segzoo.quantization.formatting import _read_graph, equalize, fold_batch_norms
    from segzoo.quantization.outlier_split import DIVIDED, plan, _fine_enough

    model = residual_model()
    calibration = images(16, 4, 12)
    graph, calls = _read_graph(model)
    graph.cap_growth = 8.0
    fold_batch_norms(graph)
    groups, _ = formatting._equalization_groups(graph, calls, calibration, "clip", True)
    equalize(graph, groups)
    peaks = formatting._activation_peaks(graph, calls, calibration)
    split = plan(graph, "p1", "out", 1, new_caps=True)
    assert split.tensors[("d1", 1)] == DIVIDED
    assert peaks["d1"][1] / 4 < 8 * peaks["d1"].max() / 255
    assert not _fine_enough(graph, split, 4, peaks)
    assert _fine_enough(graph, split, 4, None)


def test_split_outliers_key_defaults_off_and_reaches_the_report() -> None:
    import yaml

    from conftest import REPO
    from segzoo.config import load_config
    from segzoo.errors import ConfigError
    from segzoo.quantization.report import _formatting

    data = yaml.safe_load((REPO / "user_config.yaml").read_text())
    assert load_config(data).quantization.split_outliers is False
    data["quantization"] = {"split_outliers": "maybe"}
    with pytest.raises(ConfigError, match="quantization.split_outliers"):
        load_config(data)
    text = _formatting({"outlier_splits": {"a": 3, "b": 2}})
    assert "5 channels added by splitting outlier channels of 2 layers" in text
    assert "splitting" not in _formatting({"outlier_splits": {}})


@pytest.mark.heavy
def test_real_landmark_model_is_split_exactly_on_real_crops() -> None:
    """MediaPipe's pose landmark model (real file, real COCO person crops) with the example config's formatting
    and outlier splitting, without calibration statistics so that every step is exact: dozens of channels are
    added, the widest per-tensor kernel ratios shrink, and every output stays within 1e-3 of its range."""
    from segzoo.quantization.formatting import _read_graph, optimize_for_per_tensor
    from segzoo.quantization.outlier_split import _depthwise, _full_conv, outlier_ratio
    from segzoo.quantization.quantize import load_float_model
    from conftest import landmark_crops

    landmark, crops = landmark_crops(8)
    model = load_float_model(landmark)
    options = {"relu6": "clip", "residual": True, "cap_growth": 8.0, "dead_channels": "exact"}
    plain, _ = optimize_for_per_tensor(model, **options)
    split, report = optimize_for_per_tensor(model, **options, split_outliers=True)
    assert sum(report["outlier_splits"].values()) >= 50 and report["exact"] is True

    def worst(m: "keras.Model") -> list[float]:
        graph, _ = _read_graph(m)
        return sorted((outlier_ratio(n) for n in graph.live() if _full_conv(n) or _depthwise(n)), reverse=True)

    assert worst(split)[:5] < worst(plain)[:5]
    for ref, out in zip(model.predict(crops, verbose=0), split.predict(crops, verbose=0)):
        assert np.abs(ref - out).max() <= 1e-3 * (ref.max() - ref.min())
