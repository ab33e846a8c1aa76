"""SAM2 encoder and decoder as TFLite files with named signatures: float files match Keras in LiteRT, the int8
per-tensor decoder keeps only its point encoding in float, the STM32MP2 placement names the ops off the NPU, and
the promptable predictor gives the same logits from Keras and from the TFLite pair."""

from __future__ import annotations

import numpy as np
import pytest

from reference.sam2_schema import synthetic_state_dict
from segzoo.errors import ModelError
from segzoo.models.sam2.params import Sam2Params

SIZE = 64


@pytest.fixture(scope="module")
def params() -> Sam2Params:
    return Sam2Params(input_shape=[SIZE, SIZE, 3], num_points=2)


@pytest.fixture(scope="module")
def models(params):
    from segzoo.models.sam2.model import build_decoder, build_encoder
    from segzoo.models.sam2.weights import assign_state_dict

    encoder, decoder = build_encoder(params), build_decoder(params)
    assign_state_dict(synthetic_state_dict(seed=3), encoder, decoder, params)
    return encoder, decoder


@pytest.fixture(scope="module")
def samples(models):
    """Decoder inputs: encoder features of random images with positive, negative and padding points."""
    encoder, _ = models
    rng = np.random.default_rng(0)
    out = []
    for labels in ([1, -1], [1, 0], [1, 1], [0, 1]):
        feats = {k: np.asarray(v) for k, v in encoder(rng.normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)).items()}
        out.append({**feats, "point_coords": rng.uniform(0, SIZE, (1, 2, 2)).astype(np.float32),
                    "point_labels": np.array([labels], np.float32)})
    return out


def _keras(model, inputs):
    return {k: np.asarray(v) for k, v in model(inputs).items()}


def test_float_decoder_signature_matches_keras(models, samples, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from segzoo.models.sam2.export import export_tflite, run_tflite

    _, decoder = models
    path = tmp_path / "decoder.tflite"
    export_tflite(decoder, path)
    signature = Interpreter(model_path=str(path)).get_signature_list()["serving_default"]
    assert sorted(signature["inputs"]) == sorted(samples[0])
    assert sorted(signature["outputs"]) == ["iou", "masks", "object_score_logits"]
    for sample in samples:
        got, want = run_tflite(path, sample), _keras(decoder, sample)
        assert set(got) == {"masks", "iou", "object_score_logits"}
        assert got["masks"].shape == (1, SIZE // 4, SIZE // 4, 1)
        for name in want:
            scale = max(float(np.ptp(want["masks"])), 1.0)
            assert np.abs(got[name] - want[name]).max() <= 1e-4 * scale, name


@pytest.mark.slow
def test_float_encoder_signature_matches_keras(models, tmp_path):
    from segzoo.models.sam2.export import export_tflite, run_tflite

    encoder, _ = models
    path = tmp_path / "encoder.tflite"
    export_tflite(encoder, path)
    image = np.random.default_rng(1).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    got, want = run_tflite(path, {"image": image}), _keras(encoder, image)
    assert set(got) == {"image_embeddings", "high_res_features_s0", "high_res_features_s1"}
    for name in want:
        assert got[name].shape == want[name].shape
        assert np.abs(got[name] - want[name]).max() <= 1e-4 * float(np.ptp(want[name])), name


@pytest.mark.slow
def test_int8_decoder_per_tensor_with_float_point_encoding(models, samples, tmp_path):
    from segzoo.models.sam2.export import DECODER_FLOAT_SCOPES, export_tflite, run_tflite
    from segzoo.quantization.quantize import placement_summary

    _, decoder = models
    with pytest.raises(ModelError, match="stayed in float.*prompt_encoder"):
        export_tflite(decoder, tmp_path / "strict.tflite", quantize=True, representative=lambda: samples)
    assert not (tmp_path / "strict.tflite").exists()

    path = tmp_path / "decoder_int8.tflite"
    summary = export_tflite(decoder, path, quantize=True, representative=lambda: samples,
                            float_scopes=DECODER_FLOAT_SCOPES)
    assert not summary["has_per_channel"]
    float_types = {op["name"] for op in summary["ops"] if op["tensor"] in summary["float_ops"]}
    assert float_types <= {"SIN", "COS", "CONCATENATION"} and {"SIN", "COS"} <= float_types
    got, want = run_tflite(path, samples[1]), _keras(decoder, samples[1])
    corr = np.corrcoef(got["masks"].ravel(), want["masks"].ravel())[0, 1]
    assert corr > 0.95, f"int8 mask logits correlate {corr:.3f} with float"

    placement = placement_summary(path)
    assert 0.0 < placement["npu_pct"] < 100.0
    assert abs(placement["npu_pct"] + placement["gpu_pct"] + placement["cpu_pct"] - 100.0) < 1e-6
    off = {(row["op"], row["reason"].split(" (")[0]) for row in placement["off_npu"]}
    assert ("SIN", "float activations") in off and ("COS", "float activations") in off
    assert any(op == "BATCH_MATMUL" for op, _ in off)
    assert placement["ops_off_npu"] == sum(row["count"] for row in placement["off_npu"])


@pytest.mark.slow
def test_int8_encoder_is_all_int8_per_tensor(models, tmp_path):
    from segzoo.models.sam2.export import export_tflite, run_tflite

    encoder, _ = models
    images = [np.random.default_rng(i).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32) for i in range(3)]
    summary = export_tflite(encoder, tmp_path / "encoder_int8.tflite", quantize=True,
                            representative=lambda: ({"image": im} for im in images))
    assert not summary["has_per_channel"] and not summary["float_ops"]
    got = run_tflite(tmp_path / "encoder_int8.tflite", {"image": images[0]})
    want = _keras(encoder, images[0])
    corr = np.corrcoef(got["image_embeddings"].ravel(), want["image_embeddings"].ravel())[0, 1]
    assert corr > 0.9


def test_predictor_keras_and_tflite_agree(models, params, tmp_path):
    from segzoo.models.sam2.export import export_tflite
    from segzoo.models.sam2.predictor import Sam2Predictor, keras_functions, pad_points, tflite_functions

    encoder, decoder = models
    image = np.random.default_rng(5).integers(0, 256, (90, 50, 3), dtype=np.uint8)
    coords, labels = np.array([[20.0, 40.0]], np.float32), np.array([1], np.int32)
    predictor = Sam2Predictor(*keras_functions(encoder, decoder), params)
    logits = predictor(image, coords, labels)
    assert logits.shape == (90, 50) and np.isfinite(logits).all() and np.ptp(logits) > 0
    assert predictor.features(image) is predictor.features(image), "the encoder runs once per image"

    path = tmp_path / "dec.tflite"
    export_tflite(decoder, path)
    encode, _ = keras_functions(encoder, decoder)
    _, decode = tflite_functions(path, path)
    mixed = Sam2Predictor(encode, decode, params)(image, coords, labels)
    assert np.abs(mixed - logits).max() <= 1e-4 * float(np.ptp(logits))

    padded, padded_labels = pad_points(coords, labels, 2)
    assert padded_labels.tolist() == [[1.0, -1.0]] and padded.shape == (1, 2, 2)
    with pytest.raises(ModelError, match="3 point prompts, but the decoder takes at most 2"):
        pad_points(np.zeros((3, 2), np.float32), np.ones(3, np.int32), 2)


@pytest.mark.slow
def test_keras_save_and_load(models, samples, tmp_path):
    import keras

    from segzoo.models.base import resolve
    from segzoo.models.sam2 import FAMILY

    encoder, decoder = models
    objects = dict(resolve(FAMILY.custom_objects))
    image = np.random.default_rng(2).normal(size=(1, SIZE, SIZE, 3)).astype(np.float32)
    for model, inputs in ((encoder, image), (decoder, samples[0])):
        model.save(tmp_path / f"{model.name}.keras")
        loaded = keras.models.load_model(tmp_path / f"{model.name}.keras", custom_objects=objects)
        want, got = _keras(model, inputs), _keras(loaded, inputs)
        assert all(np.array_equal(want[k], got[k]) for k in want), model.name


def test_click_evaluation_with_the_keras_pair(models, params):
    """The task evaluator drives the SAM2 predictor on real COCO instances (synthetic weights: IoUs are low but
    real numbers; the encoder runs once per image whatever the number of instances and clicks)."""
    from conftest import shared_path
    from segzoo.models.sam2.predictor import Sam2Predictor, keras_functions
    from segzoo.tasks.promptable_segmentation.dataset import instance_samples
    from segzoo.tasks.promptable_segmentation.evaluate import evaluate_clicks

    root = shared_path("datasets", "coco128_semseg")
    samples = instance_samples(root / "images" / "train2017", root / "instance_segmentation" / "labels" / "train2017")
    encode, decode = keras_functions(*models)
    calls = {"encode": 0}

    def counting_encode(image):
        calls["encode"] += 1
        return encode(image)

    result = evaluate_clicks(samples[:2], Sam2Predictor(counting_encode, decode, params), num_clicks=2)
    assert result["num_instances"] >= 2 and calls["encode"] == 2
    ious = np.array([r["ious"] for r in result["instances"]])
    assert ious.shape == (result["num_instances"], 2) and np.all((ious >= 0) & (ious <= 1))
    assert result["miou_at"] == pytest.approx(list(ious.mean(axis=0)))
