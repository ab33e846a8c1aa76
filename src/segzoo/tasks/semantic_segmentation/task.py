"""The semantic-segmentation task: images with masks, mIoU reports, palette predictions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.data.resolve import DataSpec, data_spec, training_and_validation
from segzoo.errors import ConfigError, DataError
from segzoo.tasks.base import log_report, prediction_images

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.data.layouts import Sample
    from segzoo.steps.context import RunContext

logger = logging.getLogger(__name__)

REPORT_PREFIX = {"model": "", "quantized": "quantized_"}


class SemanticSegmentation:
    """Semantic segmentation for one run (its data is resolved once, on first use)."""

    name = "semantic_segmentation"
    metric = "miou"
    metric_label = "mIoU"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._spec: DataSpec | None = None
        self._evaluation_set: tuple[str, list[Sample]] | None = None
        self._evaluation_skipped: list[dict] = []
        self._validation_set: list[Sample] | None = None

    @property
    def spec(self) -> DataSpec:
        """The resolved data (generates the built-in dataset if needed)."""
        if self._spec is None:
            self._spec = data_spec(self.ctx.cfg)
        return self._spec

    # ------------------------------------------------------------------------------------------- training
    def train(self) -> Any:
        """Train as configured (``segzoo.training``)."""
        from segzoo.training.train import run_training

        skipped: list[dict] = []
        try:
            return run_training(self.ctx.cfg, self.spec, self.ctx.run_dir, self.ctx.tracker, skipped=skipped)
        finally:
            self.ctx.record_skipped("train", skipped)

    # ----------------------------------------------------------------------------------------- evaluation
    def evaluation_samples(self) -> tuple[str, list[Sample]]:
        """(split, checked samples) that every evaluation of this run uses."""
        if self._evaluation_set is None:
            from segzoo.data.loader import scan_samples
            from segzoo.data.resolve import evaluation_samples

            cfg, spec = self.ctx.cfg, self.spec
            split, samples = evaluation_samples(spec, cfg.evaluation.split)
            samples = samples[: cfg.evaluation.max_images or None]
            samples = scan_samples(samples, spec.mapper, spec.dataset.on_bad_sample, desc=f"Checking {split} set",
                                   skipped=self._evaluation_skipped)
            self.ctx.record_skipped("evaluate", self._evaluation_skipped)
            self._evaluation_set = (split, samples)
        return self._evaluation_set

    def _run(self, model: Path, samples: list[Sample], desc: str):
        from segzoo.evaluation.evaluate import evaluate as run_evaluation
        from segzoo.runners import load_runner

        cfg, spec = self.ctx.cfg, self.spec
        runner = load_runner(model, num_threads=cfg.general.num_threads_tflite)
        result = run_evaluation(runner, samples, spec.mapper, spec.pp, list(spec.class_names),
                                ignore_index=spec.ignore_index, resolution=cfg.evaluation.resolution, desc=desc,
                                on_bad_sample=spec.dataset.on_bad_sample)
        self.ctx.record_skipped("evaluate", result.skipped)
        return result

    def evaluate(self, model: Path, role: str) -> dict:
        """Evaluate ``model`` on the run's evaluation set; reports, plots and MLflow metrics."""
        from segzoo.evaluation.reports import write_evaluation_report

        ctx, spec = self.ctx, self.spec
        split, samples = self.evaluation_samples()
        logger.info("Evaluating %s on %d %s images", model, len(samples), split)
        result = self._run(model, samples, f"Evaluating {model.name} on {split}")
        result.skipped = self._evaluation_skipped + result.skipped
        prefix = REPORT_PREFIX[role]
        dataset = spec.describe(split, samples)
        paths = write_evaluation_report(result, ctx.run_dir, model_path=model, dataset=dataset,
                                        class_names=list(spec.class_names), prefix=prefix)
        m = result.metrics
        if m["miou"] is None:
            raise DataError(f"no labelled pixel in the {split} masks: every pixel is dataset.ignore_index or "
                            "unmapped (check dataset.class_mapping)")
        logger.info("%s: mIoU %.2f%%, pixel accuracy %.2f%% on %d images (%s)", model.name, 100 * m["miou"],
                    100 * m["pixel_accuracy"], result.num_images, paths.get("md", ctx.run_dir))
        metrics = {"eval_miou": m["miou"], "eval_pixel_accuracy": m["pixel_accuracy"],
                   "eval_mean_accuracy": m.get("mean_accuracy"), "eval_images_per_second": result.images_per_second}
        metrics.update({f"eval_iou_{name}": v for name, v in m["per_class_iou"].items() if v is not None})
        log_report(ctx.tracker, metrics, paths, prefix)
        return {"model": str(model), "miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"],
                "per_class_iou": m["per_class_iou"], "split": split, "dataset": dataset,
                "images": result.num_images, "skipped": len(result.skipped)}

    def validation_metric(self, model: Path) -> float:
        """Validation mIoU of a candidate model (automatic mixed precision); no report written."""
        from segzoo.data.loader import scan_samples

        mp, spec = self.ctx.cfg.quantization.mixed_precision, self.spec
        if self._validation_set is None:
            _, val = training_and_validation(spec)
            val = val[: mp.validation_images or None]
            skipped: list[dict] = []
            self._validation_set = scan_samples(val, spec.mapper, spec.dataset.on_bad_sample,
                                                desc="Checking validation set", skipped=skipped) if val else []
            self.ctx.record_skipped("quantize (validation)", skipped)
        samples = self._validation_set or self.evaluation_samples()[1][: mp.validation_images or None]
        return float(self._run(model, samples, f"Validating {model.name}").metrics["miou"])

    def compare(self, float_eval: dict, quantized_eval: dict) -> dict:
        """mIoU and pixel accuracy of both models, their drops in points, and per-class IoU."""
        per_class = {name: {"float": float_eval["per_class_iou"].get(name),
                            "quantized": quantized_eval["per_class_iou"].get(name)}
                     for name in float_eval["per_class_iou"]}
        drop = 100.0 * (float_eval["miou"] - quantized_eval["miou"])
        return {
            "metric": self.metric, "metric_label": self.metric_label, "metric_drop_points": drop,
            "float": {"miou": float_eval["miou"], "pixel_accuracy": float_eval["pixel_accuracy"]},
            "quantized": {"miou": quantized_eval["miou"], "pixel_accuracy": quantized_eval["pixel_accuracy"]},
            "miou_drop_points": drop,
            "pixel_accuracy_drop_points": 100.0 * (float_eval["pixel_accuracy"] - quantized_eval["pixel_accuracy"]),
            "per_class_iou": per_class,
            "evaluated_on": quantized_eval.get("dataset"),
        }

    def import_model(self) -> Path:
        """``training.model`` built with its pretrained weights, exported, saved as ``saved_models/imported_model.keras``."""
        from segzoo.models.registry import import_pretrained

        cfg = self.ctx.cfg
        path = self.ctx.run_dir / cfg.general.saved_models_dir / "imported_model.keras"
        return import_pretrained(cfg.training.model, self.spec.num_classes, path, cfg.general.weights_dirs)

    # ---------------------------------------------------------------------------------------- quantization
    def calibration(self, input_hw: tuple[int, int], channels: int) -> tuple[np.ndarray, dict, list[str]]:
        """Preprocessed calibration images (``dataset.quantization_*``, else the training set)."""
        from segzoo.tasks.semantic_segmentation.calibration import calibration_data

        skipped: list[dict] = []
        try:
            return calibration_data(self.ctx.cfg, self.spec, input_hw, channels, skipped=skipped)
        finally:
            self.ctx.record_skipped("quantize (calibration)", skipped)

    def quantize(self, model: Path):
        """One network quantized with the task's calibration images (``segzoo.quantization``)."""
        from segzoo.quantization.quantize import run_quantization

        return run_quantization(self.ctx.cfg, model, self.ctx.run_dir, calibration=self.calibration,
                                metric_of=self.validation_metric, fine_tuning=self.fine_tuning_data)

    def fine_tuning_data(self, input_hw: tuple[int, int]) -> tuple[Any, Any, int]:
        """(training batches, loss, steps per epoch) for quantization-aware fine-tuning."""
        from segzoo.training.train import fine_tuning_data

        return fine_tuning_data(self.ctx.cfg, self.spec, input_hw)

    # ---------------------------------------------------------------------------------------- benchmarking
    def benchmark_files(self, model: Path) -> list[tuple[Path, str]]:
        """The model's .tflite file; a Keras model as its float32 conversion, so every row uses one runtime."""
        from segzoo.quantization.converter import float_tflite_file

        if model.suffix.lower() in (".keras", ".h5"):
            out = self.ctx.run_dir / "benchmark" / f"{model.stem}_float32.tflite"
            return [(float_tflite_file(model, out), f"{model.stem} (float32)")]
        return [(model, model.stem)]

    # ------------------------------------------------------------------------------------------ prediction
    def predict(self, model: Path) -> dict:
        """Segment every image of ``prediction.test_files_path``: index masks and overlays."""
        from segzoo.prediction import predict_images, write_prediction_report
        from segzoo.runners import load_runner

        cfg = self.ctx.cfg
        images = prediction_images(cfg)
        runner = load_runner(model, num_threads=cfg.general.num_threads_tflite)
        out_dir = self.ctx.run_dir / "predictions"
        skipped: list[dict] = []
        try:
            rows = predict_images(runner, images, out_dir, self.spec.pp, list(self.spec.class_names),
                                  alpha=cfg.prediction.overlay_alpha, skipped=skipped)
        finally:
            self.ctx.record_skipped("predict", skipped)
        report = write_prediction_report(self.ctx.run_dir, rows, skipped, model)
        logger.info("Wrote %d predictions to %s (%d unreadable images skipped; %s)", len(rows), out_dir,
                    len(skipped), report["md"])
        self.ctx.tracker.log_artifact(out_dir, "predictions")
        log_report(self.ctx.tracker, {}, report, section="predictions")
        return {"images": len(rows), "folder": str(out_dir), "skipped": len(skipped), "report": str(report["json"])}

    # ------------------------------------------------------------------------------------------ deployment
    def bundle(self, model: Path, out_dir: Path, nb_model: Path | None) -> Path:
        """The segmentation board application with the model, its class names and preprocessing."""
        from segzoo.deployment.bundle import build_bundle

        if model.suffix.lower() != ".tflite":
            raise ConfigError(f"general.model_path: deployment needs a .tflite model, got {model.name} "
                              "(quantize it first: operation_mode chain_qd)")
        return build_bundle(model, out_dir, class_names=list(self.spec.class_names),
                            preprocessing=self.spec.pp.to_dict(), label_file=self.ctx.cfg.deployment.label_file_path,
                            nb_model=nb_model)
