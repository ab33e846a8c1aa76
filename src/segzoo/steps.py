"""The steps that operation modes are made of. Each reads what it needs from the run context,
writes its outputs into the run directory first, then sends them to MLflow."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from segzoo.config.schema import Config
from segzoo.data.resolve import DataSpec, data_spec, training_and_validation
from segzoo.errors import ConfigError, DataError
from segzoo.tracking import Tracker

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass
class RunContext:
    """State shared by the steps of one invocation."""

    cfg: Config
    run_dir: Path
    tracker: Tracker
    model_path: Path | None = None
    quantization: Any = None
    results: dict[str, Any] = field(default_factory=dict)
    _spec: DataSpec | None = None
    _evaluation_set: tuple[str, list] | None = None

    @property
    def spec(self) -> DataSpec:
        """The resolved data spec (built once; generates the built-in dataset if needed)."""
        if self._spec is None:
            self._spec = data_spec(self.cfg)
        return self._spec


def train(ctx: RunContext) -> None:
    """Train a model; the best checkpoint becomes the model of the following steps."""
    from segzoo.training.train import run_training

    result = run_training(ctx.cfg, ctx.spec, ctx.run_dir, ctx.tracker)
    ctx.model_path = result.best_model
    ctx.results["training"] = {"best_model": str(result.best_model), "epochs": result.epochs_done,
                               f"best_{result.monitor}": result.best}
    logger.info("Best model: %s (%s %.4f)", result.best_model, result.monitor, result.best or float("nan"))
    logs = ctx.run_dir / ctx.cfg.general.logs_dir
    ctx.tracker.log_artifact(logs / "training_log.csv", "training")
    if result.curves:
        ctx.tracker.log_artifact(result.curves, "training")
    ctx.tracker.log_model_file(result.best_model)


def evaluate(ctx: RunContext) -> None:
    """Evaluate the current model (the quantized one after a quantize step) and write its report."""
    role = "quantized" if ctx.quantization and ctx.model_path == ctx.quantization.path else "model"
    _evaluate(ctx, _model_path(ctx), role)


def _evaluation_samples(ctx: RunContext) -> tuple[str, list]:
    """The checked images every evaluation of this run uses."""
    if ctx._evaluation_set is None:
        from segzoo.data.loader import scan_samples
        from segzoo.data.resolve import evaluation_samples

        split, samples = evaluation_samples(ctx.spec, ctx.cfg.evaluation.split)
        samples = scan_samples(samples, ctx.spec.mapper, ctx.spec.dataset.on_bad_sample, desc=f"Checking {split} set")
        ctx._evaluation_set = (split, samples[: ctx.cfg.evaluation.max_images or None])
    return ctx._evaluation_set


def _evaluate(ctx: RunContext, model_path: Path, role: str) -> dict:
    """Evaluate ``model_path``; ``role`` is "model" or "quantized" (report file prefix, MLflow names)."""
    from segzoo.evaluation.evaluate import evaluate as run_evaluation
    from segzoo.evaluation.reports import write_evaluation_report
    from segzoo.runners import load_runner

    cfg, spec = ctx.cfg, ctx.spec
    split, samples = _evaluation_samples(ctx)
    runner = load_runner(model_path, num_threads=cfg.general.num_threads_tflite)
    logger.info("Evaluating %s on %d %s images", model_path, len(samples), split)
    result = run_evaluation(runner, samples, spec.mapper, spec.pp, list(spec.class_names),
                            ignore_index=spec.ignore_index, resolution=cfg.evaluation.resolution,
                            desc=f"Evaluating {model_path.name} on {split}")
    prefix = "quantized_" if role == "quantized" else ""
    dataset = spec.describe(split, samples)
    paths = write_evaluation_report(result, ctx.run_dir, model_path=model_path, dataset=dataset,
                                    class_names=list(spec.class_names), prefix=prefix)
    m = result.metrics
    if m["miou"] is None:
        raise DataError(f"no labelled pixel in the {split} masks: every pixel is dataset.ignore_index or unmapped "
                        "(check dataset.class_mapping)")
    logger.info("%s: mIoU %.2f%%, pixel accuracy %.2f%% on %d images (%s)", model_path.name, 100 * m["miou"],
                100 * m["pixel_accuracy"], result.num_images, paths.get("md", ctx.run_dir))
    summary = {"model": str(model_path), "miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"],
               "per_class_iou": m["per_class_iou"], "split": split, "dataset": dataset}
    ctx.results[f"{prefix}evaluation"] = summary
    metrics = {"eval_miou": m["miou"], "eval_pixel_accuracy": m["pixel_accuracy"],
               "eval_mean_accuracy": m.get("mean_accuracy"), "eval_images_per_second": result.images_per_second}
    metrics.update({f"eval_iou_{name}": v for name, v in m["per_class_iou"].items() if v is not None})
    ctx.tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items()})
    for path in paths.values():
        ctx.tracker.log_artifact(path, "evaluation")
    return summary


def quantize(ctx: RunContext) -> None:
    """Quantize the current float model; the quantized .tflite becomes the current model."""
    from segzoo.quantization.quantize import run_quantization

    float_model = _model_path(ctx)
    result = run_quantization(ctx.cfg, ctx.spec, float_model, ctx.run_dir, lambda path: _validation_miou(ctx, path))
    ctx.quantization, ctx.model_path = result, result.path
    ctx.results["quantization"] = {"model": str(result.path), "float_model": str(float_model),
                                   "granularity": result.granularity, "float_layers": result.float_layers,
                                   "seconds": round(result.seconds, 1)}
    logger.info("Quantized model: %s (%.1f s)", result.path, result.seconds)
    ctx.tracker.log_model_file(result.path)


def _validation_miou(ctx: RunContext, model_path: Path) -> float:
    """Validation mIoU of a candidate model, for automatic mixed precision (no report written)."""
    from segzoo.evaluation.evaluate import evaluate as run_evaluation
    from segzoo.runners import load_runner

    spec, mp = ctx.spec, ctx.cfg.quantization.mixed_precision
    _, val = training_and_validation(spec)
    samples = val or _evaluation_samples(ctx)[1]
    samples = samples[: mp.validation_images or None]
    runner = load_runner(model_path, num_threads=ctx.cfg.general.num_threads_tflite)
    result = run_evaluation(runner, samples, spec.mapper, spec.pp, list(spec.class_names),
                            ignore_index=spec.ignore_index, resolution=ctx.cfg.evaluation.resolution,
                            desc=f"Validating {model_path.name}")
    return float(result.metrics["miou"])


def quantization_report(ctx: RunContext) -> None:
    """Compare the float and the quantized model on the same images (evaluating what is missing)."""
    from segzoo.quantization.report import build_report, report_metrics, write_quantization_report

    if ctx.quantization is None:
        raise ConfigError("operation_mode: quantization_report needs a quantize step before it")
    float_eval = ctx.results.get("evaluation") or _evaluate(ctx, ctx.quantization.float_model, "model")
    quant_eval = ctx.results.get("quantized_evaluation") or _evaluate(ctx, ctx.quantization.path, "quantized")
    report = build_report(ctx.quantization, float_eval, quant_eval)
    paths = write_quantization_report(ctx.run_dir, report)
    logger.info("Float mIoU %.2f%% -> quantized %.2f%% (%s): drop %.2f points; NPU-ready: %s (%s)",
                100 * report["float"]["miou"], 100 * report["quantized"]["miou"], report["granularity"],
                report["miou_drop_points"], report["npu_ready"], paths["md"])
    ctx.results["quantization"].update(miou_drop_points=report["miou_drop_points"], npu_ready=report["npu_ready"])
    ctx.tracker.log_metrics(report_metrics(report))
    for path in paths.values():
        ctx.tracker.log_artifact(path, "quantization")


def predict(ctx: RunContext) -> None:
    """Segment every image of ``prediction.test_files_path``: index masks and overlays."""
    from segzoo.prediction import predict_images
    from segzoo.runners import load_runner

    cfg = ctx.cfg
    folder = Path(cfg.prediction.test_files_path)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"prediction.test_files_path: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    if cfg.prediction.max_images:
        images = images[: cfg.prediction.max_images]
    runner = load_runner(_model_path(ctx), num_threads=cfg.general.num_threads_tflite)
    out_dir = ctx.run_dir / "predictions"
    rows = predict_images(runner, images, out_dir, ctx.spec.pp, list(ctx.spec.class_names),
                          alpha=cfg.prediction.overlay_alpha)
    logger.info("Wrote %d predictions to %s", len(rows), out_dir)
    ctx.results["prediction"] = {"images": len(rows), "folder": str(out_dir)}
    ctx.tracker.log_artifact(out_dir, "predictions")


def benchmark(ctx: RunContext) -> None:
    """Benchmark the run's models on the configured targets; one comparison table, plots and metrics."""
    from segzoo.benchmarking.report import benchmark_metrics, benchmark_models, write_benchmark_report

    bench = ctx.cfg.benchmarking
    paths, names = _benchmark_models(ctx)
    local_targets = [t for t in bench.targets if t != "board"]
    rows = benchmark_models(paths, local_targets, names=names, runs=bench.runs, warmup=bench.warmup,
                            threads=bench.threads, npu_mhz=bench.npu_mhz, rules_path=bench.rules_path)
    if "board" in bench.targets:
        analysed = {r["path"]: r["analysis"] for r in rows if r.get("analysis")}
        rows += [_board_row(ctx, path, name, analysed.get(str(path))) for path, name in zip(paths, names)]
    files = write_benchmark_report(rows, ctx.run_dir)
    for row in rows:
        if row["error"]:
            logger.warning("%s on %s: %s", row["model"], row["target"], row["error"])
        else:
            logger.info("%s on %s: %.2f ms%s", row["model"], row["target"], row["latency_ms"],
                        f" ({row['npu_pct']:.1f}% NPU)" if row.get("npu_pct") is not None else "")
    ctx.results["benchmark"] = {"report": str(files.get("json")), "rows": len(rows),
                                "failed": sum(bool(r["error"]) for r in rows)}
    ctx.tracker.log_metrics(benchmark_metrics(rows))
    for path in files.values():
        ctx.tracker.log_artifact(path, "benchmark")


def _benchmark_models(ctx: RunContext) -> tuple[list[Path], list[str]]:
    """The models to compare: ``benchmarking.models``, else the float and quantized models of this run.

    A Keras model is benchmarked as its float32 TFLite conversion, so that every row uses the same runtime.
    """
    configured = [Path(p) for p in ctx.cfg.benchmarking.models]
    if configured:
        models = configured
    elif ctx.quantization is not None:
        models = [ctx.quantization.float_model, ctx.quantization.path]
    else:
        models = [_model_path(ctx)]
    paths, names = [], []
    for model in models:
        if model.suffix.lower() in (".keras", ".h5"):
            paths.append(_float_tflite(ctx, model))
            names.append(f"{model.stem} (float32)")
        else:
            paths.append(model)
            names.append(model.stem)
    return paths, names


def _float_tflite(ctx: RunContext, model: Path) -> Path:
    """The float32 TFLite conversion of a Keras model, in ``<run>/benchmark/``."""
    from segzoo.quantization.converter import convert
    from segzoo.quantization.quantize import load_float_model

    out = ctx.run_dir / "benchmark" / f"{model.stem}_float32.tflite"
    if not out.exists():
        convert(load_float_model(model), None, out, input_type="float", output_type="float", quantize=False)
    return out


def _board_row(ctx: RunContext, path: Path, name: str, analysis: dict | None) -> dict:
    """One table row measured on the real board; a board problem becomes the row's error."""
    from segzoo.benchmarking.analysis import analyze_model
    from segzoo.benchmarking.board import benchmark_on_board
    from segzoo.benchmarking.report import new_row
    from segzoo.errors import SegzooError
    from segzoo.remote import BoardTarget

    b = ctx.cfg.benchmarking.board
    row = new_row(path, "board", name, analysis or analyze_model(path))
    try:
        target = BoardTarget(host=b.host, port=b.port, user=b.user, identity_file=b.identity_file,
                             known_hosts=b.known_hosts, strict_host_key_checking=b.strict_host_key_checking)
        result = benchmark_on_board(path, target, remote_dir=b.remote_dir, runs=ctx.cfg.benchmarking.runs,
                                    python=b.python)
    except SegzooError as exc:
        row["error"] = str(exc)
        return row
    row.update(device=f"STM32MP2 board {target.address}", runtime=f"{result['runtime']} ({result['delegate']})",
               latency_ms=result["median_ms"], latency_p90_ms=result.get("p90_ms"),
               primary_unit=result.get("delegate"), details=result)
    return row


def deploy(ctx: RunContext) -> None:
    """Build the application bundle in the run directory and, with a board address, push and verify it."""
    from segzoo.deployment.bundle import build_bundle

    cfg, dep = ctx.cfg, ctx.cfg.deployment
    model = _model_path(ctx)
    if model.suffix.lower() != ".tflite":
        raise ConfigError(f"general.model_path: deployment needs a .tflite model, got {model.name} "
                          "(quantize it first: operation_mode chain_qd)")
    out_dir = ctx.run_dir / "deployment"
    nb_model = _generate_nb(cfg, model, out_dir)
    bundle = build_bundle(model, out_dir, class_names=list(ctx.spec.class_names), preprocessing=ctx.spec.pp.to_dict(),
                          label_file=dep.label_file_path, nb_model=nb_model)
    ctx.results["deployment"] = {"bundle": str(bundle), "nb_model": str(nb_model) if nb_model else None}
    ctx.tracker.log_artifact(bundle / "manifest.json", "deployment")
    if not dep.hardware_setup.ip_address:
        logger.info("Bundle ready in %s; set deployment.hardware_setup.ip_address to push it to a board", bundle)
        return
    from segzoo.deployment.push import deploy as push

    summary = push(bundle, _deploy_target(cfg), dep.board_deploy_path, launch=dep.launch,
                   launch_args=_launch_args(dep.launch_input, dep.board_deploy_path), timeout=dep.timeout,
                   python=dep.python)
    ctx.results["deployment"].update(summary)
    logger.info("Deployed to %s:%s (verified on the board)%s", summary["host"], summary["remote_path"],
                "; launched" if summary.get("launched") else "")


def _generate_nb(cfg: Config, model: Path, out_dir: Path) -> Path | None:
    """The NPU network binary from ST Edge AI Core, when its path is configured."""
    tool = cfg.tools.stedgeai.path_to_stedgeai
    if not tool:
        return None
    from segzoo.deployment.stedgeai import generate_nb

    return generate_nb(model, tool, out_dir / "stedgeai")


def _deploy_target(cfg: Config):
    """The board of ``deployment.hardware_setup`` (host key checked unless explicitly turned off)."""
    from segzoo.remote import BoardTarget

    hw = cfg.deployment.hardware_setup
    return BoardTarget(host=hw.ip_address, port=hw.port, user=hw.user, identity_file=hw.identity_file,
                       known_hosts=hw.known_hosts,
                       strict_host_key_checking=cfg.deployment.strict_host_key_checking)


def _launch_args(launch_input: str | None, board_deploy_path: str) -> list[str]:
    """Arguments of the launched application: a camera device, or images with results beside the app."""
    if not launch_input:
        return []
    if launch_input == "camera" or launch_input.startswith("/dev/video"):
        device = "/dev/video0" if launch_input == "camera" else launch_input
        return ["--camera", device, "--max-frames", "30"]
    return ["--input", launch_input, "--output", board_deploy_path.rstrip("/") + "_results"]


def _model_path(ctx: RunContext) -> Path:
    path = ctx.model_path or ctx.cfg.general.model_path
    if not path:
        raise ConfigError("general.model_path: required (no model was trained in this run)")
    return Path(path)


STEPS: MappingProxyType[str, Callable[[RunContext], None]] = MappingProxyType(
    {"train": train, "evaluate": evaluate, "predict": predict, "quantize": quantize,
     "quantization_report": quantization_report, "benchmark": benchmark, "deploy": deploy})
