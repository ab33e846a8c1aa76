"""MediaPipe Pose: host latency per stage and end to end, and float vs int8 accuracy (OKS, AP, PCK, mask IoU).

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_pose.py [--threads N] [--rounds 5] [--mask-images 20] [--calibration 16]
                                          [--num-poses 3] [--no-ptq] [--out DIR]

1. **Latency** (this host, LiteRT, float models): the pipeline on the 4 real COCO images of
   ``../shared/datasets/coco_keypoints_mmpose``, ``--rounds`` passes; median ms of every stage (letterbox,
   detector, decoding + NMS + ROI, crop, landmark model, landmark post-processing, mask warp) and end to end,
   and of a tracked frame of one person (no detector).
2. **Accuracy rows**: mean per-person OKS, COCO AP, PCK@0.2 on those 4 images and person-mask IoU on the first
   ``--mask-images`` COCO train photos with a person (``coco128_semseg``), for
   - ``float``: the two float .tflite files;
   - ``ptq per-tensor`` / ``ptq per-channel``: a *standard* post-training int8 quantization of both models
     (min/max calibration, int8 weights and activations) with Google's ``ai-edge-quantizer``, when it can be
     imported (it is not a segzoo requirement: ``pip install --target DIR ai-edge-quantizer
     litert-lm-builder immutabledict --no-deps`` and ``PYTHONPATH=DIR``). Calibration: the last
     ``--calibration`` person photos of ``coco128_semseg`` (not those of the mask IoU), letterboxed for the
     detector and cropped by the float pipeline for the landmark model. The float files keep fp16 weights
     behind DEQUANTIZE and sparse ones behind DENSIFY, which the quantizer cannot read: those constant ops are
     folded first (their outputs, computed by LiteRT, become float32 constants; outputs unchanged);
   - with ``segzoo.quantization`` able to import a float .tflite (``load_float_model``), segzoo's own per-tensor
     conversion of both models (the importer and per-tensor methods of the other branches).
   The STM32MP257 estimate (``estimate_stm32mp2``) of each int8 model is printed beside it.
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


# ------------------------------------------------------------------------------------------------ standard PTQ

def fold_constant_ops(source: Path, target: Path) -> Path:
    """``source`` with every DEQUANTIZE/DENSIFY of constants replaced by its float32 result, and a
    ``serving_default`` signature (what ai-edge-quantizer reads)."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(source))
    graph = model.subgraphs[0]
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    interpreter = Interpreter(model_path=str(source), experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
    interpreter.invoke()

    def constant(index: int) -> bool:
        data = model.buffers[graph.tensors[index].buffer].data
        return data is not None and len(data) > 0

    kept = []
    for op in graph.operators:
        if codes[op.opcodeIndex] in (fb.BuiltinOperator.DEQUANTIZE, fb.BuiltinOperator.DENSIFY) and all(
                constant(i) for i in op.inputs):
            values = interpreter.get_tensor(op.outputs[0]).astype(np.float32)
            buffer = fb.BufferT()
            buffer.data = np.frombuffer(values.tobytes(), np.uint8)
            model.buffers.append(buffer)
            tensor = graph.tensors[op.outputs[0]]
            tensor.buffer, tensor.type, tensor.sparsity = len(model.buffers) - 1, fb.TensorType.FLOAT32, None
        else:
            kept.append(op)
    graph.operators = kept

    def tensor_map(index: int):
        entry = fb.TensorMapT()
        entry.name, entry.tensorIndex = graph.tensors[index].name, index
        return entry

    signature = fb.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
    signature.inputs = [tensor_map(i) for i in graph.inputs]
    signature.outputs = [tensor_map(i) for i in graph.outputs]
    model.signatureDefs = [signature]
    flatbuffer_utils.write_model(model, str(target))
    return target


def standard_ptq(source: Path, batch: np.ndarray, granularity: str, out_dir: Path) -> Path:
    """ai-edge-quantizer's static int8 (min/max) quantization, weights per tensor or per channel."""
    from ai_edge_quantizer import qtyping, quantizer

    folded = fold_constant_ops(source, out_dir / f"{source.stem}_folded.tflite")
    q = quantizer.Quantizer(str(folded))
    q.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8,
                        getattr(qtyping.QuantGranularity, granularity))
    target = out_dir / f"{source.stem}_ptq_{granularity.lower()}.tflite"
    feeds = [{"input_1": x[None]} for x in batch]
    q.quantize(q.calibrate({"serving_default": feeds})).export_model(str(target), overwrite=True)
    return target


def segzoo_per_tensor(source: Path, batch: np.ndarray, out_dir: Path) -> Path | None:
    """segzoo's own per-tensor conversion of an imported float .tflite, or None while the importer is missing."""
    try:
        from segzoo.quantization.converter import convert
        from segzoo.quantization.quantize import load_float_model, representative

        model = load_float_model(source)
    except Exception as exc:  # the importer has not landed: say so and go on
        print(f"  segzoo per-tensor: not available ({type(exc).__name__}: {str(exc)[:120]})")
        return None
    return convert(model, representative(batch), out_dir / f"{source.stem}_segzoo_int8_pt.tflite",
                   granularity="per_tensor", input_type="float")


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
    parser.add_argument("--no-ptq", action="store_true", help="latency and the float row only")
    parser.add_argument("--out", type=Path, help="keep the quantized models here (default: a temporary folder)")
    args = parser.parse_args()

    preset = MEDIAPIPE_POSE_FULL.with_options(num_poses=args.num_poses)
    detector, landmark = preset.files(MODELS)
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
    rows = {"float": (detector, landmark)}
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out or Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        if not args.no_ptq:
            batches = calibration_inputs(pipeline, calibration)
            det_feeds, lm_feeds = batches["detector"], batches["landmark"]
            print(f"\n## Calibration: {len(det_feeds)} detector inputs, {len(lm_feeds)} landmark crops")
            try:
                for granularity in ("TENSORWISE", "CHANNELWISE"):
                    name = "ptq per-tensor" if granularity == "TENSORWISE" else "ptq per-channel"
                    rows[name] = (standard_ptq(detector, det_feeds, granularity, out_dir),
                                  standard_ptq(landmark, lm_feeds, granularity, out_dir))
            except ImportError as exc:
                print(f"  standard PTQ rows skipped: {exc} (see this file's docstring)")
            pair = segzoo_per_tensor(detector, det_feeds, out_dir), segzoo_per_tensor(landmark, lm_feeds, out_dir)
            if all(pair):
                rows["segzoo per-tensor"] = pair
        print(f"\n## Accuracy: OKS/AP/PCK on {len(images)} COCO val images ({dataset.num_persons} persons), "
              f"mask IoU on {len(mask_samples)} COCO train person photos")
        print(f"  {'models':20s} {'mean OKS':>9s} {'AP':>7s} {'PCK@0.2':>8s} {'mask IoU':>9s}  found persons' OKS")
        for name, (det, lm) in rows.items():
            r = accuracy(preset, det, lm, dataset, mask_samples, args.threads)
            print(f"  {name:20s} {r['oks']:9.4f} {r['ap']:7.4f} {r['pck']:8.4f} {r['mask_iou']:9.4f}  {r['found_oks']}")
            if name != "float":
                for path in (det, lm):
                    print(f"      {path.name}: STM32MP257 {stm32mp2(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
