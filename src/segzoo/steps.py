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
from segzoo.data.resolve import DataSpec, data_spec
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
    results: dict[str, Any] = field(default_factory=dict)
    _spec: DataSpec | None = None

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
    """Evaluate the current model on the test set (or validation set) and write the report."""
    from segzoo.data.loader import scan_samples
    from segzoo.data.resolve import evaluation_samples
    from segzoo.evaluation.evaluate import evaluate as run_evaluation
    from segzoo.evaluation.reports import write_evaluation_report
    from segzoo.runners import load_runner

    cfg, spec = ctx.cfg, ctx.spec
    model_path = _model_path(ctx)
    split, samples = evaluation_samples(spec, cfg.evaluation.split)
    samples = scan_samples(samples, spec.mapper, spec.dataset.on_bad_sample, desc=f"Checking {split} set")
    if cfg.evaluation.max_images:
        samples = samples[: cfg.evaluation.max_images]
    runner = load_runner(model_path, num_threads=cfg.general.num_threads_tflite)
    logger.info("Evaluating %s on %d %s images", model_path, len(samples), split)
    result = run_evaluation(runner, samples, spec.mapper, spec.pp, list(spec.class_names),
                            ignore_index=spec.ignore_index, resolution=cfg.evaluation.resolution,
                            desc=f"Evaluating on {split}")
    paths = write_evaluation_report(result, ctx.run_dir, model_path=model_path,
                                    dataset=spec.describe(split, samples), class_names=list(spec.class_names))
    m = result.metrics
    logger.info("mIoU %.2f%%, pixel accuracy %.2f%% on %d images (%s)", 100 * m["miou"], 100 * m["pixel_accuracy"],
                result.num_images, paths.get("md", ctx.run_dir))
    ctx.results["evaluation"] = {"miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"], "split": split}
    metrics = {"eval_miou": m["miou"], "eval_pixel_accuracy": m["pixel_accuracy"],
               "eval_mean_accuracy": m.get("mean_accuracy"), "eval_images_per_second": result.images_per_second}
    metrics.update({f"eval_iou_{name}": v for name, v in m["per_class_iou"].items() if v is not None})
    ctx.tracker.log_metrics(metrics)
    for path in paths.values():
        ctx.tracker.log_artifact(path, "evaluation")


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


def _model_path(ctx: RunContext) -> Path:
    path = ctx.model_path or ctx.cfg.general.model_path
    if not path:
        raise ConfigError("general.model_path: required (no model was trained in this run)")
    return Path(path)


STEPS: MappingProxyType[str, Callable[[RunContext], None]] = MappingProxyType(
    {"train": train, "evaluate": evaluate, "predict": predict})
