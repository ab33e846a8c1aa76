"""PP-MobileSeg on the STM32MP257: parameters, MACs, and the placement estimate of each NPU-friendly variant.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_pp_mobileseg.py [--size 512 512] [--variants tiny base] [--images 16]
                                                  [--forms original relu same npu] [--classes 150]

For every variant and form, the Keras model (random weights: placement and the estimate do not depend on them) is
converted at batch 1 to float32 and to int8 per-tensor TFLite (uint8 input, float output; calibration on real CamVid
images resized to the input) and analysed with ``estimate_stm32mp2``. Forms: ``original`` (PaddleSeg's network),
``relu`` (``activation: relu``), ``same`` (``padding: same``), ``npu`` (both). Printed per model:

- trainable parameters (BatchNorm statistics excluded), Keras MACs (convolutions) and TFLite MACs (with the
  attention's BATCH_MATMULs), estimated latency, time shares per unit (ST's %NPU convention: shares of the time
  spent on the units, transfers excluded) and the NPU share with transfers counted, transfers, unit switches;
- every op type with its unit, count and estimated time (ops + transfers), i.e. the placement table;
- the time per part of the network (MobileNetV3 stacks, SEA attention, attention MLPs, AAM, head, I/O) per unit.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_quantization import load_images  # noqa: E402

FORMS = {"original": {}, "relu": {"activation": "relu"}, "same": {"padding": "same"},
         "npu": {"activation": "relu", "padding": "same"}}
PARTS = (("SEA attention", r"\.attn\."), ("attention MLP", r"\.mlp\."), ("MobileNetV3 stacks", r"backbone\.smb"),
         ("AAM", r"inj_module"), ("head", r"decode_head"))


def part_of(tensor: str) -> str:
    """The part of the network an op belongs to, from the first name of its (possibly fused) output tensor."""
    name = tensor.split(";")[0]
    for part, pattern in PARTS:
        if re.search(pattern, name):
            return part
    return "input/output"


def build(variant: str, size: tuple[int, int], classes: int, options: dict):
    import keras

    from segzoo.models.pp_mobileseg.model import build as build_model
    from segzoo.models.pp_mobileseg.params import PPMobileSegParams

    keras.utils.set_random_seed(0)
    return build_model(PPMobileSegParams(variant=variant, input_shape=[*size, 3], **options), classes)


def study(variant: str, form: str, args: argparse.Namespace, pixels: np.ndarray, out: Path) -> dict:
    from segzoo.benchmarking.estimate import estimate_stm32mp2
    from segzoo.models.analysis import count_macs
    from segzoo.quantization.converter import convert

    model = build(variant, tuple(args.size), args.classes, FORMS[form])
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    keras_macs, _ = count_macs(model)
    tag = f"pp_mobileseg_{variant}_{form}_{args.size[0]}x{args.size[1]}"
    convert(model, None, out / f"{tag}_float.tflite", quantize=False, input_type="float")
    calibration = [(image[None].astype(np.float32) / 127.5 - 1.0) for image in pixels]
    path = convert(model, lambda: iter(calibration), out / f"{tag}_int8_pt.tflite", granularity="per_tensor")
    est = estimate_stm32mp2(path)
    ops = collections.defaultdict(lambda: {"count": 0, "ms": 0.0})
    parts = collections.defaultdict(lambda: collections.Counter())
    for op in est["ops"]:
        row = ops[(op["name"], op["unit"], op["reason"])]
        row["count"] += 1
        row["ms"] += op["time_ms"] + op["transfer_ms"]
        parts[part_of(op["tensor"])][op["unit"]] += op["time_ms"]
        parts[part_of(op["tensor"])]["transfers"] += op["transfer_ms"]
    npu_with_transfers = 100 * est["unit_ms"]["NPU"] / est["latency_ms"]
    print(f"\n== {variant} {form} {args.size[0]}x{args.size[1]}, {args.classes} classes: params {trainable:,} "
          f"(trainable), Keras MACs {keras_macs / 1e9:.3f} G, TFLite MACs {est['macs'] / 1e9:.3f} G")
    print(f"   estimate {est['latency_ms']:.1f} ms: NPU {est['npu_pct']:.1f}% GPU {est['gpu_pct']:.1f}% "
          f"CPU {est['cpu_pct']:.1f}% of unit time; NPU {npu_with_transfers:.1f}% of the total with transfers "
          f"({est['transfer_ms']:.2f} ms, {est['switches']} switches)")
    print("   placement (op, unit, count, ms incl. transfers, reason):")
    for (name, unit, reason), row in sorted(ops.items(), key=lambda kv: (kv[0][1], -kv[1]["ms"])):
        print(f"     {name:18s} {unit}  {row['count']:3d}  {row['ms']:8.2f}  {reason}")
    print("   time per part (ms): " + "; ".join(
        f"{part} " + ", ".join(f"{unit} {ms:.2f}" for unit, ms in sorted(units.items()) if ms > 0.005)
        for part, units in parts.items()))
    return {"variant": variant, "form": form, "size": args.size, "classes": args.classes, "params": trainable,
            "keras_macs": keras_macs, "tflite_macs": est["macs"], "latency_ms": est["latency_ms"],
            "npu_pct": est["npu_pct"], "gpu_pct": est["gpu_pct"], "cpu_pct": est["cpu_pct"],
            "npu_pct_with_transfers": npu_with_transfers, "transfer_ms": est["transfer_ms"],
            "switches": est["switches"], "op_types_by_unit": est["op_types_by_unit"],
            "parts": {k: dict(v) for k, v in parts.items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--variants", nargs="+", default=["tiny", "base"])
    parser.add_argument("--forms", nargs="+", default=list(FORMS), choices=list(FORMS))
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--images", type=int, default=16, help="calibration images")
    parser.add_argument("--out", type=Path, default=None, help="folder for the .tflite files and results.json")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="segzoo_bench_pp_mobileseg_"))
    out.mkdir(parents=True, exist_ok=True)
    pixels, source = load_images(args.images, args.size[0])
    if args.size[0] != args.size[1]:
        import cv2

        pixels = np.stack([cv2.resize(p, (args.size[1], args.size[0]), interpolation=cv2.INTER_AREA) for p in pixels])
    print(f"calibration: {len(pixels)} images ({source}); models in {out}")
    results = [study(v, f, args, pixels, out) for v in args.variants for f in args.forms]
    print("\n| variant | form | params | MACs (G) | estimate (ms) | NPU % (unit time) | NPU % (with transfers) | "
          "transfers (ms) | switches |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['variant']} | {r['form']} | {r['params'] / 1e6:.3f} M | {r['tflite_macs'] / 1e9:.3f} | "
              f"{r['latency_ms']:.1f} | {r['npu_pct']:.1f} | {r['npu_pct_with_transfers']:.1f} | "
              f"{r['transfer_ms']:.2f} | {r['switches']} |")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
