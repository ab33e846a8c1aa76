"""The promptable-segmentation task: an encoder/decoder pair (SAM2) driven by point prompts.

Its model is a folder (:mod:`.models`): the Keras pair built from ``training.model`` with its pretrained weights, or a
TFLite pair (exported or quantized). It evaluates click-based mIoU on YOLO-seg instance labels (:mod:`.evaluate`),
quantizes both networks (:mod:`.quantize`), segments images from prompts (:mod:`.prediction`) and builds the board
bundle of the point application (:mod:`segzoo.deployment.point_bundle`). It does not train.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ConfigError, DataError
from segzoo.tasks.base import log_report
from segzoo.tasks.promptable_segmentation import data
from segzoo.tasks.promptable_segmentation.models import ModelPair, find_pair, load_pair, write_info
from segzoo.tasks.promptable_segmentation.timing import StageTimes

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.models.sam2.params import Sam2Params
    from segzoo.quantization.quantize import QuantizationResult
    from segzoo.steps.context import RunContext
    from segzoo.tasks.promptable_segmentation.calibration import Calibration
    from segzoo.tasks.promptable_segmentation.dataset import InstanceSample

logger = logging.getLogger(__name__)

REPORT_PREFIX = {"model": "", "quantized": "quantized_"}
RESIZE_MODE = "longest_side"
IMPORTED = "imported_model"


class PromptableSegmentation:
    """Promptable segmentation for one run (its evaluation set is resolved once, on first use)."""

    name = "promptable_segmentation"
    metric = "miou_1click"
    metric_label = "1-click mIoU"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._evaluation_set: tuple[str, list[InstanceSample]] | None = None

    # --------------------------------------------------------------------------------------------- models
    def train(self) -> Any:
        """Not available: SAM2 is used with its pretrained weights."""
        raise ConfigError("operation_mode: the promptable_segmentation task does not train; use SAM2 with its "
                          "pretrained weights (training.model.pretrained_weights)")

    def import_model(self) -> Path:
        """``training.model`` built with its pretrained weights and saved as a Keras pair in
        ``saved_models/imported_model/`` (``encoder.keras``, ``decoder.keras``, ``sam2.json``)."""
        from segzoo.io import atomic_dir, write_sidecar
        from segzoo.models.registry import build_from_params
        from segzoo.models.sam2.weights import DECODER_NAME, ENCODER_NAME

        cfg = self.ctx.cfg
        params = cfg.training.model
        model = build_from_params(params, None, weights_dirs=cfg.general.weights_dirs)
        folder = self.ctx.run_dir / cfg.general.saved_models_dir / IMPORTED
        with atomic_dir(folder) as stage:
            for name, layer in (("encoder.keras", ENCODER_NAME), ("decoder.keras", DECODER_NAME)):
                model.get_layer(layer).save(stage / name)
                write_sidecar(stage / name)  # checked when the pair is loaded
            write_info(stage, params)
        logger.info("Imported %s with weights %s into %s", params.name, params.pretrained_weights, folder)
        return folder

    def pair(self, model: Path) -> ModelPair:
        """The encoder/decoder pair of ``model`` (a folder)."""
        return find_pair(model)

    def predictor(self, model: Path) -> tuple[Any, StageTimes, Sam2Params, dict]:
        """``(predictor, stage timings, params, last decoder outputs)`` of a model folder."""
        from segzoo.models.sam2.predictor import Sam2Predictor

        encode, decode, params = load_pair(self.pair(model), self.ctx.cfg.general.num_threads_tflite)
        times, last = StageTimes(), {}

        def keep(inputs: Any) -> Any:
            last.update(decode(inputs))
            return last

        predictor = Sam2Predictor(times.wrap("encoder", encode), times.wrap("decoder", keep), params, RESIZE_MODE)
        return predictor, times, params, last

    # ----------------------------------------------------------------------------------------- evaluation
    def evaluation_samples(self) -> tuple[str, list[InstanceSample]]:
        """(split, samples) that every evaluation of this run uses."""
        if self._evaluation_set is None:
            self._evaluation_set = data.evaluation_set(self.ctx.cfg)
        return self._evaluation_set

    def _check_clicks(self, params: Sam2Params, model: Path) -> None:
        clicks = self.ctx.cfg.evaluation.clicks
        if clicks > params.num_points:
            raise ConfigError(f"evaluation.clicks: {clicks} clicks, but the decoder of {model} takes at most "
                              f"{params.num_points} points; use a model built with training.model.num_points="
                              f"{clicks} or more")

    def _run(self, model: Path, samples: list[InstanceSample]) -> tuple[dict, Sam2Params]:
        from segzoo.tasks.promptable_segmentation.evaluate import evaluate_clicks

        ev = self.ctx.cfg.evaluation
        predictor, times, params, _ = self.predictor(model)
        self._check_clicks(params, model)
        result = evaluate_clicks(samples, predictor, num_clicks=ev.clicks, min_area=ev.min_instance_area,
                                 threshold=ev.mask_threshold)
        return {**result, "timings": times.summary()}, params

    def evaluate(self, model: Path, role: str) -> dict:
        """Click-based mIoU of ``model`` on the run's instances; reports and MLflow metrics."""
        from segzoo.tasks.promptable_segmentation.reports import write_report

        ctx = self.ctx
        split, samples = self.evaluation_samples()
        logger.info("Evaluating %s on the instances of %d %s images", model, len(samples), split)
        result, params = self._run(model, samples)
        if not result["num_instances"]:
            raise DataError(f"dataset.{split}_masks_path: no instance of at least evaluation.min_instance_area "
                            f"({result['min_area']} pixels) in the {len(samples)} {split} images")
        prefix, dataset = REPORT_PREFIX[role], data.describe(split, samples, ctx.cfg)
        pair = self.pair(model)
        description = {"folder": str(model), "encoder": pair.encoder.name, "decoder": pair.decoder.name,
                       "format": pair.kind, "input": params.image_size, "num_points": params.num_points}
        paths = write_report(result, ctx.run_dir, model=description, dataset=dataset, prefix=prefix)
        per_click = {f"eval_miou_{k + 1}click": v for k, v in enumerate(result["miou_at"])}
        timings = result["timings"]
        metrics = {**per_click, "eval_instances": result["num_instances"],
                   "eval_encoder_ms": timings.get("encoder_median_ms"),
                   "eval_decoder_ms": timings.get("decoder_median_ms")}
        log_report(ctx.tracker, metrics, paths, prefix)
        logger.info("%s: 1-click mIoU %.2f%% over %d instances (%s)", model.name, 100 * result["one_click_miou"],
                    result["num_instances"], paths["md"])
        return {"model": str(model), "miou_1click": result["one_click_miou"], "miou": result["miou"],
                "miou_at": result["miou_at"], "clicks": result["num_clicks"], "num_instances": result["num_instances"],
                "split": split, "dataset": dataset, "timings": timings}

    def validation_metric(self, model: Path) -> float:
        """1-click mIoU of ``model`` on the evaluation instances (no report)."""
        return float(self._run(model, self.evaluation_samples()[1])[0]["one_click_miou"])

    def compare(self, float_eval: dict, quantized_eval: dict) -> dict:
        """mIoU after each click of both models and the drop of the 1-click mIoU in points."""
        def figures(summary: dict) -> dict:
            return {f"miou_{k + 1}click": v for k, v in enumerate(summary["miou_at"])}

        drop = 100.0 * (float_eval["miou_1click"] - quantized_eval["miou_1click"])
        labels = {f"miou_{k + 1}click": f"{k + 1}-click mIoU" for k in range(len(float_eval["miou_at"]))}
        return {"metric": self.metric, "metric_label": self.metric_label, "metric_drop_points": drop,
                "metric_labels": labels,
                "float": figures(float_eval), "quantized": figures(quantized_eval),
                "instances": quantized_eval["num_instances"], "evaluated_on": quantized_eval.get("dataset")}

    # ---------------------------------------------------------------------------------------- quantization
    def _calibration(self, encode: Any, params: Sam2Params) -> Calibration:
        from segzoo.tasks.promptable_segmentation import calibration

        cfg = self.ctx.cfg
        if cfg.quantization.calibration_data == "random":
            return calibration.random_calibration(cfg, encode, params)
        source, samples = data.calibration_set(cfg)
        return calibration.dataset_calibration(cfg, samples, source, encode, params, RESIZE_MODE)

    def calibration(self, input_hw: tuple[int, int], channels: int) -> tuple[np.ndarray, dict, list[str]]:
        """The encoder's calibration images ``[N, S, S, 3]`` (the decoder's come with :meth:`quantize`)."""
        encode, _, params = load_pair(self.pair(self.ctx.model()))
        cal = self._calibration(encode, params)
        return np.concatenate([s["image"] for s in cal.encoder()]), cal.info, cal.warnings

    def quantize(self, model: Path) -> QuantizationResult:
        """Both networks to int8 per-tensor TFLite files in one folder (:mod:`.quantize`)."""
        from segzoo.errors import ModelError
        from segzoo.models.sam2.predictor import keras_functions
        from segzoo.tasks.promptable_segmentation.models import load_keras_pair
        from segzoo.tasks.promptable_segmentation.quantize import quantize_pair

        pair = self.pair(model)
        if pair.kind != "keras":
            raise ModelError(f"{model}: quantization starts from the float Keras pair (encoder.keras, decoder.keras); "
                             f"this folder holds TFLite files")
        encoder, decoder, params = load_keras_pair(pair)
        calibration = self._calibration(keras_functions(encoder, decoder)[0], params)
        return quantize_pair(self.ctx.cfg, pair, {"encoder": encoder, "decoder": decoder}, calibration,
                             self.ctx.run_dir)

    # ---------------------------------------------------------------------------------------- benchmarking
    def benchmark_files(self, model: Path) -> list[tuple[Path, str]]:
        """Both .tflite files of the pair; a Keras pair as its float32 conversion (``<run>/benchmark/``)."""
        pair = self.pair(model)
        if pair.kind == "tflite":
            return [(path, f"{model.name}/{role}") for role, path in pair.files().items()]
        from segzoo.models.sam2.export import export_tflite
        from segzoo.tasks.promptable_segmentation.models import load_keras_model

        out_dir = self.ctx.run_dir / "benchmark" / f"{model.name}_float32"
        files = []
        for role, path in pair.files().items():
            target = out_dir / f"{role}_float32.tflite"
            if not target.exists():
                export_tflite(load_keras_model(path), target)
            files.append((target, f"{model.name}/{role} (float32)"))
        return files

    # ------------------------------------------------------------------------------------------ prediction
    def predict(self, model: Path) -> dict:
        """Segment the prompted images of ``prediction.test_files_path`` (:mod:`.prediction`)."""
        from segzoo.tasks.promptable_segmentation.prediction import predict_images, prompted_images

        cfg = self.ctx.cfg
        items = prompted_images(cfg)
        predictor, times, params, last = self.predictor(model)
        most = max(len(item.points) for item in items)
        if most > params.num_points:
            raise ConfigError(f"prediction: an image has {most} points, but the decoder of {model} takes at most "
                              f"{params.num_points} (training.model.num_points)")

        def last_iou() -> float | None:
            return float(np.max(last["iou"])) if "iou" in last else None

        out_dir = self.ctx.run_dir / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        rows = predict_images(predictor, times, last_iou, items, out_dir, threshold=cfg.evaluation.mask_threshold,
                              alpha=cfg.prediction.overlay_alpha)
        self.ctx.tracker.log_artifact(out_dir, "predictions")
        return {"images": len(rows), "folder": str(out_dir), "timings": times.summary()}

    # ------------------------------------------------------------------------------------------ deployment
    def bundle(self, model: Path, out_dir: Path, nb_model: Path | None) -> Path:
        """The point-prompt board application with both .tflite files (:mod:`segzoo.deployment.point_bundle`)."""
        from segzoo.deployment.point_bundle import build_point_bundle
        from segzoo.errors import ModelError

        pair = self.pair(model)
        if pair.kind != "tflite":
            raise ModelError(f"general.model_path: deployment needs the TFLite pair, {model} holds Keras files "
                             f"(quantize it first: operation_mode chain_qd)")
        cfg = self.ctx.cfg
        return build_point_bundle(pair.encoder, pair.decoder, out_dir, resize_mode=RESIZE_MODE,
                                  threshold=cfg.evaluation.mask_threshold)

    def launch_args(self) -> list[str]:
        """Extra arguments of the launched board application: ``--point x,y,label`` per ``prediction.points``."""
        return [arg for p in self.ctx.cfg.prediction.points for arg in ("--point", f"{p.x:g},{p.y:g},{p.label}")]
