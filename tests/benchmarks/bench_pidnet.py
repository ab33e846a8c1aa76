"""PIDNet figures: parameters, MACs, and the STM32MP257 placement of the int8 per-tensor PIDNet-S.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_pidnet.py size                       # params + MACs of S/M/L
    python tests/benchmarks/bench_pidnet.py placement [--sizes 512x1024 384x512] [--images 4]

``size``: for each variant, 19 classes, the inference parameter count as PyTorch counts it (trainable weights of
the training graph without the two training heads; BatchNorm statistics excluded) and the MACs
(:func:`segzoo.models.analysis.summarize`: convolutions only, bias and BatchNorm not counted) at 1024x2048 and
512x512, of the training graph without heads (the official network; BatchNorm counts 0) and of the exported
graph (BatchNorm folded: the standalone BatchNorms become 1x1 depthwise convs, which count ``C x H x W`` MACs, and
Pag's channel sum is a 1x1 conv).

``placement``: PIDNet-S (11 classes, random weights; placement does not depend on them) exported, converted to
float32 and to int8 per-tensor (uint8 input, float output, calibrated on real CamVid training images), then
:func:`segzoo.benchmarking.estimate.estimate_stm32mp2` on the int8 file: estimated latency, time shares per unit,
and every op that leaves the NPU with the reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CAMVID_TRAIN = REPO.parent / "shared" / "datasets" / "camvid" / "CamVid" / "train"


def _trainable(model, skip: tuple[str, ...] = ()) -> int:
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights if not w.path.startswith(skip))


def size_figures() -> None:
    """Print parameters and MACs of S/M/L."""
    from segzoo.models.analysis import summarize
    from segzoo.models.pidnet import PidnetParams
    from segzoo.models.pidnet.export import export
    from segzoo.models.pidnet.model import build, build_graph

    for variant in ("s", "m", "l"):
        row = [f"PIDNet-{variant.upper()}"]
        for height, width in ((1024, 2048), (512, 512)):
            params = PidnetParams(variant=variant, input_shape=[height, width, 3])
            plain = build_graph(params, 19, fold=False, heads=False)
            exported = export(build(params, 19), params)
            if height == 1024:
                row.append(f"params {_trainable(plain):,}")
            row.append(f"{height}x{width}: {summarize(plain)['macs'] / 1e9:.2f} GMACs "
                       f"(exported {summarize(exported)['macs'] / 1e9:.2f})")
        print(" | ".join(row), flush=True)


def _images(count: int, height: int, width: int) -> list[np.ndarray]:
    import cv2

    files = sorted(CAMVID_TRAIN.glob("*.png"))[:count]
    if not files:
        sys.exit(f"no CamVid images in {CAMVID_TRAIN}")
    return [cv2.resize(cv2.imread(str(f))[:, :, ::-1], (width, height)).astype(np.float32) / 127.5 - 1
            for f in files]


def placement(sizes: list[tuple[int, int]], images: int) -> None:
    """Convert PIDNet-S at each size and print the STM32MP257 estimate."""
    from segzoo.benchmarking.estimate import estimate_stm32mp2
    from segzoo.models.pidnet import PidnetParams
    from segzoo.models.pidnet.export import export
    from segzoo.models.pidnet.model import build
    from segzoo.quantization.converter import convert

    with tempfile.TemporaryDirectory() as tmp:
        for height, width in sizes:
            params = PidnetParams(variant="s", input_shape=[height, width, 3])
            model = export(build(params, 11), params)
            data = _images(images, height, width)

            def representative():
                for image in data:
                    yield image[None]

            convert(model, None, Path(tmp) / "float.tflite", quantize=False, input_type="float")
            path = convert(model, representative, Path(tmp) / f"pidnet_s_{height}x{width}_int8.tflite")
            est = estimate_stm32mp2(path)
            print(f"PIDNet-S {height}x{width} int8 per-tensor: {est['latency_ms']:.1f} ms estimated "
                  f"({est['macs'] / 1e9:.2f} GMACs); time NPU {est['npu_pct']:.2f}% GPU {est['gpu_pct']:.2f}% "
                  f"CPU {est['cpu_pct']:.2f}%; transfers {est['transfer_ms']:.2f} ms, {est['switches']} switches")
            print(f"  ops by unit: {est['op_types_by_unit']}")
            off = Counter((op["name"], op["unit"], op["reason"]) for op in est["ops"] if op["unit"] != "NPU")
            off_ms = sum(op["time_ms"] for op in est["ops"] if op["unit"] != "NPU")
            print(f"  off the NPU ({off_ms:.2f} ms of op time):")
            for (name, unit, reason), count in sorted(off.items()):
                tensors = [op["tensor"] for op in est["ops"] if op["name"] == name and op["unit"] == unit]
                print(f"    {count} x {name} on {unit}: {reason}; {', '.join(t[:60] for t in tensors)}")


def _size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("size", "placement"))
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(512, 1024), (384, 512)])
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    if args.what == "size":
        size_figures()
    else:
        placement(args.sizes, args.images)


if __name__ == "__main__":
    main()
