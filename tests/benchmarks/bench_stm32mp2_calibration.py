"""Calibration of the STM32MP2 estimate (``src/segzoo/benchmarking/stm32mp2.json``) and its checks.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_stm32mp2_calibration.py

1. Converts segzoo's rebuild of ST's per-channel DeepLabV3 (512x512, alpha 0.5, ASPP v1, 21 classes, uint8 input,
   float output; random weights: MACs and tensor sizes do not depend on them) and analyses ST's real 257
   per-tensor file from ../shared.
2. Solves the four NPU/GPU rates with ``estimate.calibrate`` and prints them next to the values stored in the data
   file (copy them there when they differ).
3. Checks not calibrated on: MobileNetV2 1.0 224x224 int8 per-tensor (Keras application, ST wiki: 72 FPS, i.e.
   13.9 ms), the ST 257 model against the wiki's 17 FPS (58.8 ms, a second measurement of the same model), the
   direction of the 900 MHz clock, and the published shares of both references.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGZOO_SHARED", REPO.parent / "shared"))
ST_257 = SHARED / "pretrained" / "st_deeplabv3_257_int8_per_tensor" / "deeplabv3_257_int8_per_tensor.tflite"


def representative(size: int, count: int = 2):
    rng = np.random.default_rng(0)

    def generate():
        for _ in range(count):
            yield rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)

    return generate


def convert_rebuild(out: Path) -> Path:
    import keras

    from segzoo.models.registry import build_model
    from segzoo.quantization.converter import convert

    keras.utils.set_random_seed(0)
    model = build_model("deeplab_v3", input_shape=(512, 512, 3), num_classes=21, alpha=0.5, aspp="v1")
    return convert(model, representative(512), out, granularity="per_channel")


def convert_mobilenet(out: Path) -> Path:
    import keras

    from segzoo.quantization.converter import convert

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, weights=None)
    return convert(model, representative(224), out, granularity="per_tensor")


def main() -> int:
    from segzoo.benchmarking.analysis import analyze_tflite
    from segzoo.benchmarking.estimate import calibrate, estimate_analysis, load_rules, with_calibration

    if not ST_257.is_file():
        print(f"needs {ST_257}")
        return 1
    rules = load_rules()
    with tempfile.TemporaryDirectory() as tmp:
        per_channel = analyze_tflite(convert_rebuild(Path(tmp) / "deeplab512_per_channel.tflite"))
        mobilenet = analyze_tflite(convert_mobilenet(Path(tmp) / "mobilenetv2_224_per_tensor.tflite"))
    per_tensor = analyze_tflite(ST_257)
    rates = calibrate(per_tensor, per_channel, rules)
    stored = rules["latency_model"]
    print("calibrated rates (stored in stm32mp2.json):")
    for key, value in rates.items():
        unit, name = key.split("_", 1)
        print(f"  {key:34s} {value:.6g}   (stored {stored[unit].get(name)})")
    calibrated = with_calibration(rules, rates)
    rows = [("ST 257 per-tensor (calibration)", per_tensor, 52.75, "99.2/0.8/0"),
            ("512 per-channel rebuild (calibration)", per_channel, 806.12, "8.73/91.27/0"),
            ("ST 257 per-tensor vs wiki 17 FPS (check)", per_tensor, 1000 / 17, "-"),
            ("MobileNetV2 1.0 224 per-tensor (check)", mobilenet, 1000 / 72, "-")]
    print(f"\n{'model':44s} {'est. ms':>8s} {'ST ms':>8s} {'error':>7s}  {'est. NPU/GPU/CPU % (time)':26s} ST %")
    for label, analysis, measured, shares in rows:
        est = estimate_analysis(analysis, calibrated, 800)
        error = 100 * (est["latency_ms"] / measured - 1)
        pct = f"{est['npu_pct']:.2f}/{est['gpu_pct']:.2f}/{est['cpu_pct']:.2f}"
        print(f"{label:44s} {est['latency_ms']:8.2f} {measured:8.2f} {error:+6.1f}%  {pct:26s} {shares}")
    fast, base = (estimate_analysis(per_tensor, calibrated, mhz)["latency_ms"] for mhz in (900, 800))
    print(f"\nST 257 at NPU 900 MHz: {fast:.2f} ms (800 MHz: {base:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
