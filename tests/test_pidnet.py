"""PIDNet-S/M/L: parameter counts, outputs against an independent NumPy forward of the official semantics through
official-format state dicts (official and mmsegmentation names), NPU rewrites against their literal forms, export,
losses against a NumPy transcription of the official criterion, boundary targets on real CamVid masks, TFLite
conversion and the STM32MP2 placement."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from sshd import deploy_one_image, sshd_server  # noqa: F401  (fixture)

from conftest import shared_path
from reference import pidnet_loss_numpy as ref_loss
from reference import pidnet_numpy as ref

from segzoo.errors import ModelError
from segzoo.models.pidnet import FAMILY, PidnetLoss, PidnetParams

OFFICIAL_PARAMS = {"s": 7_625_715, "m": 28_538_515, "l": 36_939_571}
"""Trainable parameters of the official ``get_pred_model(name, 19)`` (PyTorch count, BN statistics excluded)."""
REF_SHAPE = (128, 192)  # 1/64 map 2x3: every pyramid scale but the global one is resized, some by a non-integer factor
NUM_CLASSES = 7


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, (0, 2, 3, 1))


def _trainable(model) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# ------------------------------------------------------------------------------------------------ params
def test_params_defaults_and_checks():
    params = PidnetParams()
    assert (params.name, params.variant, params.input_shape, params.upsample) == ("pidnet", "s", [384, 512, 3], False)
    assert params.check() == []
    problems = PidnetParams(input_shape=[360, 480, 3], boundary_width=0,
                            loss=PidnetLoss(ohem_threshold=1.5, aux_weight=-1)).check()
    text = "\n".join(problems)
    assert "input_shape: 360x480" in text and "multiples of 64" in text and "nearest: 384x512" in text
    assert "boundary_width" in text and "loss.ohem_threshold" in text and "loss.aux_weight" in text
    assert len(problems) == 4


def test_config_validates_pidnet_keys_through_the_registry():
    from segzoo.models.registry import make_params

    params = make_params("pidnet", variant="m", loss={"ohem_min_kept": 1000, "align_corners": True})
    assert (params.variant, params.loss.ohem_min_kept, params.loss.align_corners) == ("m", 1000, True)
    with pytest.raises(ModelError, match=r"loss\.ohem_treshold: unknown key; did you mean "
                                         r"training\.model\.loss\.ohem_threshold"):
        make_params("pidnet", loss={"ohem_treshold": 0.5})
    with pytest.raises(ModelError, match=r"variant: bad value 'x'; allowed values: s, m, l"):
        make_params("pidnet", variant="x")
    with pytest.raises(ModelError, match=r"360x480 .* multiples of 64.*nearest: 384x512"):
        make_params("pidnet", input_shape=[360, 480, 3])


def test_family_module_imports_no_tensorflow():
    code = ("import sys, segzoo.models.pidnet as p; assert p.FAMILY.name == 'pidnet'; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_family_entries_resolve():
    from segzoo.models.base import resolve

    assert FAMILY.targets == ("boundary",)
    for target in (FAMILY.builder, FAMILY.exporter, FAMILY.losses, FAMILY.custom_objects):
        assert resolve(target) is not None
    assert resolve(FAMILY.custom_objects) == {}
    mmseg = [s for s in FAMILY.weights.values() if s.url]
    assert len(mmseg) == 6 and all(s.url.startswith("https://download.openmmlab.com/") for s in mmseg)
    assert all(s.url.endswith(s.file_name) for s in mmseg)
    drive = [s for s in FAMILY.weights.values() if s.url is None]
    assert all("Google Drive" in s.description for s in drive) and len(drive) == 8
    for source in FAMILY.weights.values():
        assert callable(resolve(source.importer))
        assert source.params["variant"] in ("s", "m", "l")


# ------------------------------------------------------------------------------------------------ counts
@pytest.mark.parametrize("variant", ["s", "m", "l"])
def test_parameter_counts_equal_official(variant):
    from segzoo.models.__main__ import inference_parameters
    from segzoo.models.pidnet.model import build

    params = PidnetParams(variant=variant, input_shape=[64, 64, 3])
    model = build(params, 19)
    heads = sum(int(np.prod(w.shape)) for w in model.trainable_weights
                if w.path.startswith(("seghead_p", "seghead_d")))
    assert _trainable(model) - heads == OFFICIAL_PARAMS[variant]
    assert inference_parameters(model) == OFFICIAL_PARAMS[variant]  # what python -m segzoo.models lists
    assert sorted(model.output.keys()) == ["aux", "boundary", "logits"]
    assert [tuple(t.shape[1:]) for t in model.outputs] in ([(8, 8, 19), (8, 8, 19), (8, 8, 1)],
                                                          [(8, 8, 19), (8, 8, 1), (8, 8, 19)])


# -------------------------------------------------------------------------------------- NumPy reference
@pytest.fixture(scope="module", params=["s", pytest.param("l", marks=pytest.mark.slow)])
def reference_case(request):
    """A random official state dict (BN statistics fitted to the image), the NumPy outputs, a Keras model."""
    from segzoo.models.pidnet.model import build

    variant = request.param
    rng = np.random.default_rng(1)
    image = rng.normal(size=(2, 3, *REF_SHAPE))
    state = ref.random_state_dict(variant, NUM_CLASSES, image)
    expected = ref.forward(ref.StateDict(state), image, variant, NUM_CLASSES)
    params = PidnetParams(variant=variant, input_shape=[*REF_SHAPE, 3])
    return variant, state, image, expected, params, build(params, NUM_CLASSES)


def _outputs(model, image: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in model(_nhwc(image).astype(np.float32), training=False).items()}


def _assert_close(got: dict, expected: dict) -> dict[str, float]:
    errors = {}
    for name in ("logits", "aux", "boundary"):
        want = _nhwc(expected[name])
        assert got[name].shape == want.shape
        errors[name] = float(np.abs(got[name] - want).max() / np.ptp(want))
        assert errors[name] <= 1e-4, (name, errors[name])
    return errors


def test_official_checkpoint_matches_numpy_forward(reference_case):
    from segzoo.models.pidnet.weights import load_state_dict

    variant, state, image, expected, _, model = reference_case
    assert not ref.StateDict(state).used  # the reference read every key it created
    # the official .pt holds FullModel's state: every key prefixed "model." (and no training-head key is extra)
    summary = load_state_dict(model, {f"model.{k}": v for k, v in state.items()}, source="PIDNet.pt")
    assert summary["schema"] == "official" and summary["left_initial"] == []
    errors = _assert_close(_outputs(model, image), expected)
    assert set(errors) == {"logits", "aux", "boundary"}
    # the inference count of the official constructor: the reference's keys minus the training heads
    counted = sum(v.size for k, v in ref.inference_keys(state).items()
                  if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    heads = sum(int(np.prod(w.shape)) for w in model.trainable_weights if w.path.startswith(("seghead_",)))
    assert _trainable(model) - heads == counted


# The file formats are variant-independent: PIDNet-L's run goes with the heavy tests. L's key names stay in the quick
# suite through the state-dict tests below (official and mmseg names, renamed keys, backbone import).
@pytest.mark.parametrize("reference_case", ["s", pytest.param("l", marks=pytest.mark.heavy)], indirect=True)
def test_checkpoint_files_in_the_official_formats(reference_case, tmp_path, caplog):
    """Synthetic checkpoints written as torch.save writes them, with the official key names and shapes: the official
    .pt (FullModel state, "model." keys, a loss buffer), by path and by name through the registry; an mmsegmentation
    .pth (zip, "state_dict" with "backbone."/"decode_head." keys); the official ImageNet .pth.tar (legacy format,
    "state_dict" with DataParallel's "module." keys and a classifier)."""
    from segzoo.checkpoints.writers import write_torch_legacy, write_torch_zip
    from segzoo.models.pidnet.model import build
    from segzoo.models.pidnet.weights import import_backbone
    from segzoo.models.registry import load_pretrained

    variant, state, image, expected, params, _ = reference_case
    official = write_torch_zip(tmp_path / f"PIDNet_{variant.upper()}_Cityscapes_test.pt",
                               {**{f"model.{k}": v for k, v in state.items()},
                                "sem_loss.criterion.weight": np.ones(NUM_CLASSES, np.float32)})
    model = build(params, NUM_CLASSES)
    load_pretrained(model, replace(params, pretrained_weights=str(official)), NUM_CLASSES)
    _assert_close(_outputs(model, image), expected)
    named = replace(params, pretrained_weights=f"official_cityscapes_{variant}")
    model = build(params, NUM_CLASSES)
    assert load_pretrained(model, named, NUM_CLASSES, weights_dirs=[tmp_path]) == official
    _assert_close(_outputs(model, image), expected)

    renamed = {f"model.{k}": v for k, v in state.items()}
    key = next(k for k in state if k.startswith("spp.") and k.endswith(".running_mean"))  # PAPPM/DAPPM names differ
    renamed[f"model.{key[:-4]}een"] = renamed.pop(f"model.{key}")
    bad = write_torch_zip(tmp_path / "renamed.pt", renamed)
    with pytest.raises(ModelError, match=rf"renamed\.pt .*missing key\(s\) {re.escape(key)};"
                                         rf".*nothing in the model uses: {re.escape(key[:-4])}een"):
        load_pretrained(build(params, NUM_CLASSES),
                        replace(params, pretrained_weights=str(bad)), NUM_CLASSES)

    zeroed = {k: (np.zeros_like(v) if k in ("conv1.0.bias", "conv1.3.bias") else v) for k, v in state.items()}
    mmseg = {ref.official_to_mmseg(k): v for k, v in zeroed.items() if ref.official_to_mmseg(k) is not None}
    mm_file = write_torch_zip(tmp_path / "pidnet_mmseg.pth", {"meta": {"mmseg_version": "1.0.0"}, "state_dict": mmseg})
    from_mmseg, from_official = build(params, NUM_CLASSES), build(params, NUM_CLASSES)
    load_pretrained(from_mmseg, replace(params, pretrained_weights=str(mm_file)), NUM_CLASSES)
    from segzoo.models.pidnet.weights import load_state_dict

    load_state_dict(from_official, zeroed)
    np.testing.assert_array_equal(_outputs(from_mmseg, image)["logits"], _outputs(from_official, image)["logits"])
    # an mmsegmentation file name carries its sha256 prefix: a file that does not match it is refused
    wrong = mm_file.rename(tmp_path / "pidnet-s_2xb6-120k_1024x1024-cityscapes_20230302_191700-bb8e3bcc.pth")
    with pytest.raises(ModelError, match="sha256 starts with .* name says bb8e3bcc"):
        import_backbone(build(params, NUM_CLASSES), wrong)

    imagenet = {f"module.{k}": v for k, v in state.items() if not k.startswith(("layer3_d", "layer4_d", "layer5_d",
                                                                                  "diff", "seghead", "final_layer"))}
    imagenet.update({"module.linear.weight": np.zeros((1000, 1024), np.float32)})
    tar = write_torch_legacy(tmp_path / f"PIDNet_{variant.upper()}_ImageNet.pth.tar",
                             {"epoch": 100, "state_dict": imagenet})
    fresh = build(params, NUM_CLASSES)
    summary = import_backbone(fresh, tar)
    assert summary["unused"] == ["linear.weight"] and summary["schema"] == "official"
    np.testing.assert_array_equal(fresh.get_layer("pag4.f_y.0").get_weights()[0], ref_oihw(state["pag4.f_y.0.weight"]))


def test_export_keeps_logits_and_drops_heads(reference_case, tmp_path):
    import keras

    from segzoo.models.pidnet.export import export
    from segzoo.models.pidnet.weights import load_state_dict

    variant, state, image, expected, params, model = reference_case
    load_state_dict(model, state)
    exported = export(model, params)
    logits = np.asarray(exported(_nhwc(image).astype(np.float32)))
    want = _nhwc(expected["logits"])
    assert np.abs(logits - want).max() <= 1e-4 * np.ptp(want)
    kinds = {type(layer).__name__ for layer in exported.layers}
    assert "BatchNormalization" not in kinds and "DepthwiseConv2D" in kinds
    path = tmp_path / "exported.keras"
    exported.save(path)
    again = keras.saving.load_model(path, compile=False)
    np.testing.assert_array_equal(np.asarray(again(_nhwc(image).astype(np.float32))), logits)
    upsampled = export(model, PidnetParams(variant=variant, input_shape=[*REF_SHAPE, 3], upsample=True))
    assert tuple(upsampled.output.shape[1:3]) == REF_SHAPE


def test_mmseg_checkpoint_matches_official(reference_case):
    from segzoo.models.pidnet.model import build
    from segzoo.models.pidnet.weights import load_state_dict

    variant, state, image, expected, params, model = reference_case
    # mmsegmentation's stem convs have no bias: the same network has zero biases there
    state = {k: (np.zeros_like(v) if k in ("conv1.0.bias", "conv1.3.bias") else v) for k, v in state.items()}
    load_state_dict(model, state)
    mmseg = {ref.official_to_mmseg(k): v for k, v in state.items() if ref.official_to_mmseg(k) is not None}
    assert any(k.startswith("backbone.spp.scales.4.1.bn") for k in mmseg)
    other = build(params, NUM_CLASSES)
    summary = load_state_dict(other, mmseg, source="pidnet_mmseg.pth")
    assert summary["schema"] == "mmseg"
    want, got = _outputs(model, image), _outputs(other, image)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_renamed_missing_and_misshaped_keys_are_named(reference_case):
    from segzoo.models.pidnet.weights import load_state_dict

    _, state, _, _, _, model = reference_case
    renamed = dict(state)
    renamed["layer3_.1.bn2.running_varr"] = renamed.pop("layer3_.1.bn2.running_var")
    with pytest.raises(ModelError, match=r"missing key\(s\) layer3_\.1\.bn2\.running_var\b") as err:
        load_state_dict(model, renamed, source="renamed.pt")
    assert "layer3_.1.bn2.running_varr" in str(err.value) and "renamed.pt" in str(err.value)
    wrong = dict(state)
    wrong["final_layer.conv2.weight"] = np.zeros((19, *state["final_layer.conv2.weight"].shape[1:]), np.float32)
    head = state["final_layer.conv2.weight"].shape[1]
    with pytest.raises(ModelError, match=rf"final_layer\.conv2\.weight: file \(19, {head}, 1, 1\), model needs "
                                         rf"\(1, 1, {head}, {NUM_CLASSES}\)"):
        load_state_dict(model, wrong)
    mmseg = {ref.official_to_mmseg(k): v for k, v in state.items() if ref.official_to_mmseg(k) is not None}
    mmseg["backbone.spp.scales.4.1.bn.running_vr"] = mmseg.pop("backbone.spp.scales.4.1.bn.running_var")
    with pytest.raises(ModelError, match=r"\(mmseg PIDNet key names\).*missing key\(s\) "
                                         r"backbone\.spp\.scales\.4\.1\.bn\.running_var;.*running_vr"):
        load_state_dict(model, mmseg)
    partial = {k: v for k, v in state.items() if not k.startswith("seghead_d.conv1")}
    with pytest.raises(ModelError, match=r"seghead_d\.conv1\.weight"):
        load_state_dict(model, partial)


def test_heads_absent_together_and_backbone_part(reference_case):
    from segzoo.models.pidnet.model import build
    from segzoo.models.pidnet.weights import load_state_dict

    variant, state, image, expected, params, _ = reference_case
    model = build(params, NUM_CLASSES)
    no_heads = ref.inference_keys(state)  # an augment=False checkpoint
    summary = load_state_dict(model, no_heads)
    assert summary["left_initial"] == ["seghead_p.*", "seghead_d.*"]
    np.testing.assert_allclose(_outputs(model, image)["logits"], _nhwc(expected["logits"]),
                               atol=1e-4 * np.ptp(expected["logits"]))
    # a backbone import (ImageNet-like: no D branch, a classifier) into a model with other classes
    other = build(params, 3)
    before = other.get_layer("final_layer.conv2").get_weights()[0].copy()
    imagenet = {k: v for k, v in state.items() if not k.startswith(("layer3_d", "layer4_d", "layer5_d", "diff"))}
    imagenet.update({"fc.weight": np.zeros((1000, 1024), np.float32), "fc.bias": np.zeros(1000, np.float32)})
    summary = load_state_dict(other, {f"module.{k}": v for k, v in imagenet.items()}, part="backbone")
    assert summary["unused"] == ["fc.bias", "fc.weight"]
    assert any(k.startswith("layer3_d.") for k in summary["left_initial"])
    np.testing.assert_array_equal(other.get_layer("final_layer.conv2").get_weights()[0], before)
    np.testing.assert_array_equal(other.get_layer("layer5.1.conv3").get_weights()[0],
                                  ref_oihw(state["layer5.1.conv3.weight"]))
    with pytest.raises(ModelError, match=r"missing key\(s\) layer4\.0\.conv1\.weight"):
        load_state_dict(other, {k: v for k, v in imagenet.items() if k != "layer4.0.conv1.weight"}, part="backbone")


def ref_oihw(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))


def test_mmseg_names_known_for_every_official_key(reference_case):
    from segzoo.models.pidnet.weights import mmseg_key

    _, state, _, _, _, _ = reference_case
    for key in state:
        assert mmseg_key(key) == ref.official_to_mmseg(key), key


# ----------------------------------------------------------------------------------------- NPU rewrites
def _single(builder_fn, inputs: list[np.ndarray]):
    """A Keras model of one builder call on ``inputs``, and its output."""
    import keras

    tensors = [keras.Input(shape=x.shape[1:]) for x in inputs]
    model = keras.Model(tensors if len(tensors) > 1 else tensors[0], builder_fn(*tensors))
    arrays = [x.astype(np.float32) for x in inputs]
    return model, np.asarray(model(arrays if len(arrays) > 1 else arrays[0]))


def test_rewrites_equal_literal_forms():
    import keras

    from segzoo.models.pidnet.model import Builder

    rng = np.random.default_rng(3)
    b = Builder()
    x, y = rng.normal(size=(2, 6, 10, 8)), rng.normal(size=(2, 6, 10, 8))
    s = 1 / (1 + np.exp(-rng.normal(size=(2, 6, 10, 1))))
    # gate: x + s*(y-x) == (1-s)*x + s*y
    _, got = _single(lambda a, c, g: b.gate(a, c, g, "gate"), [x, y, s])
    np.testing.assert_allclose(got, (1 - s) * x + s * y, atol=1e-6)
    # Light-Bag inputs: (p + i) - s*i == (1-s)*i + p (checked through the whole module with identity convs)
    d = rng.normal(size=x.shape)
    model, _ = _single(lambda p, i, dd: b.light_bag(p, i, dd, "lb", 8), [x, y, d])
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            layer.set_weights([np.eye(8).reshape(1, 1, 8, 8)])
        elif type(layer).__name__ == "BatchNormalization":
            layer.set_weights([np.ones(8), np.zeros(8), np.zeros(8), np.ones(8) - 1e-5])
    e = 1 / (1 + np.exp(-d))
    got = np.asarray(model([x.astype(np.float32), y.astype(np.float32), d.astype(np.float32)]))
    np.testing.assert_allclose(got, ((1 - e) * y + x) + (y + e * x), atol=1e-5)
    # Pag channel sum: fixed all-ones 1x1 conv == sum over channels, not trainable
    conv = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, kernel_initializer="ones")
    np.testing.assert_allclose(np.asarray(conv(x.astype(np.float32))), x.sum(-1, keepdims=True), atol=1e-5)


@pytest.mark.parametrize("kernel,stride,pad", [(5, 2, 2), (9, 4, 4), (17, 8, 8)])
def test_average_pool_counts_padding_like_pytorch(kernel, stride, pad):
    import keras

    from segzoo.models.pidnet.model import Builder

    x = np.random.default_rng(4).uniform(1, 2, size=(1, 6, 8, 3))
    _, got = _single(lambda t: Builder().avg_pool(t, kernel, stride, pad, "pool"), [x])
    want = _nhwc(ref.avg_pool(np.transpose(x, (0, 3, 1, 2)), kernel, stride, pad))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Keras 'same' divides by the unpadded count: a different number (this is why the port pads explicitly)
    same = keras.layers.AveragePooling2D(kernel, stride, padding="same")(x.astype(np.float32))
    assert np.asarray(same).shape != want.shape or np.abs(np.asarray(same) - want).max() > 0.1


def test_stride2_conv_pads_both_sides_like_pytorch():
    import keras

    from segzoo.models.pidnet.model import Builder

    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 8, 10, 3))
    model, _ = _single(lambda t: Builder().conv(t, "c", 4, 3, 2, bias=True), [x])
    state = ref.StateDict(rng=rng)
    want = _nhwc(ref.conv2d(state, np.transpose(x, (0, 3, 1, 2)), "c", 4, 3, 2, bias=True))
    model.get_layer("c").set_weights([ref_oihw(state.values["c.weight"]), state.values["c.bias"]])
    np.testing.assert_allclose(np.asarray(model(x.astype(np.float32))), want, atol=1e-5)
    same = keras.layers.Conv2D(4, 3, 2, padding="same")
    same.build(x.shape)
    same.set_weights(model.get_layer("c").get_weights())
    assert np.abs(np.asarray(same(x.astype(np.float32))) - want).max() > 1e-2


def test_grouped_conv_split_per_branch_equals_grouped_conv():
    import keras

    from segzoo.models.pidnet.weights import _rows, oihw_to_hwio

    rng = np.random.default_rng(6)
    branch = 5
    parts = [rng.normal(size=(1, 4, 6, branch)) for _ in range(4)]
    weight = rng.normal(size=(4 * branch, branch, 3, 3))  # official grouped weight [out, in/groups, k, k]
    grouped = keras.layers.Conv2D(4 * branch, 3, padding="same", groups=4, use_bias=False)
    grouped.build((None, 4, 6, 4 * branch))
    grouped.set_weights([oihw_to_hwio(weight)])
    literal = np.asarray(grouped(np.concatenate(parts, -1).astype(np.float32)))
    split = []
    for g, part in enumerate(parts):
        conv = keras.layers.Conv2D(branch, 3, padding="same", use_bias=False)
        conv.build(part.shape)
        conv.set_weights([_rows(g, oihw_to_hwio)(weight)])
        split.append(np.asarray(conv(part.astype(np.float32))))
    np.testing.assert_allclose(np.concatenate(split, -1), literal, atol=1e-5)


def test_batchnorm_folding_equals_conv_then_batchnorm():
    import keras

    from segzoo.models.pidnet.export import depthwise_from_bn, fold_conv_bn

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2, 5, 7, 4)).astype(np.float32)
    bn = keras.layers.BatchNormalization(epsilon=1e-5)
    bn.build((None, 5, 7, 6))
    bn.set_weights([rng.uniform(0.5, 2, 6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.2, 2, 6)])
    conv = keras.layers.Conv2D(6, 3, padding="same", use_bias=True)
    conv.build(x.shape)
    literal = np.asarray(bn(conv(x), training=False))
    folded = keras.layers.Conv2D(6, 3, padding="same", use_bias=True)
    folded.build(x.shape)
    kernel, bias = conv.get_weights()
    folded.set_weights(list(fold_conv_bn(kernel, bias, bn)))
    np.testing.assert_allclose(np.asarray(folded(x)), literal, atol=1e-5)
    # a standalone BN (BN -> ReLU -> conv) becomes a 1x1 depthwise conv
    standalone = keras.layers.BatchNormalization(epsilon=1e-5)
    standalone.build(x.shape)
    standalone.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.2, 2, 4)])
    depthwise = keras.layers.DepthwiseConv2D(1, use_bias=True)
    depthwise.build(x.shape)
    depthwise.set_weights(list(depthwise_from_bn(standalone)))
    np.testing.assert_allclose(np.asarray(depthwise(x)), np.asarray(standalone(x, training=False)), atol=1e-5)


def test_pooled_1x1_map_added_by_broadcast_equals_resized_map():
    import keras

    from segzoo.models.pidnet.model import Builder

    rng = np.random.default_rng(8)
    small, big = rng.normal(size=(2, 1, 1, 4)), rng.normal(size=(2, 6, 8, 4))
    model, got = _single(lambda a, c: Builder().add_upsampled(a, c, "p"), [small, big])
    assert not any(isinstance(layer, (keras.layers.UpSampling2D, keras.layers.Resizing)) for layer in model.layers)
    resized = keras.layers.Resizing(6, 8, interpolation="bilinear")(small.astype(np.float32))
    np.testing.assert_allclose(got, np.asarray(resized) + big, atol=1e-6)


# ------------------------------------------------------------------------------------------------ losses
def _loss_case(rng, confident: bool, ignore_boundary: bool = False):
    batch, classes, (h, w), (height, width) = 2, 5, (6, 8), (48, 64)
    scale = 4.0 if confident else 1.0
    outputs = {"logits": rng.normal(size=(batch, classes, h, w)) * scale,
               "aux": rng.normal(size=(batch, classes, h, w)) * scale,
               "boundary": rng.normal(size=(batch, 1, h, w)) * 3}
    if confident:  # labels mostly agree with the logits: most probabilities are above the OHEM threshold
        up = ref_loss.interpolate(outputs["logits"], (height, width), False)
        labels = up.argmax(1)
        flip = rng.random(labels.shape) < 0.1
        labels[flip] = rng.integers(0, classes, size=flip.sum())
    else:
        labels = rng.integers(0, classes, size=(batch, height, width))
    labels[:, :5, :7] = 255
    labels[0, -3:, -4:] = 9  # a label >= num_classes is ignored as well
    boundary = (rng.random((batch, height, width)) < 0.2).astype(np.int64)
    if ignore_boundary:
        boundary[labels == 255] = 255
    return outputs, labels, boundary, classes


@pytest.mark.parametrize("confident,min_kept,use_ohem,align,weights", [
    (False, 500, True, True, None),                      # threshold 0.9 (many pixels below it)
    (True, 5000, True, False, [0.5, 1.0, 2.0, 1.0, 0.7]),  # threshold = the k-th probability (above 0.9)
    (True, 100000, True, True, None),                    # min_kept above the pixel count: k = n - 1
    (False, 300, False, False, [0.5, 1.0, 2.0, 1.0, 0.7]),  # USE_OHEM false: weighted-mean CE
])
def test_losses_equal_official_semantics(confident, min_kept, use_ohem, align, weights):
    import tensorflow as tf

    from segzoo.models.pidnet.losses import loss_terms

    rng = np.random.default_rng(9)
    outputs, labels, boundary, classes = _loss_case(rng, confident)
    labels_official = np.where(labels >= classes, 255, labels)  # the official code has only ignore_label
    probs = ref_loss.interpolate(outputs["logits"], labels.shape[1:], align)
    probs = np.exp(probs - probs.max(1, keepdims=True))
    probs = np.take_along_axis(probs / probs.sum(1, keepdims=True), np.where(labels < classes, labels, 0)[:, None], 1)
    below = int((probs[:, 0][labels < classes] < 0.9).sum())
    assert (below <= min_kept) == (confident and use_ohem)  # which OHEM threshold the case exercises
    want = ref_loss.full_model_losses(outputs, labels_official, boundary, weight=weights, min_kept=min_kept,
                                      use_ohem=use_ohem, align_corners=align)
    params = PidnetParams(loss=PidnetLoss(ohem_min_kept=min_kept, use_ohem=use_ohem, align_corners=align))
    terms = loss_terms(params, classes, 255, weights)
    assert [(t.name, t.weight) for t in terms] == [("main", 1.0), ("aux", 0.4), ("boundary", 20.0),
                                                   ("boundary_aware", 1.0)]
    tensors = {k: tf.constant(_nhwc(v), tf.float32) for k, v in outputs.items()}
    targets = {"labels": tf.constant(labels, tf.int32), "boundary": tf.constant(boundary, tf.uint8)}
    got = {t.name: float(t.fn(targets, tensors)) for t in terms}
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=2e-5, abs=1e-6), name


def test_boundary_loss_leaves_ignored_pixels_out_and_gradients_flow():
    import tensorflow as tf

    from segzoo.models.pidnet.losses import loss_terms

    rng = np.random.default_rng(10)
    outputs, labels, boundary, classes = _loss_case(rng, False, ignore_boundary=True)
    up = ref_loss.interpolate(outputs["boundary"], labels.shape[1:], False)
    keep = boundary != 255
    want = ref_loss.weighted_bce(up[:, 0][keep][None, None, None, :], boundary[keep])
    terms = {t.name: t for t in loss_terms(PidnetParams(), classes, 255, None)}
    tensors = {k: tf.Variable(_nhwc(v), dtype=tf.float32) for k, v in outputs.items()}
    targets = {"labels": tf.constant(labels), "boundary": tf.constant(boundary, tf.uint8)}
    with tf.GradientTape() as tape:
        total = sum(t.weight * t.fn(targets, tensors) for t in terms.values())
    assert float(terms["boundary"].fn(targets, tensors)) == pytest.approx(want, rel=1e-5)
    grads = tape.gradient(total, list(tensors.values()))
    assert all(g is not None and np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0
               for g in grads)
    # no pixel passes the boundary-aware threshold: 0, not NaN
    tensors["boundary"] = tf.fill(tensors["boundary"].shape, -10.0)
    assert float(terms["boundary_aware"].fn(targets, tensors)) == 0.0


# ------------------------------------------------------------------------------------------------ targets
def _reference_boundary(seg: np.ndarray, width: int, ignore: int) -> np.ndarray:
    """mmsegmentation's GenerateEdge rule with NumPy and OpenCV, ignored pixels set to ``ignore``."""
    import cv2

    h, w = seg.shape
    edge = np.zeros((h, w), np.uint8)

    def differs(a, b):
        return (a != b) & (a != ignore) & (b != ignore)

    edge[1:, :][differs(seg[1:, :], seg[:-1, :])] = 1
    edge[:, :-1][differs(seg[:, :-1], seg[:, 1:])] = 1
    edge[:-1, :-1][differs(seg[:-1, :-1], seg[1:, 1:])] = 1
    edge[:-1, 1:][differs(seg[:-1, 1:], seg[1:, :-1])] = 1
    edge = cv2.dilate(edge, cv2.getStructuringElement(cv2.MORPH_RECT, (width, width)))
    edge[seg == ignore] = ignore
    return edge


def test_boundary_map_equals_generate_edge_on_camvid():
    import cv2
    import tensorflow as tf

    from segzoo.data.targets import TARGETS, boundary_map, target_function

    folder = shared_path("datasets", "camvid", "CamVid", "trainannot")
    masks = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(folder.glob("*.png"))[:3]]
    assert all(m.shape == (360, 480) and (m == 11).any() for m in masks)  # CamVid void is 11
    for width in (1, 2, 3, 4, 5):
        for mask in masks:
            got = boundary_map(mask, width, ignore_index=11).numpy()
            want = _reference_boundary(mask, width, 11)
            np.testing.assert_array_equal(got, want)
            assert 0.02 < (want == 1).mean() < 0.3
    # the registered target, with its width from the params, inside a tf.data map (per image, as the pipeline)
    assert FAMILY.targets == ("boundary",) and "boundary" in TARGETS
    fn = target_function("boundary", PidnetParams(boundary_width=3), 11)
    dataset = tf.data.Dataset.from_tensor_slices(np.stack(masks).astype(np.int32)).map(fn).batch(3)
    np.testing.assert_array_equal(next(iter(dataset)).numpy(),
                                  np.stack([_reference_boundary(m, 3, 11) for m in masks]))
    # batched label maps give the same maps
    np.testing.assert_array_equal(boundary_map(np.stack(masks), 4, 11).numpy(),
                                  np.stack([_reference_boundary(m, 4, 11) for m in masks]))


# --------------------------------------------------------------------------------- TFLite and placement
@pytest.mark.slow
def test_tflite_int8_per_tensor_and_stm32mp2_placement(tmp_path):
    import cv2

    from segzoo.benchmarking.estimate import estimate_stm32mp2
    from segzoo.models.pidnet.export import export
    from segzoo.models.pidnet.model import build
    from segzoo.quantization.converter import convert

    folder = shared_path("datasets", "camvid", "CamVid", "train")
    size = (128, 192)
    params = PidnetParams(input_shape=[*size, 3])
    exported = export(build(params, 11), params)
    images = [cv2.resize(cv2.imread(str(p))[:, :, ::-1], size[::-1]).astype(np.float32) / 127.5 - 1
              for p in sorted(folder.glob("*.png"))[:2]]

    def representative():
        for image in images:
            yield image[None]

    float_path = convert(exported, None, tmp_path / "pidnet_s.tflite", quantize=False, input_type="float")
    int8_path = convert(exported, representative, tmp_path / "pidnet_s_int8.tflite")
    from ai_edge_litert.interpreter import Interpreter

    for path in (float_path, int8_path):
        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        assert list(interpreter.get_input_details()[0]["shape"]) == [1, *size, 3]
        assert list(interpreter.get_output_details()[0]["shape"]) == [1, size[0] // 8, size[1] // 8, 11]
    estimate = estimate_stm32mp2(int8_path)
    off = {(op["name"], op["reason"]) for op in estimate["ops"] if op["unit"] != "NPU"}
    assert {name for name, _ in off} == {"MUL", "DEQUANTIZE"}  # the gates' products and the float output
    assert estimate["op_types_by_unit"]["GPU"]["MUL"] == 6
    assert estimate["cpu_pct"] == 0.0 and estimate["npu_pct"] >= 95.0


# ------------------------------------------------------------------------------------------ the pipeline
CAMVID_CONFIG = Path(__file__).resolve().parents[1] / "config_file_examples" / "chain_tqe_camvid_pidnet.yaml"


def _camvid_pidnet_config(tmp_path: Path) -> dict:
    """``chain_tqe_camvid_pidnet.yaml`` as a user has it, shrunk: 8 training and 3 validation images of the real
    CamVid, 64x64 input, 2 short epochs; everything else (losses, preprocessing, per-tensor quantization) as shipped."""
    camvid = shared_path("datasets", "camvid", "CamVid")
    cfg = yaml.safe_load(CAMVID_CONFIG.read_text())
    lists = {"training": "train_subset.txt", "validation": "val.txt"}
    for split, count in (("training", 8), ("validation", 3)):
        lines = (camvid / lists[split]).read_text().splitlines()[:count]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
        folder = "train" if split == "training" else "val"
        cfg["dataset"].update({f"{split}_path": str(camvid / folder),
                               f"{split}_masks_path": str(camvid / f"{folder}annot"),
                               f"{split}_files_path": str(tmp_path / f"{split}.txt")})
    cfg["training"]["model"]["input_shape"] = [64, 64, 3]
    cfg["training"]["model"]["loss"]["ohem_min_kept"] = 2000
    cfg["training"].update(epochs=2, steps_per_epoch=2, batch_size=4, tensorboard=False)
    cfg["quantization"]["calibration_images"] = 4
    cfg["benchmarking"] = {"targets": ["stm32mp2_estimate"]}
    cfg["mlflow"] = {"enabled": False}
    return cfg


@pytest.mark.heavy
def test_camvid_pidnet_config_trains_quantizes_evaluates_benchmarks_and_deploys(tmp_path, sshd_server):
    """The CamVid PIDNet config end to end (chain_tqeb, then deployment of its int8 file to an SSH board): the four
    losses logged and summed with their weights, the checkpoint keeps the training heads, the exported and the int8
    per-tensor models have one 1/8 output, evaluation at CamVid's 480x360, the STM32MP257 estimate on the NPU, and
    the board application's labels at 480x360 equal segzoo's prediction with the same file."""
    import csv

    import keras

    from segzoo.cli import run
    from segzoo.prediction import predict_labels

    cfg = _camvid_pidnet_config(tmp_path)
    cfg["operation_mode"] = "chain_tqeb"
    results = run(cfg, run_dir=tmp_path / "run")
    with open(tmp_path / "run" / "logs" / "training_log.csv") as handle:
        row = next(csv.DictReader(handle))
    loss = cfg["training"]["model"]["loss"]
    total = (float(row["loss_main"]) + loss["aux_weight"] * float(row["loss_aux"])
             + loss["boundary_weight"] * float(row["loss_boundary"])
             + loss["bas_weight"] * float(row["loss_boundary_aware"]))
    assert float(row["loss"]) == pytest.approx(total, rel=1e-3)
    saved = tmp_path / "run" / "saved_models"
    checkpoint = keras.saving.load_model(saved / "best_checkpoint.keras", compile=False)
    exported = keras.saving.load_model(saved / "best_model.keras", compile=False)
    assert sorted(checkpoint.output) == ["aux", "boundary", "logits"]
    assert tuple(exported.output.shape[1:]) == (8, 8, 11)
    quantized = results["quantization"]
    assert quantized["npu_ready"] and quantized["granularity"] == "per_tensor"
    assert 0.0 <= results["quantized_evaluation"]["miou"] <= 1.0
    int8 = sorted((tmp_path / "run" / "quantized_models").glob("*.tflite"))
    assert len(int8) == 1
    report = json.loads((tmp_path / "run" / "benchmark_report.json").read_text())
    rows = report["rows"] if isinstance(report, dict) else report
    estimate = [r for r in rows if r["target"] == "stm32mp2_estimate" and "int8" in r["model"]]
    assert len(estimate) == 1 and estimate[0]["npu_pct"] >= 95.0

    image = Path(cfg["dataset"]["validation_path"]) / "0016E5_07959.png"
    board = deploy_one_image(sshd_server, cfg, int8[0], image, tmp_path, "pidnet camvid")
    board_labels, scores = board.board_labels, board.scores
    assert board_labels.shape == board.rgb.shape[:2] == (360, 480)
    # the board restores the 1/8 scores with OpenCV's bilinear resize, as restore_logits does: the same labels
    assert board.output.shape == (8, 8, 11)
    np.testing.assert_array_equal(board_labels, np.argmax(scores, axis=-1))
    # segzoo's prediction (bilinear weights of its own, in float32) differs from it only where two classes tie
    host = predict_labels(board.runner, board.rgb, board.pp, 11)
    top2 = np.sort(scores, axis=-1)[..., -2:]
    differ = host != board_labels
    assert differ.mean() < 1e-3
    assert np.all(top2[differ, 1] - top2[differ, 0] < 1e-4 * (scores.max() - scores.min()))
