"""Quantization time: per-tensor int8 conversion of the reference 512x512 DeepLabV3 and ``optimize_for_per_tensor``.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_quantization.py [--images 200] [--size 512] [--layer-errors 20]

The model is DeepLabV3 (MobileNetV2 alpha 0.5, ASPP v1) from ``segzoo.models.registry`` with random weights and
randomized BatchNorm statistics (conversion time does not depend on the weights). Calibration images are real
CamVid training images resized to the model input (synthetic smooth images when ../shared is absent),
preprocessed as MobileNetV2 expects (``pixel / 127.5 - 1``). Target: < 3 minutes for 200 images on 2 cores.
Prints the wall time of each step, the images per second of the calibration and the ratio of the steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGZOO_SHARED", REPO.parent / "shared"))
CAMVID_TRAIN = SHARED / "datasets" / "camvid" / "CamVid" / "train"


def load_images(count: int, size: int) -> tuple[np.ndarray, str]:
    """``count`` uint8 images ``[N,size,size,3]`` (CamVid train, else synthetic) and where they came from."""
    files = sorted(CAMVID_TRAIN.glob("*.png"))[:count] if CAMVID_TRAIN.is_dir() else []
    if files:
        images = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (size, size),
                             interpolation=cv2.INTER_AREA) for f in files]
        while len(images) < count:
            images.append(images[len(images) % len(files)][:, ::-1].copy())
        return np.stack(images), f"CamVid train ({len(files)} files)"
    rng = np.random.default_rng(0)
    low = rng.uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)
    images = [cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC) for img in low]
    return np.clip(np.stack(images), 0, 255).astype(np.uint8), "synthetic"


def preprocess(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def representative(images: np.ndarray):
    def generate() -> Iterator[np.ndarray]:
        for image in images:
            yield preprocess(image[None])

    return generate


def build_random(size: int, alpha: float = 0.5, aspp: str = "v1", upsample: bool = True, num_classes: int = 21):
    """A registry DeepLabV3 with seeded random weights and widely spread BatchNorm statistics."""
    import keras

    from segzoo.models.registry import build_model

    keras.utils.set_random_seed(0)
    model = build_model("deeplab_v3", input_shape=(size, size, 3), num_classes=num_classes, alpha=alpha, aspp=aspp,
                        upsample=upsample)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.lognormal(0, 0.5, c), rng.normal(0.2, 0.5, c), rng.normal(0, 0.3, c),
                               rng.lognormal(0, 1.5, c) ** 2])
    return model


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"{label:55s} {seconds:8.1f} s", flush=True)
    return result, seconds


def invoke_median_ms(path: Path, runs: int = 10) -> float:
    """Median CPU (XNNPACK, all cores) latency of one invoke, after one warm-up."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = np.random.default_rng(0).integers(0, 255, detail["shape"]).astype(detail["dtype"])
    times = []
    for _ in range(runs + 1):
        interpreter.set_tensor(detail["index"], x)
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--absorb-images", type=int, default=16, help="calibration images for bias absorption")
    parser.add_argument("--layer-errors", type=int, default=20, help="images for layer_errors (0: skip)")
    args = parser.parse_args()

    from segzoo.quantization.converter import calibrate, convert
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from segzoo.litert.inspect import inspect_tflite
    from segzoo.quantization.mixed import layer_errors

    images, source = load_images(args.images, args.size)
    print(f"DeepLabV3 a0.5 v1 {args.size}x{args.size}, {len(images)} calibration images ({source}), "
          f"{os.cpu_count()} CPUs")
    model, _ = timed("build model", build_random, args.size)
    out = Path(tempfile.mkdtemp(prefix="segzoo_bench_quant_"))
    rep = representative(images)
    (optimized, report), t_opt = timed("optimize_for_per_tensor (no calibration)", optimize_for_per_tensor, model)
    print(f"    {report['bn_folded']} BN folded, {report['cle_groups']} CLE groups, {report['cle_sweeps']} sweeps, "
          f"{report['channel_relus']} ChannelReLU")
    _, t_abs = timed(f"optimize_for_per_tensor (+ bias absorption, {args.absorb_images} images)",
                     optimize_for_per_tensor, model, preprocess(images[:args.absorb_images]))
    path, t_pt = timed(f"convert per-tensor int8 ({len(images)} images)", convert, model, rep, out / "pt.tflite")
    summary = inspect_tflite(path)
    print(f"    {summary['size_bytes'] / 1e6:.2f} MB, int8 share {summary['int8_compute_share']:.0%}, "
          f"per-channel {summary['has_per_channel']}, calibration {len(images) / t_pt:.1f} images/s")
    _, t_opt_pt = timed(f"convert optimized model per-tensor ({len(images)} images)", convert, optimized, rep,
                        out / "opt_pt.tflite")
    plain_ms, opt_ms = invoke_median_ms(path), invoke_median_ms(out / "opt_pt.tflite")
    print(f"    CPU invoke median: plain {plain_ms:.1f} ms, optimized {opt_ms:.1f} ms (x{opt_ms / plain_ms:.2f}: "
          f"{inspect_tflite(out / 'opt_pt.tflite')['op_histogram'].get('MINIMUM', 0)} MINIMUM ops)")
    calibrated, t_cal = timed(f"calibrate only ({len(images)} images)", calibrate, model, rep)
    if args.layer_errors:
        few = representative(images[:args.layer_errors])
        _, t_err = timed(f"layer_errors ({args.layer_errors} images, calibration reused)", layer_errors, model, few,
                         calibrated=calibrated)
    print(f"ratios: optimized/plain conversion {t_opt_pt / t_pt:.2f}, optimize/convert {t_opt / t_pt:.3f}, "
          f"calibrate/convert {t_cal / t_pt:.2f}; target < 180 s per conversion: "
          f"{'met' if max(t_pt, t_opt_pt) < 180 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
