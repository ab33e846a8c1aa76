"""MediaPipe Pose: host latency per stage and end to end, and float vs int8 accuracy (OKS, AP, PCK, mask IoU).

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_pose.py [--threads N] [--rounds 5] [--mask-images 20] [--calibration 16]
                                          [--num-poses 3] [--float-only] [--segzoo-steps-only] [--out DIR]
                                          [--option-rows ROW ...] [--skip-default-rows]

1. **Latency** (this host, LiteRT, float models): the pipeline on the 4 real COCO images of
   ``../shared/datasets/coco_keypoints_mmpose``, ``--rounds`` passes; median ms of every stage (letterbox,
   detector, decoding + NMS + ROI, crop, landmark model, landmark post-processing, mask warp) and end to end,
   and of a tracked frame of one person (no detector).
2. **Accuracy rows**: mean per-person OKS, COCO AP, PCK@0.2 on those 4 images and person-mask IoU on the first
   ``--mask-images`` COCO train photos with a person (``coco128_semseg``), for
   - ``float``: the two float .tflite files;
   - ``ptq per-tensor`` / ``ptq per-channel``: the standard post-training int8 quantization (TFLite converter,
     min/max calibration) of both models imported as Keras (``segzoo.litert``), without formatting;
   - ``segzoo per-tensor``: segzoo's per-tensor formatting first (BN folding, cross-layer equalization, bias
     absorption), then the same conversion; and each of its int8 models alone in the float pipeline;
   - ``segzoo steps, relu6 skip|headroom``: segzoo's default post-training steps (formatting, constant channels,
     MSE activation ranges, bias correction) with ``relu6_equalization`` skip or headroom; and their landmark
     model alone in the float pipeline;
   - the same steps with the formatting options of ``OPTION_ROWS`` (``residual_equalization``, ``dead_inputs``,
     ``relu6_cap_growth``, ``split_outliers``, with ``headroom`` or ``clip``), both networks int8 and each alone in
     the float pipeline.
   Calibration: the last ``--calibration`` person photos of ``coco128_semseg`` (not those of the mask IoU),
   letterboxed for the detector and cropped by the float pipeline for the landmark model
   (``calibration_inputs``). The STM32MP257 estimate (``estimate_stm32mp2``) of each int8 model follows.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGZOO_SHARED", REPO.parent / "shared"))
MODELS = SHARED / "pretrained" / "mediapipe_pose"
KEYPOINTS = SHARED / "datasets" / "coco_keypoints_mmpose"
COCO = SHARED / "datasets" / "coco128_semseg"

from segzoo.data.loader import read_image  # noqa: E402
from segzoo.runtime.litert import LiteRTRunner  # noqa: E402
from segzoo.tasks.pose_estimation.evaluation import (evaluate_keypoints, evaluate_person_masks,  # noqa: E402
                                                     load_coco_keypoints, person_mask_samples)
from segzoo.tasks.pose_estimation.calibration import calibration_inputs  # noqa: E402
from segzoo.tasks.pose_estimation.pipeline import PosePipeline, PoseTracker  # noqa: E402
from segzoo.tasks.pose_estimation.preset import MEDIAPIPE_POSE_FULL, PosePreset  # noqa: E402


# --------------------------------------------------------------------------------------------------------- latency

def latency(pipeline: PosePipeline, images: list[np.ndarray], rounds: int) -> dict[str, float]:
    """Median ms of each stage and end to end over ``rounds`` passes on ``images`` (after one warm-up pass)."""
    for image in images:
        pipeline.estimate(image)
    stages: dict[str, list[float]] = {}
    totals = []
    for _ in range(rounds):
        for image in images:
            start = time.perf_counter()
            result = pipeline.estimate(image)
            totals.append((time.perf_counter() - start) * 1e3)
            for stage, ms in result.timings.items():
                stages.setdefault(stage, []).append(ms)
    out = {stage: float(np.median(v)) for stage, v in stages.items()}
    out["end_to_end"] = float(np.median(totals))
    # one tracked person: the detector runs only while fewer than num_poses people are tracked
    detector, landmark = pipeline.detection.steps[1].runner, pipeline.landmarking.steps[1].runner.runner
    tracker = PoseTracker(PosePipeline(pipeline.preset.with_options(num_poses=1), detector, landmark))
    tracked = []
    for _ in range(rounds):
        for image in images:
            tracker.reset()
            tracker(image)
            start = time.perf_counter()
            tracker(image)
            tracked.append((time.perf_counter() - start) * 1e3)
    out["tracked_frame"] = float(np.median(tracked))
    return out


# ------------------------------------------------------------------------------------------------- quantization

def quantize_pair(models: dict, batches: dict[str, np.ndarray], granularity: str, formatted: bool,
                  out_dir: Path) -> dict[str, Path]:
    """Both imported float models converted to int8 (float I/O) by segzoo's converter; ``formatted`` first
    applies segzoo's per-tensor formatting (``optimize_for_per_tensor``: BN folding, CLE, bias absorption)."""
    from segzoo.quantization.converter import convert
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from segzoo.quantization.quantize import representative

    out = {}
    for role, model in models.items():
        if formatted:
            model, _ = optimize_for_per_tensor(model, batches[role])
        name = f"{role}_int8_{granularity}{'_formatted' if formatted else ''}.tflite"
        out[role] = convert(model, representative(batches[role]), out_dir / name, granularity=granularity,
                            input_type="float")
    return out


OPTION_ROWS: dict[str, dict] = {
    "headroom + residual": {"relu6": "headroom", "residual": True},
    "headroom + res + dead in": {"relu6": "headroom", "residual": True, "dead_inputs": True},
    "clip + residual": {"relu6": "clip", "residual": True},
    "clip x8 + residual": {"relu6": "clip", "residual": True, "cap_growth": 8.0},
    "clip x8 + res + split": {"relu6": "clip", "residual": True, "cap_growth": 8.0, "split_outliers": True},
}
"""Rows of segzoo's steps with the formatting options ``quantization.residual_equalization`` (``residual``),
``quantization.dead_inputs`` (``dead_inputs``), ``quantization.relu6_cap_growth`` (``cap_growth``) and
``quantization.split_outliers`` (``split_outliers``, the example config's four keys), by ``relu6_equalization``
mode."""


def quantize_defaults(models: dict, batches: dict[str, np.ndarray], out_dir: Path, relu6: str,
                      **options: bool | float) -> dict[str, Path]:
    """Both models through segzoo's default per-tensor steps (formatting with ``relu6_equalization: relu6`` and
    ``options``, constant channels, MSE activation ranges, bias correction), float I/O."""
    from segzoo.quantization import bias_correction, converter, ranges
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from segzoo.quantization.quantize import LAYER_ERROR_IMAGES, representative

    out = {}
    tag = "_".join([relu6, *sorted(f"{k}{v if v is not True else ''}" for k, v in options.items() if v)])
    for role, model in models.items():
        start = time.perf_counter()
        model, report = optimize_for_per_tensor(model, batches[role][:LAYER_ERROR_IMAGES], relu6=relu6, **options)
        calibrated = converter.calibrate(model, representative(batches[role]))
        calibrated, _ = ranges.select_ranges(calibrated, batches[role], "mse")
        calibrated, _ = bias_correction.correct_biases(calibrated, batches[role])
        out[role] = out_dir / f"{role}_int8_per_tensor_{tag}.tflite"
        converter.convert_calibrated(calibrated, out[role], input_type="float", output_type="float")
        dead = report.get("dead_channels") or {}
        print(f"  {tag} {role}: {report['cle_pairs']} CLE pairs, {report['residual_streams']} residual streams, "
              f"{report['channel_relus']} ReLU6 -> per-channel caps, {dead.get('dead_inputs', 0)} dead inputs, "
              f"{sum(report['outlier_splits'].values())} channels added by outlier splitting; "
              f"{time.perf_counter() - start:.0f} s")
    return out


# ----------------------------------------------------------------------------------------------------- accuracy

def accuracy(preset: PosePreset, detector: Path, landmark: Path, dataset, mask_samples, threads: int) -> dict:
    """OKS, AP, PCK and mask IoU of the pipeline with these two model files."""
    pipeline = PosePipeline(preset, LiteRTRunner(detector, threads), LiteRTRunner(landmark, threads))
    keypoints, _ = evaluate_keypoints(pipeline.estimate, dataset)
    masks = evaluate_person_masks(pipeline.estimate, mask_samples)
    found = [round(m["oks"], 3) for m in keypoints["per_person"] if m["found"]]
    return {"oks": keypoints["mean_oks"], "ap": keypoints["coco"]["AP"], "pck": keypoints["pck"],
            "mask_iou": masks["iou"], "found_oks": found}


def stm32mp2(path: Path) -> str:
    """The STM32MP257 estimate of a model in one line."""
    from segzoo.benchmarking.estimate import estimate_stm32mp2

    try:
        est = estimate_stm32mp2(path)
    except Exception as exc:  # an op the rules do not know: report it, do not stop the benchmark
        return f"estimate failed: {type(exc).__name__}: {exc}"
    return (f"{est['latency_ms']:.1f} ms, NPU {est['npu_pct']:.1f} % / GPU {est['gpu_pct']:.1f} % / "
            f"CPU {est['cpu_pct']:.1f} % of the time")


def main() -> int:
    """Print the latency table and the accuracy rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mask-images", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--num-poses", type=int, default=3)
    parser.add_argument("--float-only", action="store_true", help="latency and the float row only")
    parser.add_argument("--segzoo-steps-only", action="store_true",
                        help="only the rows of segzoo's steps (relu6 skip and headroom, and the option rows)")
    parser.add_argument("--option-rows", nargs="*", choices=list(OPTION_ROWS), default=list(OPTION_ROWS),
                        metavar="ROW", help=f"which option rows to run (default all: {', '.join(OPTION_ROWS)})")
    parser.add_argument("--skip-default-rows", action="store_true",
                        help="with --segzoo-steps-only: leave out the relu6 skip/headroom rows")
    parser.add_argument("--out", type=Path, help="keep the quantized models here (default: a temporary folder)")
    args = parser.parse_args()

    preset = MEDIAPIPE_POSE_FULL.with_options(num_poses=args.num_poses)
    detector, landmark = preset.paths(MODELS)
    pipeline = PosePipeline(preset, LiteRTRunner(detector, args.threads), LiteRTRunner(landmark, args.threads))
    dataset = load_coco_keypoints(KEYPOINTS / "person_keypoints.json", KEYPOINTS / "images")
    images = [read_image(im.path) for im in dataset.images]

    print(f"## Host latency (LiteRT, {args.threads} threads, float models, median of {args.rounds} x "
          f"{len(images)} images, up to {preset.num_poses} poses)")
    for stage, ms in latency(pipeline, images, args.rounds).items():
        print(f"  {stage:40s} {ms:8.2f} ms")

    person_photos = person_mask_samples(COCO / "images" / "train2017",
                                        COCO / "semantic_segmentation" / "masks" / "train2017")
    mask_samples = person_photos[: args.mask_images]
    calibration = [s.image for s in person_photos[-args.calibration:]]
    if set(calibration) & {s.image for s in mask_samples}:
        print("  warning: calibration and mask-IoU images overlap; use fewer --mask-images or --calibration")
    rows = {"float": {"detector": detector, "landmark": landmark}}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not args.float_only:
            from segzoo.quantization.quantize import load_float_model

            batches = calibration_inputs(pipeline, calibration)
            print(f"\n## Calibration: {len(batches['detector'])} detector inputs, {len(batches['landmark'])} "
                  "landmark crops (COCO train person photos)")
            models = {"detector": load_float_model(detector), "landmark": load_float_model(landmark)}
            if not args.segzoo_steps_only:
                rows["ptq per-tensor"] = quantize_pair(models, batches, "per_tensor", False, out_dir)
                rows["ptq per-channel"] = quantize_pair(models, batches, "per_channel", False, out_dir)
                formatted = quantize_pair(models, batches, "per_tensor", True, out_dir)
                rows["segzoo per-tensor"] = formatted
                rows["  int8 detector only"] = {"detector": formatted["detector"], "landmark": landmark}
                rows["  int8 landmark only"] = {"detector": detector, "landmark": formatted["landmark"]}
            for relu6 in () if args.skip_default_rows else ("skip", "headroom"):
                pair = quantize_defaults(models, batches, out_dir, relu6)
                rows[f"segzoo steps, relu6 {relu6}"] = pair
                rows[f"  {relu6}: int8 landmark only"] = {"detector": detector, "landmark": pair["landmark"]}
            for name in args.option_rows:
                options = OPTION_ROWS[name]
                pair = quantize_defaults(models, batches, out_dir, **options)
                rows[name] = pair
                rows[f"  {name}: landmark only"] = {"detector": detector, "landmark": pair["landmark"]}
                rows[f"  {name}: detector only"] = {"detector": pair["detector"], "landmark": landmark}
        print(f"\n## Accuracy: OKS/AP/PCK on {len(images)} COCO val images ({dataset.num_persons} persons), "
              f"mask IoU on {len(mask_samples)} COCO train person photos")
        print(f"  {'models':22s} {'mean OKS':>9s} {'AP':>7s} {'PCK@0.2':>8s} {'mask IoU':>9s}  found persons' OKS")
        for name, pair in rows.items():
            r = accuracy(preset, pair["detector"], pair["landmark"], dataset, mask_samples, args.threads)
            print(f"  {name:22s} {r['oks']:9.4f} {r['ap']:7.4f} {r['pck']:8.4f} {r['mask_iou']:9.4f}  {r['found_oks']}")
        print("\n## STM32MP257 estimate of the int8 models")
        for name in ("ptq per-tensor", "ptq per-channel", "segzoo per-tensor", "segzoo steps, relu6 headroom",
                     *args.option_rows):
            for role, path in rows.get(name, {}).items():
                print(f"  {name:18s} {role:9s} {stm32mp2(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
