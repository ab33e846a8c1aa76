"""Per-tensor int8 on real pretrained networks, side by side in one run.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_pretrained_per_tensor.py camvid MODEL.keras [MODEL.keras ...]
    python tests/benchmarks/bench_pretrained_per_tensor.py deeplab257 [--bootstrap 1000] [--quantization K=V ...]
    python tests/benchmarks/bench_pretrained_per_tensor.py deeplab257 --variants defaults adaround=true
    python tests/benchmarks/bench_pretrained_per_tensor.py timing [--quantization K=V ...]

``camvid``: float models fine-tuned on CamVid (``config_file_examples/chain_tqe_camvid_imagenet.yaml``) quantized
per-tensor with each post-training step added in turn (the old defaults first, the new defaults last); per row the
float and int8 mIoU on CamVid val at 480x360, the drop, the STM32MP257 NPU share, the quantization seconds and the
worst layers (RMSE / int8 step). Calibration: 100 training images (the configuration's default).

``deeplab257 [--bootstrap N] [--quantization KEY=VALUE ...] [--keep DIR]``: Google's float DeepLabV3 257, ST's
int8 per-tensor file of the same weights and segzoo's own per-tensor quantization of the float file (the
command-line quantization run with the default settings, or the given ``quantization`` keys), calibrated on the
calibration ids in ``tests/benchmarks/data/coco128_calibration.txt``, on real COCO photos mapped to VOC (the
evaluation ids in ``coco128_evaluation.txt``, never calibrated on) and on the 14 VOC samples. Per model: the mIoU
of the pixels pooled over the set (one confusion matrix, as segzoo evaluates: a class predicted but absent
from the set's ground truth counts with IoU 0), the drop against the float file with a paired bootstrap 95%
interval over images, the mIoU over the ground-truth classes only, the mean of the per-image mIoU and its drop;
the number of images per class; segzoo's run time (wall, process CPU, load), per-step seconds, NPU share and
worst layers. ``--variants`` puts several segzoo rows side by side (``defaults`` or comma-separated keys, e.g.
``adaround=true,adaround_iterations=300``); each segzoo row also shows its pooled mIoU minus ST's file's, with a
paired bootstrap interval.

``timing [--quantization KEY=VALUE ...]``: segzoo's quantization step on Google's float 257 file with the default
steps and 100 COCO calibration images (every photo of ``coco128_semseg``): wall and process CPU seconds of each
step (the report's ``timings``), with the load average (target: 2 minutes in all on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TQDM_DISABLE", "1")  # one progress bar per image otherwise

import numpy as np  # noqa: E402
import yaml  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SEGZOO_SHARED", REPO.parent / "shared"))
DATA = Path(__file__).resolve().parent / "data"
GOOGLE = SHARED / "pretrained" / "google_deeplabv3_257_float" / "deeplabv3_257_mv_gpu.tflite"
ST = SHARED / "pretrained" / "st_deeplabv3_257_int8_per_tensor" / "deeplabv3_257_int8_per_tensor.tflite"
COCO = SHARED / "datasets" / "coco128_semseg"
VOC = SHARED / "datasets" / "voc2012_samples"

CAMVID_ROWS: list[tuple[str, dict]] = [
    ("old defaults (BN fold, CLE, absorption; min/max)", {"dead_channels": "off", "activation_ranges": "minmax",
                                                          "bias_correction": False, "relu6_equalization": "skip"}),
    ("+ constant channels (exact only)", {"dead_channels": "exact", "activation_ranges": "minmax",
                                          "bias_correction": False, "relu6_equalization": "skip"}),
    ("+ constant channels (calibration)", {"activation_ranges": "minmax", "bias_correction": False,
                                           "relu6_equalization": "skip"}),
    ("+ MSE activation ranges", {"bias_correction": False, "relu6_equalization": "skip"}),
    ("+ bias correction (defaults before headroom)", {"relu6_equalization": "skip"}),
    ("+ relu6_equalization: headroom (defaults)", {"relu6_equalization": "headroom"}),
    ("defaults, percentile 99.99 ranges", {"activation_ranges": "percentile"}),
    ("defaults + AdaRound (100 iterations)", {"adaround": True, "adaround_iterations": 100}),
    ("defaults + AdaRound (300 iterations, the option's default)", {"adaround": True}),
]


# ------------------------------------------------------------------------------------------------ CamVid
def camvid_config(model: Path, run_dir: Path, quantization: dict) -> dict:
    cfg = yaml.safe_load((REPO / "config_file_examples" / "chain_tqe_camvid_imagenet.yaml").read_text())
    cfg.pop("hydra", None)
    for split in ("training", "validation"):
        for key in (f"{split}_path", f"{split}_masks_path", f"{split}_files_path"):
            cfg["dataset"][key] = str((REPO / cfg["dataset"][key]).resolve())
    cfg["general"]["weights_dirs"] = [str((REPO / d).resolve()) for d in cfg["general"]["weights_dirs"]]
    cfg["operation_mode"] = "quantization"
    cfg["general"]["model_path"] = str(model)
    cfg["mlflow"] = {"enabled": False}
    cfg["quantization"].update(quantization)
    return cfg


def bench_camvid(models: list[Path], only: list[str] | None = None) -> None:
    from segzoo.cli import run

    for model in models:
        print(f"\n## {model}\n")
        print("| variant | float mIoU | int8 mIoU | drop | NPU % | quantization s | worst layers (RMSE / step) |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for label, quantization in CAMVID_ROWS:
            if only and not any(word in label for word in only):
                continue
            with tempfile.TemporaryDirectory() as tmp:
                run(camvid_config(model, Path(tmp), quantization), run_dir=Path(tmp) / "q")
                report = json.loads((Path(tmp) / "q" / "quantization_report.json").read_text())
            worst = ", ".join(f"{(w['layers'] or [w['tensor']])[-1]} {w['rmse_per_scale']:.2f}"
                              for w in report["worst_layers"][:3])
            print(f"| {label} | {100 * report['float']['miou']:.2f} | {100 * report['quantized']['miou']:.2f} | "
                  f"{report['miou_drop_points']:.2f} | {report['stm32mp2_estimate']['npu_pct']:.1f} | "
                  f"{report['seconds']:.0f} | {worst} |", flush=True)


# ------------------------------------------------------------------------------------------- DeepLab 257
def _ids(name: str) -> list[str]:
    return [line.strip() for line in (DATA / name).read_text().splitlines() if line.strip()]


def _voc_setup():
    from segzoo.data.masks import ClassMapper

    coco = yaml.safe_load((REPO / "config_file_examples" / "evaluation_coco_to_voc.yaml").read_text())["dataset"]
    names = list(coco["class_names"])
    return (names, ClassMapper(len(names), 255, dict(coco["class_mapping"]), 0), ClassMapper(len(names), 255))


def _samples(folder: Path, masks: Path, ids: list[str], image_suffix: str):
    from segzoo.data.layouts import Sample

    return [Sample(i, folder / f"{i}{image_suffix}", masks / f"{i}.png") for i in ids]


def per_image_confusions(model: Path, samples: list, mapper, names: list[str]) -> np.ndarray:
    """One confusion matrix per image ``[N, C, C]`` (segzoo's evaluator, original mask resolution)."""
    from segzoo.evaluation.evaluate import evaluate
    from segzoo.preprocess import Preprocessing
    from segzoo.runners import load_runner

    runner = load_runner(model)
    pp = Preprocessing()  # (pixel - 127.5) / 127.5, bilinear, stretched: what ST's application does
    return np.stack([evaluate(runner, [s], mapper, pp, names, desc=s.image_path.name).confusion for s in samples])


def miou(cm: np.ndarray, ground_truth_only: bool = False) -> float:
    """Mean IoU of a confusion matrix ``[true, predicted]`` over the classes seen in it (segzoo's definition: a
    class predicted but absent from the ground truth counts with IoU 0), or only over the ground-truth classes."""
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - inter
    present = (cm.sum(1) > 0) if ground_truth_only else union > 0
    return float((inter[present] / union[present]).mean())


def paired_bootstrap(reference: np.ndarray, other: np.ndarray, rounds: int, seed: int = 0) -> tuple[float, float]:
    """95% interval of ``mIoU(reference) - mIoU(other)`` over images resampled with replacement (points)."""
    rng = np.random.default_rng(seed)
    drops = []
    for _ in range(rounds):
        idx = rng.integers(0, len(reference), len(reference))
        drops.append(100 * (miou(reference[idx].sum(0)) - miou(other[idx].sum(0))))
    low, high = np.percentile(drops, [2.5, 97.5])
    return float(low), float(high)


def deeplab257_config(quantization: dict | None = None) -> dict:
    """``evaluation_coco_to_voc.yaml`` turned into a quantization run of Google's float file with segzoo's defaults:
    calibrated on the calibration ids, the run's own float/int8 comparison on the evaluation ids."""
    cfg = yaml.safe_load((REPO / "config_file_examples" / "evaluation_coco_to_voc.yaml").read_text())
    cfg.pop("hydra", None)
    images, masks = COCO / "images" / "train2017", COCO / "semantic_segmentation" / "masks" / "train2017"
    cfg["operation_mode"] = "quantization"
    cfg["general"]["model_path"] = str(GOOGLE)
    cfg["dataset"].update({"test_path": str(images), "test_masks_path": str(masks),
                           "test_files_path": str(DATA / "coco128_evaluation.txt"),
                           "quantization_path": str(images), "quantization_masks_path": str(masks),
                           "quantization_files_path": str(DATA / "coco128_calibration.txt")})
    cfg["mlflow"] = {"enabled": False}
    cfg["quantization"] = dict(quantization or {})
    return cfg


def _segzoo_quantized(tmp: Path, quantization: dict | None = None) -> tuple[Path, dict]:
    """segzoo's per-tensor quantization of Google's float file (default settings unless ``quantization``), through
    the command-line run; the int8 file and the run's quantization report."""
    from segzoo.cli import run

    start, cpu = time.perf_counter(), time.process_time()
    load = os.getloadavg()
    run(deeplab257_config(quantization), run_dir=tmp / "q")
    report = json.loads((tmp / "q" / "quantization_report.json").read_text())
    report["bench"] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                       "load_before": load, "load_after": os.getloadavg()}
    return next((tmp / "q").rglob("*_int8_per_tensor*.tflite")), report


def _print_quantization(report: dict) -> None:
    """Placement, time and per-step seconds of segzoo's run, and its worst layers."""
    est, bench = report.get("stm32mp2_estimate") or {}, report["bench"]
    print(f"\nsegzoo run (quantization mode incl. its own float/int8 evaluation): {bench['wall_s']:.0f} s wall, "
          f"{bench['cpu_s']:.0f} s process CPU, load {bench['load_before'][0]:.2f} -> {bench['load_after'][0]:.2f}; "
          f"quantization step {report.get('seconds', float('nan')):.0f} s; NPU {est.get('npu_pct', float('nan')):.1f}%"
          f", off the NPU: {est.get('ops_off_npu', {})}")
    timings = report.get("timings") or {}
    print(f"quantization step: {timings.get('wall_s', 0):.0f} s wall, {timings.get('cpu_s', 0):.0f} s process CPU, "
          f"load average {timings.get('load_average_start')} -> {timings.get('load_average_end')}; per step "
          "(wall/CPU s): " + ", ".join(f"{k} {v['wall_s']:.1f}/{v['cpu_s']:.1f}"
                                        for k, v in (timings.get("steps") or {}).items()))
    worst = ", ".join(f"{(w['layers'] or [w['tensor']])[-1]} {w['rmse_per_scale']:.2f}"
                      for w in report.get("worst_layers", [])[:5])
    print(f"worst layers (RMSE / int8 step): {worst}")


def _variant_label(quantization: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in quantization.items()) or "defaults"


def bench_deeplab257(rounds: int, variants: list[dict], keep: Path | None = None) -> None:
    """Google's float file, ST's int8 file and one segzoo row per quantization variant, on each evaluation set; per
    segzoo row also its pooled mIoU minus ST's with a paired bootstrap interval (negative: behind ST's file)."""
    names, coco_mapper, voc_mapper = _voc_setup()
    sets = {
        "COCO train2017 (evaluation ids)": (_samples(COCO / "images" / "train2017",
                                                      COCO / "semantic_segmentation" / "masks" / "train2017",
                                                      _ids("coco128_evaluation.txt"), ".jpg"), coco_mapper),
        "VOC 2012 val samples (14)": (_samples(VOC / "images", VOC / "labels_index",
                                               sorted(p.stem for p in (VOC / "images").glob("*.png")), ".png"),
                                      voc_mapper),
    }
    assert not set(_ids("coco128_calibration.txt")) & set(_ids("coco128_evaluation.txt"))
    with tempfile.TemporaryDirectory() as tmp:
        if keep is not None:  # the run folders of segzoo's quantizations (report, model, log) stay there
            keep.mkdir(parents=True, exist_ok=True)
            tmp = str(keep)
        models = {"Google float (reference)": GOOGLE, "ST int8 per-tensor": ST}
        for i, quantization in enumerate(variants):
            label = _variant_label(quantization)
            models[f"segzoo int8 per-tensor ({label})"], report = _segzoo_quantized(Path(tmp) / f"v{i}",
                                                                                   quantization)
            print(f"\n### segzoo, {label}")
            _print_quantization(report)
        for set_name, (samples, mapper) in sets.items():
            start = time.perf_counter()
            cms = {name: per_image_confusions(path, samples, mapper, names) for name, path in models.items()}
            reference, st = cms["Google float (reference)"], cms["ST int8 per-tensor"]
            present = (reference.sum(2) > 0)  # [N, C]: class in the ground truth of the image
            print(f"\n## {set_name}: {len(samples)} images ({time.perf_counter() - start:.0f} s)\n")
            print("| model | mIoU (pixels pooled) | drop vs float (points) | 95% interval (paired bootstrap) "
                  "| mIoU over ground-truth classes | its drop | mean per-image mIoU | its drop | minus ST's file "
                  "(points, 95% interval) |")
            print("|---|---:|---:|---|---:|---:|---:|---:|---|")
            for name, cm in cms.items():
                drop = 100 * (miou(reference.sum(0)) - miou(cm.sum(0)))
                interval = "" if cm is reference else "[{:.2f}, {:.2f}]".format(*paired_bootstrap(reference, cm,
                                                                                                      rounds))
                per_image = 100 * np.mean([miou(c) for c in cm])
                per_image_drop = 100 * np.mean([miou(r) - miou(c) for r, c in zip(reference, cm)])
                gt = 100 * miou(cm.sum(0), ground_truth_only=True)
                gt_drop = 100 * miou(reference.sum(0), ground_truth_only=True) - gt
                versus = ""
                if name.startswith("segzoo"):
                    low, high = paired_bootstrap(cm, st, rounds)  # mIoU(segzoo) - mIoU(ST)
                    versus = f"{100 * (miou(cm.sum(0)) - miou(st.sum(0))):+.3f} [{low:.2f}, {high:.2f}]"
                print(f"| {name} | {100 * miou(cm.sum(0)):.3f} | {drop:.2f} | {interval} | {gt:.2f} | {gt_drop:.2f} | "
                      f"{per_image:.2f} | {per_image_drop:.2f} | {versus} |")
            counts = present.sum(0)
            print("\nImages per class: " + ", ".join(f"{n} {c}" for n, c in zip(names, counts) if c))


def bench_timing(quantization: dict | None = None) -> None:
    """segzoo's quantization step on Google's float 257 file with 100 COCO calibration images (all of
    ``coco128_semseg``'s photos; ``quantization.calibration_images`` default): wall and process CPU seconds of each
    step from the report, and the load average."""
    from segzoo.cli import run

    cfg = deeplab257_config(quantization)
    cfg["dataset"]["quantization_files_path"] = None
    with tempfile.TemporaryDirectory() as tmp:
        run(cfg, run_dir=Path(tmp) / "q")
        report = json.loads((Path(tmp) / "q" / "quantization_report.json").read_text())
    timings = report["timings"]
    print(f"calibration images: {report['calibration'].get('images')}; quantization step {timings['wall_s']:.1f} s "
          f"wall, {timings['cpu_s']:.1f} s process CPU on {timings['cpus']} cores; load average "
          f"{timings['load_average_start']} -> {timings['load_average_end']}")
    print("| step | wall s | process CPU s |\n|---|---:|---:|")
    for name, entry in timings["steps"].items():
        print(f"| {name} | {entry['wall_s']:.1f} | {entry['cpu_s']:.1f} |")


def _keys(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings as quantization keys (YAML values)."""
    return {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in pairs if a)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    camvid = sub.add_parser("camvid")
    camvid.add_argument("models", nargs="+", type=Path)
    camvid.add_argument("--only", nargs="*", help="only the rows whose label contains one of these words")
    deeplab = sub.add_parser("deeplab257")
    deeplab.add_argument("--bootstrap", type=int, default=1000)
    deeplab.add_argument("--quantization", nargs="*", default=[], metavar="KEY=VALUE",
                         help="quantization keys for segzoo's row instead of the defaults (YAML values)")
    deeplab.add_argument("--variants", nargs="*", default=[], metavar="K=V[,K=V]",
                         help="several segzoo rows side by side: 'defaults' or comma-separated quantization keys")
    deeplab.add_argument("--keep", type=Path, help="keep segzoo's quantization run folder here")
    timing = sub.add_parser("timing")
    timing.add_argument("--quantization", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.what == "camvid":
        bench_camvid(args.models, args.only)
    elif args.what == "timing":
        bench_timing(_keys(args.quantization))
    else:
        variants = [_keys(v.split(",")) if v != "defaults" else {} for v in args.variants] or [
            _keys(args.quantization)]
        bench_deeplab257(args.bootstrap, variants, args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
