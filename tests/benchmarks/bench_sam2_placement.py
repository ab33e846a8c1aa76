"""SAM2.1 hiera-tiny encoder and decoder as int8 per-tensor TFLite files, and their STM32MP257 placement estimate.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_sam2_placement.py [--size 1024] [--images 4] [--checkpoint sam2.1_hiera_tiny.pt]
                                                    [--out sam2_placement]

Builds both Keras models at ``--size``, fills them from the official checkpoint when given, otherwise from a
synthetic checkpoint in the official key schema (``tests/reference/sam2_schema.py``: weights scaled like trained
ones; the placement does not depend on the values). Calibrates the encoder on ``--images`` real COCO images of
``../shared`` (SAM preprocessing) and the decoder on their encoder features with one-click and two-click prompts
(positive first clicks of the instances, then a negative point), writes ``encoder_int8.tflite`` and
``decoder_int8.tflite`` into ``--out`` and prints, for each file, the estimated latency, the NPU/GPU/CPU time shares
and every op type off the NPU with its count, reason and estimated time. ``placement.json`` keeps all of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from reference.sam2_schema import synthetic_state_dict  # noqa: E402

from segzoo.models.sam2.export import DECODER_FLOAT_SCOPES, export_tflite  # noqa: E402
from segzoo.quantization.quantize import placement_summary  # noqa: E402
from segzoo.models.sam2.params import Sam2Params  # noqa: E402
from segzoo.tasks.promptable_segmentation.clicks import first_click  # noqa: E402
from segzoo.tasks.promptable_segmentation.dataset import instance_samples  # noqa: E402
from segzoo.tasks.promptable_segmentation.preprocess import model_image, points_to_model  # noqa: E402

COCO = TESTS.parent.parent / "shared" / "datasets" / "coco128_semseg"


def build(params: Sam2Params, checkpoint: str | None):
    from segzoo.models.sam2.model import build_decoder, build_encoder
    from segzoo.models.sam2.weights import assign_state_dict, load_checkpoint

    encoder, decoder = build_encoder(params), build_decoder(params)
    if checkpoint:
        load_checkpoint(checkpoint, encoder, decoder, params)
    else:
        assign_state_dict(synthetic_state_dict(seed=0), encoder, decoder, params, source="synthetic checkpoint")
    return encoder, decoder


def calibration(encoder, params: Sam2Params, count: int) -> tuple[list[dict], list[dict]]:
    """Encoder samples (images) and decoder samples (features + prompts) from real COCO instances."""
    samples = instance_samples(COCO / "images" / "train2017", COCO / "instance_segmentation" / "labels" / "train2017")
    enc, dec = [], []
    for sample in samples[:count]:
        image = sample.image()
        tensor, where = model_image(image, params.image_size)
        enc.append({"image": tensor})
        feats = {k: np.asarray(v) for k, v in encoder(tensor).items()}
        masks = sorted(sample.masks(image.shape[:2]), key=lambda m: -int(m.sum()))[:3]
        for i, mask in enumerate(masks):
            click = first_click(mask)
            points = [[click.x, click.y]] + [[0.0, 0.0]] * (params.num_points - 1)
            labels = [1.0] + [-1.0] * (params.num_points - 1)
            if i % 2 and params.num_points > 1:
                ys, xs = np.nonzero(~mask)
                points[1], labels[1] = [float(xs[len(xs) // 2]), float(ys[len(ys) // 2])], 0.0
            coords = points_to_model(np.array(points, np.float32), where)
            dec.append({**feats, "point_coords": coords[None], "point_labels": np.array([labels], np.float32)})
    return enc, dec


def show(name: str, placement: dict) -> None:
    print(f"\n{name}: {placement['ops']} ops, {placement['ops_off_npu']} off the NPU; estimated "
          f"{placement['latency_ms']:.1f} ms; time NPU {placement['npu_pct']:.1f}% / GPU {placement['gpu_pct']:.1f}%"
          f" / CPU {placement['cpu_pct']:.1f}% (primary {placement['primary_unit']})")
    for row in placement["off_npu"]:
        print(f"  {row['op']:<22} x{row['count']:<4} {row['unit']}  {row['time_ms']:9.2f} ms  {row['reason']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--out", type=Path, default=Path("sam2_placement"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    params = Sam2Params(input_shape=[args.size, args.size, 3], num_points=2)
    encoder, decoder = build(params, args.checkpoint)
    enc_samples, dec_samples = calibration(encoder, params, args.images)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, model, samples, scopes in (("decoder", decoder, dec_samples, DECODER_FLOAT_SCOPES),
                                         ("encoder", encoder, enc_samples, ())):
        path = args.out / f"{name}_int8.tflite"
        start = time.perf_counter()
        export_tflite(model, path, quantize=True, representative=lambda s=samples: s, float_scopes=scopes)
        results[name] = {"file": str(path), "size_mb": path.stat().st_size / 1e6,
                         "export_s": time.perf_counter() - start, **placement_summary(path)}
        show(f"{name} ({path.stat().st_size / 1e6:.1f} MB, exported in {results[name]['export_s']:.0f} s)",
             results[name])
    (args.out / "placement.json").write_text(json.dumps({"size": args.size, "images": args.images,
                                                         "checkpoint": args.checkpoint, **results}, indent=2))


if __name__ == "__main__":
    main()
