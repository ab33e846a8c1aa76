"""Models that end at 1/output-stride logits (``training.model.upsample: false``): the host upsamples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segzoo.data.layouts import list_samples
from segzoo.data.masks import ClassMapper
from segzoo.data.synthetic import SYNTHETIC_CLASSES, ensure_synthetic_dataset
from segzoo.evaluation.evaluate import evaluate
from segzoo.prediction import predict_images
from segzoo.preprocess import Preprocessing
from segzoo.runners import load_runner


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """The same random-weight DeepLabV3 with and without its final upsampling, as .keras and int8 .tflite."""
    keras = pytest.importorskip("keras")
    from segzoo.models.registry import build_model
    from segzoo.quantization.converter import convert

    tmp = tmp_path_factory.mktemp("lowres")
    full = build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=len(SYNTHETIC_CLASSES), alpha=0.35,
                       aspp="none", upsample=True)
    low = keras.Model(full.inputs, full.get_layer("logits").output)
    rng = np.random.default_rng(0)
    calibration = [rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32) for _ in range(4)]
    paths = {}
    for name, model in (("full", full), ("low", low)):
        paths[f"{name}.keras"] = tmp / f"{name}.keras"
        model.save(paths[f"{name}.keras"])
        paths[f"{name}.tflite"] = convert(model, lambda: iter(calibration), tmp / f"{name}.tflite")
    return paths


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    root = ensure_synthetic_dataset(tmp_path_factory.mktemp("data"), num_train=2, num_val=6)
    return list_samples(root / "JPEGImages", root / "SegmentationClass",
                        root / "ImageSets" / "Segmentation" / "val.txt")


def test_low_resolution_logits_evaluate_at_original_size(models, samples) -> None:
    mapper = ClassMapper(num_classes=len(SYNTHETIC_CLASSES))
    for suffix in ("keras", "tflite"):
        runner = load_runner(models[f"low.{suffix}"])
        assert runner.predict(np.zeros((1, 64, 64, 3), np.float32)).shape[1:3] == (4, 4)
        result = evaluate(runner, samples, mapper, Preprocessing(), list(SYNTHETIC_CLASSES))
        assert result.num_images == len(samples)
        assert result.confusion.sum() > 0.9 * sum(np.asarray(Image.open(s.mask_path)).size for s in samples)


def test_low_resolution_logits_predict_full_size_masks(models, samples, tmp_path) -> None:
    runner = load_runner(models["low.tflite"])
    rows = predict_images(runner, [s.image_path for s in samples[:2]], tmp_path, Preprocessing(),
                          list(SYNTHETIC_CLASSES))
    for row, sample in zip(rows, samples[:2]):
        mask = Image.open(row["mask"])
        assert mask.size == Image.open(sample.image_path).size and mask.mode == "P"


def test_upsampling_inside_the_model_matches_upsampling_on_the_host(models, samples) -> None:
    """Both ends give nearly the same labels: the model's bilinear upsampling and the host's agree."""
    mapper = ClassMapper(num_classes=len(SYNTHETIC_CLASSES))
    full = evaluate(load_runner(models["full.keras"]), samples, mapper, Preprocessing(), list(SYNTHETIC_CLASSES))
    low = evaluate(load_runner(models["low.keras"]), samples, mapper, Preprocessing(), list(SYNTHETIC_CLASSES))
    agreement = np.trace(full.confusion) / full.confusion.sum(), np.trace(low.confusion) / low.confusion.sum()
    assert abs(agreement[0] - agreement[1]) < 0.05
