"""Evaluation throughput: segzoo ``evaluate()`` against a bare sequential loop over the same int8 model and images.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_evaluation.py [--images 40] [--rounds 5] [--threads N]

The model is a DeepLabV3 (MobileNetV2 alpha 0.5, ASPP v1) 512x512 from ``segzoo.models.registry`` with random
weights, converted to full int8 (int8 input and output) with a representative dataset of real COCO images and
cached in the temp directory. Throughput does not depend on the weights. The images are real COCO images with
COCO -> VOC masks. The bare loop is: read image (cv2) + resize + rescale + quantize + invoke + argmax at the model
resolution + nearest resize back + confusion update, sequential. The pipeline also maps the logits back
bilinearly before the argmax (more work: about 10-15 ms of CPU per image here), but decodes the next images
and scores the previous outputs in worker threads while the model runs. A third column runs evaluate() with
``resolution="input"`` (argmax at the model resolution, like the bare loop) to separate the cost of the
pipeline machinery from the cost of the bilinear restore.

The headline ratio compares evaluate() with a bare loop that computes the same metric (logits restored
bilinearly onto each mask, as evaluate() does); the nearest-neighbour shortcut loop is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402
from PIL import Image  # noqa: E402

from segzoo.data.layouts import Sample, list_samples  # noqa: E402
from segzoo.data.masks import ClassMapper  # noqa: E402
from segzoo.evaluation.evaluate import evaluate  # noqa: E402
from segzoo.evaluation.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402
from segzoo.preprocess import Preprocessing  # noqa: E402
from segzoo.runners import load_runner  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGZOO_SHARED", REPO.parent / "shared"))
COCO = SHARED / "datasets" / "coco128_semseg"
sys.path.insert(0, str(REPO / "tests"))
from conftest import COCO_TO_VOC  # noqa: E402

INPUT = (512, 512)
NUM_CLASSES = 21
PP = Preprocessing(scale=1 / 127.5, offset=-1.0)
CACHE = Path(tempfile.gettempdir()) / "segzoo_bench"


def coco_samples(n: int) -> list[Sample]:
    """The first ``n`` COCO train2017 image+mask pairs."""
    return list_samples(COCO / "images" / "train2017", COCO / "semantic_segmentation" / "masks" / "train2017")[:n]


def build_int8_model(samples: list[Sample], calibration: int = 8) -> Path:
    """DeepLabV3 512 int8 (cached): registry model when available, else a small conv net."""
    path = CACHE / "deeplab_v3_a05_asppv1_512_int8.tflite"
    if path.exists():
        return path
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    try:
        from segzoo.models.registry import build_model

        model = build_model("deeplab_v3", input_shape=(*INPUT, 3), num_classes=NUM_CLASSES, alpha=0.5, aspp="v1")
    except ImportError:
        inputs = keras.Input((*INPUT, 3))
        x = inputs
        for filters in (16, 32, 64, 96):
            x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(NUM_CLASSES, 1)(x)
        model = keras.Model(inputs, keras.layers.UpSampling2D(16, interpolation="bilinear")(x))

    def representative():
        for sample in samples[:calibration]:
            image = np.asarray(Image.open(sample.image_path).convert("RGB"))
            resized = cv2.resize(image, INPUT[::-1], interpolation=cv2.INTER_LINEAR)
            yield [(resized.astype(np.float32) * np.float32(PP.scale) + np.float32(PP.offset))[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(converter.convert())
    tmp.replace(path)
    return path


def bare_loop(model: Path, samples: list[Sample], lut: np.ndarray, threads: int,
              restore: str = "bilinear") -> tuple[float, np.ndarray]:
    """Seconds and confusion matrix of the plain sequential loop.

    ``restore="bilinear"`` computes the same metric as evaluate(): logits dequantized, resized bilinearly to the
    mask, then arg-maxed. ``"nearest"`` is the cheaper, less exact shortcut: argmax at the model resolution,
    labels resized with nearest neighbour.
    """
    interpreter = Interpreter(model_path=str(model), num_threads=threads)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = inp["quantization"]
    out_scale, out_zero_point = out["quantization"]
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    start = time.perf_counter()
    for sample in samples:
        image = cv2.cvtColor(cv2.imread(str(sample.image_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        mask = lut[np.asarray(Image.open(sample.mask_path))]
        x = cv2.resize(image, INPUT[::-1], interpolation=cv2.INTER_LINEAR).astype(np.float32) * PP.scale + PP.offset
        q = np.clip(np.rint(x / scale + zero_point), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0]
        if restore == "nearest":
            labels = np.argmax(raw, axis=-1).astype(np.uint8)
            pred = cv2.resize(labels, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_NEAREST)
        else:
            logits = (raw.astype(np.float32) - out_zero_point) * out_scale
            pred = np.argmax(cv2.resize(logits, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR), -1)
        cm += confusion_matrix(mask, pred, NUM_CLASSES)
    return time.perf_counter() - start, cm


def pipeline(model: Path, samples: list[Sample], mapper: ClassMapper, threads: int,
             resolution: str = "original") -> tuple[float, np.ndarray]:
    """Seconds and confusion matrix of segzoo evaluate() (runner loading excluded, like the bare loop's)."""
    runner = load_runner(model, num_threads=threads)
    names = [f"class_{i}" for i in range(NUM_CLASSES)]
    start = time.perf_counter()
    result = evaluate(runner, samples, mapper, PP, names, resolution=resolution, desc=f"evaluate ({resolution})")
    return time.perf_counter() - start, result.confusion


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    samples = coco_samples(args.images)
    mapper = ClassMapper(num_classes=NUM_CLASSES, mapping=COCO_TO_VOC, default=0)
    lut = np.array([COCO_TO_VOC.get(v, 0) for v in range(256)], dtype=np.uint8)
    lut[255] = 255
    model = build_int8_model(samples)
    print(f"model {model} ({model.stat().st_size / 1e6:.1f} MB), {len(samples)} COCO images, "
          f"{args.threads} interpreter threads, {os.cpu_count()} CPUs")
    pipeline(model, samples[:2], mapper, args.threads)  # warm-up: file cache, XNNPACK packing
    runs = {
        "bare": lambda: bare_loop(model, samples, lut, args.threads),
        "bare_nearest": lambda: bare_loop(model, samples, lut, args.threads, restore="nearest"),
        "original": lambda: pipeline(model, samples, mapper, args.threads),
        "input": lambda: pipeline(model, samples, mapper, args.threads, resolution="input"),
    }
    load_before = os.getloadavg()[0]
    rows = []
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        results = {name: runs[name]() for name in order}
        times = {name: seconds for name, (seconds, _) in results.items()}
        rows.append(times)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
              + f", ratio {times['original'] / times['bare']:.3f}", flush=True)
    n = len(samples)
    print(f"\n{n} images per run; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          "(other processes on the machine inflate and scatter the times)\n")
    print("| round | bare loop, same metric s (img/s) | evaluate() s (img/s) | ratio evaluate/bare "
          "| bare loop, nearest shortcut s | ratio evaluate/bare-nearest "
          "| evaluate(resolution='input') s | ratio input/bare-nearest |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, t in enumerate(rows, 1):
        print(f"| {i} | {t['bare']:.2f} ({n / t['bare']:.1f}) | {t['original']:.2f} ({n / t['original']:.1f}) "
              f"| {t['original'] / t['bare']:.3f} | {t['bare_nearest']:.2f} "
              f"| {t['original'] / t['bare_nearest']:.3f} | {t['input']:.2f} "
              f"| {t['input'] / t['bare_nearest']:.3f} |")
    median = statistics.median(t["original"] / t["bare"] for t in rows)
    median_nearest = statistics.median(t["original"] / t["bare_nearest"] for t in rows)
    median_input = statistics.median(t["input"] / t["bare_nearest"] for t in rows)
    print(f"\nMEDIAN ratio evaluate/bare (same metric): {median:.3f} (target <= 1.10, ideally < 1.0)")
    print(f"MEDIAN ratio evaluate/bare-nearest (bare loop doing less work): {median_nearest:.3f}; "
          f"evaluate(resolution='input')/bare-nearest (same work): {median_input:.3f}")
    names = [str(i) for i in range(NUM_CLASSES)]
    accuracy = {name: metrics_from_confusion(cm, names)["pixel_accuracy"] for name, (_, cm) in results.items()}
    print("pixel accuracy (random-weight model, a sanity check only): "
          + ", ".join(f"{name} {value:.4f}" for name, value in accuracy.items()))

if __name__ == "__main__":
    main()
