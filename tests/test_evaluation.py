"""evaluate() and its reports on real COCO images (COCO -> VOC masks) with the real ST and Coral models.

The mIoU of ``evaluate`` is checked against an independent loop written here: Pillow decoding, cv2 resizing,
the ai_edge_litert interpreter called directly, argmax, and IoU from per-class intersection and union counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from conftest import COCO_TO_VOC, shared_path
from segzoo.data.layouts import Sample, list_samples
from segzoo.data.masks import ClassMapper
from segzoo.errors import DataError, ModelError
from segzoo.evaluation.evaluate import EvaluationResult, evaluate
from segzoo.evaluation.reports import write_evaluation_report
from segzoo.preprocess import Preprocessing
from segzoo.runners import load_runner

NUM_IMAGES = 16
VOC_NAMES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
             "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
ST_PP = Preprocessing(scale=1 / 127.5, offset=-1.0)  # ST's app: (pixel - 127.5) / 127.5
# Coral input is uint8 with scale 1/128 and zero point 128: with x = pixel / 128 - 1 the runner's quantization
# q = round(x * 128 + 128) gives back exactly the raw pixel, which is what the model expects.
CORAL_PP = Preprocessing(scale=1 / 128, offset=-1.0)


@dataclass(frozen=True)
class Case:
    """A real model with its preprocessing and the bounds measured on the first 16 COCO images."""

    model: tuple[str, str]
    pp: Preprocessing
    min_miou: float
    min_person_iou: float
    min_pixel_accuracy: float


# Measured on the first 16 train2017 images: ST mIoU 0.202, pixel accuracy 0.813, person IoU 0.725;
# Coral dm0.5 mIoU 0.576, 0.938, 0.803. An all-background prediction scores mIoU 0.085, pixel accuracy 0.847
# (COCO stuff such as tables counts as background, and the ST model labels much of it diningtable).
CASES = {
    "st": Case(("st_deeplabv3_257_int8_per_tensor", "deeplabv3_257_int8_per_tensor.tflite"), ST_PP, 0.15, 0.55, 0.7),
    "coral": Case(("coral_deeplabv3_mnv2_pascal_quant", "deeplabv3_mnv2_dm05_pascal_quant.tflite"), CORAL_PP,
                  0.45, 0.65, 0.88),
}


def coco_samples(n: int = NUM_IMAGES) -> list[Sample]:
    coco = shared_path("datasets", "coco128_semseg")
    return list_samples(coco / "images" / "train2017", coco / "semantic_segmentation" / "masks" / "train2017")[:n]


def coco_mapper(num_classes: int = 21) -> ClassMapper:
    return ClassMapper(num_classes=num_classes, ignore_index=255, mapping=COCO_TO_VOC, default=0)


def model_path(case: Case) -> Path:
    return shared_path("pretrained", *case.model)


# ---- the independent reference ---------------------------------------------------------------------------------

def _voc_mask(path: Path) -> np.ndarray:
    coco = np.array(Image.open(path))
    mask = np.zeros(coco.shape, np.uint8)  # every COCO id not in the table is background
    for coco_id, voc in COCO_TO_VOC.items():
        mask[coco == coco_id] = voc
    return mask


def reference_metrics(model: Path, samples: list[Sample]) -> dict:
    """mIoU and pixel accuracy from a plain loop: resize, rescale, invoke, restore, argmax, count."""
    interpreter = Interpreter(model_path=str(model), num_threads=2)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    _, h, w, _ = inp["shape"]
    inter, union = np.zeros(21), np.zeros(21)
    correct = counted = 0
    for sample in samples:
        image = np.array(Image.open(sample.image_path).convert("RGB"))
        mask = _voc_mask(sample.mask_path)
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        if inp["dtype"] == np.uint8:  # Coral: the quantized input is the raw pixel
            x = resized
        else:  # ST: float in [-1, 1]
            x = resized.astype(np.float32) * np.float32(1 / 127.5) + np.float32(-1.0)
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        size = (mask.shape[1], mask.shape[0])
        if y.ndim == 3:  # logits: bilinear back to the image, then argmax
            pred = np.argmax(cv2.resize(y, size, interpolation=cv2.INTER_LINEAR), axis=-1)
        else:  # ArgMax labels: nearest back to the image
            pred = cv2.resize(y.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST_EXACT)
        valid = mask != 255
        for c in range(21):
            p, t = (pred == c) & valid, (mask == c) & valid
            inter[c] += np.count_nonzero(p & t)
            union[c] += np.count_nonzero(p | t)
        correct += np.count_nonzero((pred == mask) & valid)
        counted += np.count_nonzero(valid)
    ious = [i / u for i, u in zip(inter, union) if u > 0]
    return {"miou": sum(ious) / len(ious), "pixel_accuracy": correct / counted, "num_pixels": counted,
            "person_iou": inter[15] / union[15]}


# ---- evaluate() against the reference --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def st_result() -> EvaluationResult:
    case = CASES["st"]
    return evaluate(load_runner(model_path(case), num_threads=2), coco_samples(), coco_mapper(), case.pp, VOC_NAMES)


@pytest.mark.parametrize("name", ["st", "coral"])
def test_real_model_miou_matches_an_independent_loop(name: str, st_result: EvaluationResult) -> None:
    case = CASES[name]
    samples = coco_samples()
    runner = load_runner(model_path(case), num_threads=2)
    result = st_result if name == "st" else evaluate(runner, samples, coco_mapper(), case.pp, VOC_NAMES)
    expected = reference_metrics(model_path(case), samples)
    m = result.metrics
    print(f"{name}: mIoU {m['miou']:.4f} (reference {expected['miou']:.4f}), pixel accuracy "
          f"{m['pixel_accuracy']:.4f}, person IoU {m['per_class_iou']['person']:.4f}, {result.images_per_second:.1f} img/s")
    assert result.num_images == NUM_IMAGES
    assert m["num_pixels"] == expected["num_pixels"]
    assert m["miou"] == pytest.approx(expected["miou"], abs=1e-6)
    assert m["pixel_accuracy"] == pytest.approx(expected["pixel_accuracy"], abs=1e-6)
    assert m["per_class_iou"]["person"] == pytest.approx(expected["person_iou"], abs=1e-6)
    assert m["miou"] > case.min_miou
    assert m["per_class_iou"]["person"] > case.min_person_iou
    assert m["pixel_accuracy"] > case.min_pixel_accuracy
    assert result.model["output_kind"] == ("logits" if name == "st" else "labels")


def test_clearly_above_an_all_background_prediction(st_result: EvaluationResult) -> None:
    truth_pixels = st_result.confusion.sum(axis=1)
    background_only = np.zeros_like(st_result.confusion)
    background_only[:, 0] = truth_pixels
    tp = np.diag(background_only)
    union = background_only.sum(0) + truth_pixels - tp
    baseline = float(np.mean(tp[union > 0] / union[union > 0]))
    assert st_result.metrics["miou"] > 1.8 * baseline


def test_input_resolution_is_close_to_original() -> None:
    case = CASES["st"]
    runner = load_runner(model_path(case), num_threads=2)
    samples = coco_samples(6)
    original = evaluate(runner, samples, coco_mapper(), case.pp, VOC_NAMES)
    at_input = evaluate(runner, samples, coco_mapper(), case.pp, VOC_NAMES, resolution="input")
    assert at_input.resolution == "input"
    assert 0 < at_input.metrics["num_pixels"] <= 6 * 257 * 257
    assert at_input.metrics["pixel_accuracy"] == pytest.approx(original.metrics["pixel_accuracy"], abs=0.02)


def test_prefetch_workers_and_batching_do_not_change_the_result() -> None:
    case = CASES["st"]
    runner = load_runner(model_path(case), num_threads=2)
    samples = coco_samples(7)
    serial = evaluate(runner, samples, coco_mapper(), case.pp, VOC_NAMES, prefetch=1, workers=1)
    parallel = evaluate(runner, samples, coco_mapper(), case.pp, VOC_NAMES, prefetch=8, workers=3, batch_size=3)
    np.testing.assert_array_equal(serial.confusion, parallel.confusion)


def test_errors(tmp_path: Path) -> None:
    st = load_runner(model_path(CASES["st"]))
    with pytest.raises(DataError, match="no samples"):
        evaluate(st, [], coco_mapper(), ST_PP, VOC_NAMES)
    coral = load_runner(model_path(CASES["coral"]))
    person_only = ClassMapper(num_classes=2, mapping={1: 1, 0: 255}, default=0)
    with pytest.raises(ModelError, match=r"model predicts class \d+ but dataset has 2 classes"):
        evaluate(coral, coco_samples(2), person_only, CORAL_PP, ["background", "person"])
    with pytest.raises(ModelError, match="outputs 21 classes"):
        evaluate(st, coco_samples(1), person_only, ST_PP, ["background", "person"])
    missing = Sample("ghost", tmp_path / "ghost.jpg", coco_samples(1)[0].mask_path)
    with pytest.raises(DataError, match="ghost.jpg"):
        evaluate(st, coco_samples(3) + [missing], coco_mapper(), ST_PP, VOC_NAMES)


# ---- reports ---------------------------------------------------------------------------------------------------

def test_write_evaluation_report(tmp_path: Path, st_result: EvaluationResult) -> None:
    dataset = {"name": "coco128_semseg", "split": "train2017", "num_images": NUM_IMAGES}
    paths = write_evaluation_report(st_result, tmp_path, model_path="models/st.tflite", dataset=dataset,
                                    class_names=VOC_NAMES, prefix="st_")
    assert {p.name for p in paths.values()} == {"st_evaluation_report.json", "st_evaluation_report.md",
                                                "st_confusion_matrix.png", "st_per_class_iou.png"}
    written = sorted(n for p in paths.values() for n in (p.name, p.name + ".sha256"))  # each with its checksum
    assert sorted(p.name for p in tmp_path.iterdir()) == written  # no temp files left
    report = json.loads(paths["json"].read_text())
    m = st_result.metrics
    for key in ("miou", "pixel_accuracy", "mean_accuracy", "per_class_iou", "per_class_accuracy"):
        assert report[key] == pytest.approx(m[key]) if not isinstance(m[key], dict) else report[key] == m[key]
    assert 0.0 <= report["miou"] <= 1.0
    assert np.array_equal(np.array(report["confusion_matrix"]), st_result.confusion)
    assert report["class_names"] == VOC_NAMES and report["num_images"] == NUM_IMAGES
    assert report["images_per_second"] > 0 and report["dataset"] == dataset
    assert report["model"]["path"] == "models/st.tflite" and report["model"]["output_kind"] == "logits"
    markdown = paths["md"].read_text()
    assert f"mIoU: {100 * m['miou']:.2f} %" in markdown
    assert f"| person | {100 * m['per_class_iou']['person']:.2f} |" in markdown
    assert "| sheep | n/a |" in markdown  # absent from truth and prediction
    assert markdown.count("\n|") == 2 + len(VOC_NAMES)
    for key, min_size in (("confusion_matrix", (800, 800)), ("per_class_iou", (600, 600))):
        with Image.open(paths[key]) as image:
            image.load()
            assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1], image.size


def test_report_of_a_result_with_no_counted_pixels(tmp_path: Path) -> None:
    from segzoo.evaluation.metrics import metrics_from_confusion

    cm = np.zeros((2, 2), np.int64)
    result = EvaluationResult(cm, metrics_from_confusion(cm, ["a", "b"]), 1, 0.5, 2.0)
    paths = write_evaluation_report(result, tmp_path, model_path="m.keras", dataset={}, class_names=["a", "b"])
    assert json.loads(paths["json"].read_text())["miou"] is None
    assert "mIoU: n/a %" in paths["md"].read_text()
