"""The pose-estimation task: a published detector + landmark pipeline (``general.pipeline``) through every mode.

A model of this task is a **folder** holding the pipeline's files under the preset's names (float: the published
files, ``general.model_path`` or found/downloaded; quantized: ``<export_dir>/<pipeline>_int8_<granularity>/``).
Evaluation runs the whole pipeline on a COCO keypoints dataset (OKS AP/AR, mean per-person OKS, PCK) and, when
``pose_estimation.person_masks`` is set, measures the person-mask IoU; quantization quantizes each network on its
own real inputs (the detector on letterboxed person photos, the landmark model on the crops the float pipeline
cuts from them) and compares float and int8 per stage. There is no training step: the networks are used as
published.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segzoo.errors import ConfigError
from segzoo.tasks.base import log_report, prediction_images

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.quantization.quantize import QuantizationResult
    from segzoo.steps.context import RunContext
    from segzoo.tasks.pose_estimation.evaluation import KeypointDataset, MaskSample
    from segzoo.tasks.pose_estimation.pipeline import PosePipeline
    from segzoo.tasks.pose_estimation.preset import PosePreset

logger = logging.getLogger(__name__)

ROLES = ("detector", "landmark")
REPORT_PREFIX = {"model": "", "quantized": "quantized_"}
OKS_TARGET, MASK_IOU_TARGET_POINTS = 0.03, 2.0
"""The issue's targets for the int8 pipeline: mean per-person OKS within 0.03 of float, mask IoU within 2 points."""


class PoseEstimation:
    """Pose estimation for one run (dataset, calibration inputs and evaluations resolved once, on first use)."""

    name = "pose_estimation"
    metric = "mean_oks"
    metric_label = "mean OKS"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._keypoints: tuple[str, KeypointDataset] | None = None
        self._mask_samples: list[MaskSample] | None = None
        self._calibration: dict[str, tuple[np.ndarray, dict]] | None = None

    # --------------------------------------------------------------------------------------------- models
    @property
    def preset(self) -> PosePreset:
        """The ``general.pipeline`` preset with this run's options (``pose_estimation.num_poses``)."""
        from segzoo.models.external import get_pipeline

        cfg = self.ctx.cfg
        if not cfg.general.pipeline:
            raise ConfigError("general.pipeline: the pose_estimation task needs a pipeline preset "
                              "(e.g. mediapipe_pose_full)")
        return get_pipeline(cfg.general.pipeline).with_options(num_poses=cfg.pose_estimation.num_poses)

    def files(self, model: Path) -> dict[str, Path]:
        """``{"detector": ..., "landmark": ...}``: the networks of a model folder (ModelError naming a missing one)."""
        return dict(zip(ROLES, self.preset.paths(model)))

    def pipeline(self, detector: Path, landmark: Path) -> PosePipeline:
        """The pose pipeline of two network files (float or quantized .tflite), run with LiteRT."""
        from segzoo.runtime.litert import LiteRTRunner
        from segzoo.tasks.pose_estimation.pipeline import PosePipeline

        threads = self.ctx.cfg.general.num_threads_tflite
        return PosePipeline(self.preset, LiteRTRunner(detector, threads, name="detector"),
                            LiteRTRunner(landmark, threads, name="landmark"))

    def train(self) -> Any:
        """Not available: the pipeline's networks are used as published."""
        raise ConfigError(f"operation_mode {self.ctx.cfg.operation_mode}: the pose_estimation task has no training "
                          "step (its networks are used as published)")

    def import_model(self) -> Path:
        """The folder of the pipeline's files found in ``general.weights_dirs`` or the cache, else downloaded from
        where the preset says they are published (checked against their sha256)."""
        from segzoo.models.weights_store import locate_weights, segzoo_cache_dir

        cfg, preset = self.ctx.cfg, self.preset
        found = []
        for name in preset.files:
            source = preset.source(name)
            found.append(locate_weights([name], folders=cfg.general.weights_dirs, cache_dir=segzoo_cache_dir(),
                                        url=source.url if source else None, sha256=source.sha256 if source else None,
                                        what=f"{preset.name} model file"))
        folders = {path.parent for path in found}
        if len(folders) == 1:
            return folders.pop()
        folder = self.ctx.run_dir / cfg.general.saved_models_dir / preset.name
        folder.mkdir(parents=True, exist_ok=True)
        for path in found:
            _copy_atomic(path, folder / path.name)
        logger.info("%s files gathered from %s into %s", preset.name, ", ".join(map(str, sorted(folders))), folder)
        return folder

    # ----------------------------------------------------------------------------------------- evaluation
    def keypoint_dataset(self) -> tuple[str, KeypointDataset]:
        """(split, checked COCO keypoints dataset) that every evaluation of this run uses."""
        if self._keypoints is None:
            from segzoo.tasks.pose_estimation.evaluation import load_coco_keypoints

            ds, split = self.ctx.cfg.dataset, self.ctx.cfg.evaluation.split
            if split == "auto":
                split = "validation" if ds.validation_path or ds.validation_annotations_path else "test"
            images, annotations = getattr(ds, f"{split}_path"), getattr(ds, f"{split}_annotations_path")
            if not images or not annotations:
                raise ConfigError(f"dataset.{split}_annotations_path: evaluation needs dataset.{split}_path and "
                                  f"dataset.{split}_annotations_path (a COCO keypoints file)")
            self._keypoints = (split, load_coco_keypoints(annotations, images))
        return self._keypoints

    def mask_samples(self) -> list[MaskSample]:
        """Images with person masks (``pose_estimation.person_masks``); empty when not configured."""
        if self._mask_samples is None:
            from segzoo.tasks.pose_estimation.evaluation import person_mask_samples

            masks = self.ctx.cfg.pose_estimation.person_masks
            self._mask_samples = [] if not masks.images_path else person_mask_samples(
                masks.images_path, masks.masks_path, masks.person_values, masks.max_images)
        return self._mask_samples

    def _evaluate_pair(self, detector: Path, landmark: Path, *, max_images: int | None = None,
                       masks: bool = True) -> tuple[dict, dict]:
        """The pipeline report of two network files (keypoints, and person masks when configured) and its
        predictions by image id."""
        from segzoo.tasks.pose_estimation.evaluation import evaluate_keypoints, evaluate_person_masks

        cfg = self.ctx.cfg
        split, dataset = self.keypoint_dataset()
        pipeline = self.pipeline(detector, landmark)
        keypoints, predictions = evaluate_keypoints(pipeline.estimate, dataset, max_images or cfg.evaluation.max_images)
        person = cfg.pose_estimation.person_masks
        samples = self.mask_samples() if masks else []
        mask_metrics = evaluate_person_masks(pipeline.estimate, samples, person.person_values, person.ignore_values,
                                             person.threshold) if samples else None
        report = {"pipeline": self.preset.name, "num_poses": self.preset.num_poses,
                  "models": {"detector": str(detector), "landmark": str(landmark)},
                  "dataset": {"split": split, "keypoints": str(dataset.source), "images": str(dataset.images[0].path.parent)
                              if dataset.images else None, "masks": person.masks_path if samples else None},
                  "keypoints": keypoints, "masks": mask_metrics}
        return report, predictions

    def evaluate(self, model: Path, role: str) -> dict:
        """Evaluate the pipeline of ``model`` (a folder); reports, plots and MLflow metrics (``eval_oks``, ...)."""
        from segzoo.tasks.pose_estimation.reports import mlflow_metrics, write_pose_report

        ctx = self.ctx
        files = self.files(model)
        split, dataset = self.keypoint_dataset()
        logger.info("Evaluating %s (%s) on %d images of %s", model, self.preset.name, len(dataset.images), dataset.source)
        report, predictions = self._evaluate_pair(files["detector"], files["landmark"])
        prefix = REPORT_PREFIX[role]
        paths = write_pose_report(report, ctx.run_dir, dataset=dataset, predictions=predictions, prefix=prefix)
        summary = _summary(report)
        logger.info("%s: mean per-person OKS %s, AP %.4f, PCK@0.2 %s, person-mask IoU %s (%s)", model.name,
                    _fmt(summary["mean_oks"]), summary["ap"], _fmt(summary["pck"]), _fmt(summary["mask_iou"]),
                    paths["md"])
        metrics = mlflow_metrics(report)
        metrics["eval_images_per_second"] = report["keypoints"].get("images_per_second")
        log_report(ctx.tracker, metrics, paths, prefix)
        return {"model": str(model), **summary, "split": split, "dataset": report["dataset"]}

    def validation_metric(self, model: Path) -> float:
        """Mean per-person OKS of a model folder on the evaluation images (no report written)."""
        files = self.files(model)
        return self._pair_metric(files["detector"], files["landmark"])

    def _pair_metric(self, detector: Path, landmark: Path) -> float:
        limit = self.ctx.cfg.quantization.mixed_precision.validation_images
        report, _ = self._evaluate_pair(detector, landmark, max_images=limit, masks=False)
        return float(report["keypoints"]["mean_oks"] or 0.0)

    def compare(self, float_eval: dict, quantized_eval: dict) -> dict:
        """Float vs int8 mean OKS, AP, PCK and mask IoU, with the drops in points, and per stage: the pipeline
        with only the detector int8, then only the landmark model int8 (which shows where the loss is)."""
        floats, ints = self.files(Path(float_eval["model"])), self.files(Path(quantized_eval["model"]))
        stages = [("float", "float", float_eval),
                  ("int8", "float", _summary(self._evaluate_pair(ints["detector"], floats["landmark"])[0])),
                  ("float", "int8", _summary(self._evaluate_pair(floats["detector"], ints["landmark"])[0])),
                  ("int8", "int8", quantized_eval)]
        keys = ("mean_oks", "ap", "pck", "mask_iou")
        f, q = ({k: e[k] for k in keys} for e in (float_eval, quantized_eval))
        drops = {f"{k}_drop_points": None if f[k] is None or q[k] is None else 100.0 * (f[k] - q[k]) for k in keys}
        per_stage = [{"detector": d, "landmark": lm, **{k: e[k] for k in keys}} for d, lm, e in stages]
        oks_ok = drops["mean_oks_drop_points"] <= 100 * OKS_TARGET
        mask_ok = None if drops["mask_iou_drop_points"] is None else drops["mask_iou_drop_points"] <= MASK_IOU_TARGET_POINTS
        table = {"title": "Float vs int8 per stage (mean per-person OKS, COCO AP, PCK@0.2, person-mask IoU; %)",
                 "columns": ["detector", "landmark model", "mean OKS", "AP", "PCK@0.2", "mask IoU"],
                 "rows": [[r["detector"], r["landmark"], *(_pct(r[k]) for k in keys)] for r in per_stage],
                 "note": f"Targets: mean OKS within {100 * OKS_TARGET:.0f} points of float: "
                         f"{'met' if oks_ok else 'not met'}; person-mask IoU within {MASK_IOU_TARGET_POINTS:.0f} "
                         f"points: {'n/a' if mask_ok is None else 'met' if mask_ok else 'not met'}."}
        return {"metric": self.metric, "metric_label": self.metric_label,
                "metric_labels": {"ap": "AP", "pck": "PCK@0.2", "mask_iou": "person-mask IoU"},
                "metric_drop_points": drops["mean_oks_drop_points"], "float": f, "quantized": q, **drops,
                "per_stage": per_stage, "tables": [table], "targets": {"oks": oks_ok, "mask_iou": mask_ok},
                "evaluated_on": quantized_eval.get("dataset")}

    # ---------------------------------------------------------------------------------------- quantization
    def calibration_batches(self) -> dict[str, tuple[np.ndarray, dict]]:
        """Each network's calibration inputs from the person photos of ``dataset.quantization_path`` (seeded pick
        of ``quantization.calibration_images``): letterboxed photos for the detector, the float pipeline's crops
        for the landmark model; with a description each."""
        if self._calibration is None:
            from segzoo.data.layouts import list_samples
            from segzoo.tasks.pose_estimation.calibration import calibration_inputs

            cfg = self.ctx.cfg
            ds, q = cfg.dataset, cfg.quantization
            if not ds.quantization_path:
                raise ConfigError("dataset.quantization_path: quantization needs calibration photos of people")
            samples = list_samples(ds.quantization_path, None, ds.quantization_files_path,
                                   role="dataset.quantization_path")
            if len(samples) > q.calibration_images:
                rng = np.random.default_rng(cfg.general.global_seed)
                samples = [samples[i] for i in sorted(rng.choice(len(samples), q.calibration_images, replace=False))]
            photos = [s.image_path for s in samples]
            files = self.files(self.ctx.model("model"))
            batches = calibration_inputs(self.pipeline(files["detector"], files["landmark"]), photos)
            folder = str(Path(ds.quantization_path))
            self._calibration = {
                "detector": (batches["detector"], {"source": f"person photos of {folder} (letterboxed)",
                                                   "images": len(batches["detector"]), "folder": folder}),
                "landmark": (batches["landmark"], {"source": f"float pipeline's crops of {len(photos)} person photos "
                                                             f"of {folder}", "images": len(batches["landmark"]),
                                                   "photos": len(photos), "folder": folder})}
        return self._calibration

    def calibration(self, input_hw: tuple[int, int], channels: int) -> tuple[np.ndarray, dict, list[str]]:
        """The calibration inputs of the network whose input is ``input_hw`` (detector or landmark model)."""
        preset = self.preset
        sizes = {"detector": preset.detector_input.size, "landmark": preset.landmark_input.size}
        roles = [role for role, size in sizes.items() if tuple(input_hw) == (size, size)]
        if len(roles) != 1 or channels != 3:
            raise ConfigError(f"{preset.name}: no single network takes a {input_hw[0]}x{input_hw[1]}x{channels} input "
                              f"(detector {sizes['detector']}, landmark model {sizes['landmark']}, RGB)")
        batch, info = self.calibration_batches()[roles[0]]
        return batch, dict(info), []

    def quantize(self, model: Path) -> QuantizationResult:
        """Both networks quantized (``quantization``: per-tensor by default), each on its own calibration inputs;
        the quantized model is the folder ``<export_dir>/<pipeline>_int8_<granularity>[_mixed]`` with both files
        under the preset's names."""
        from segzoo.quantization.quantize import combine_results, run_quantization

        cfg, preset = self.ctx.cfg, self.preset
        q = cfg.quantization
        floats = self.files(model)
        float_layers = _float_layers_by_network(q.mixed_precision.float_layers)
        staging = self.ctx.run_dir / q.export_dir / f".{preset.name}_int8_{q.granularity}.partial"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
        results = {}
        for role in ROLES:
            logger.info("Quantizing the %s of %s: %s", role, preset.name, floats[role])
            net_cfg = dataclasses.replace(cfg, quantization=dataclasses.replace(
                q, mixed_precision=dataclasses.replace(q.mixed_precision, float_layers=float_layers.get(role, []))))
            results[role] = run_quantization(net_cfg, floats[role], self.ctx.run_dir, calibration=self.calibration,
                                             metric_of=self._metric_with(role, floats),
                                             out_path=staging / floats[role].name)
        mixed = any(r.float_layers for r in results.values())
        folder = self.ctx.run_dir / q.export_dir / f"{preset.name}_int8_{q.granularity}{'_mixed' if mixed else ''}"
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
        for role, result in results.items():
            results[role] = dataclasses.replace(result, path=folder / result.path.name)
        return combine_results(folder, model, results)

    def _metric_with(self, role: str, floats: dict[str, Path]) -> Callable[[Path], float]:
        """``path -> mean OKS`` of the pipeline with ``path`` as network ``role`` and the other one float."""
        def metric(path: Path) -> float:
            files = {**floats, role: Path(path)}
            return self._pair_metric(files["detector"], files["landmark"])

        return metric

    # ---------------------------------------------------------------------------------------- benchmarking
    def benchmark_files(self, model: Path) -> list[tuple[Path, str]]:
        """Both networks of the model folder, named ``<folder>/<file stem>``."""
        return [(path, f"{model.name}/{path.stem}") for path in self.files(model).values()]

    # ------------------------------------------------------------------------------------------ prediction
    def predict(self, model: Path) -> dict:
        """Poses on every image of ``prediction.test_files_path``: skeleton overlays and keypoint JSON files."""
        from segzoo.tasks.pose_estimation.prediction import predict_poses

        cfg = self.ctx.cfg
        images = prediction_images(cfg)
        files = self.files(model)
        pipeline = self.pipeline(files["detector"], files["landmark"])
        out_dir = self.ctx.run_dir / "predictions"
        skipped: list[dict] = []
        try:
            rows = predict_poses(pipeline.estimate, images, out_dir, min_visibility=cfg.pose_estimation.min_visibility,
                                 mask_alpha=cfg.prediction.overlay_alpha, skipped=skipped)
        finally:
            self.ctx.record_skipped("predict", skipped)
        self.ctx.tracker.log_artifact(out_dir, "predictions")
        return {"images": len(rows), "poses": sum(r["poses"] for r in rows), "folder": str(out_dir),
                "skipped": len(skipped)}

    # ------------------------------------------------------------------------------------------ deployment
    def bundle(self, model: Path, out_dir: Path, nb_model: Path | None) -> Path:
        """The pose board application with both networks (and their NPU binaries when ST Edge AI Core is set)."""
        from segzoo.deployment.bundle import build_pose_bundle
        from segzoo.deployment.stedgeai import generate_nb_if_configured

        files = self.files(model)
        stedgeai = self.ctx.cfg.tools.stedgeai.path_to_stedgeai
        nb_models = {role: generate_nb_if_configured(stedgeai, path, out_dir / "stedgeai" / role)
                     for role, path in files.items()} if stedgeai else {}
        return build_pose_bundle(self.preset, files["detector"], files["landmark"], out_dir,
                                 nb_models={role: nb for role, nb in nb_models.items() if nb is not None})


def _summary(report: dict) -> dict:
    """The headline figures of a pipeline report (fractions; None where not measured)."""
    kp, masks = report["keypoints"], report.get("masks")
    return {"mean_oks": kp["mean_oks"], "ap": kp["coco"]["AP"], "ap50": kp["coco"]["AP50"], "ar": kp["coco"]["AR"],
            "pck": kp["pck"], "mask_iou": masks["iou"] if masks else None, "num_images": kp["num_images"],
            "num_persons": kp["num_persons"], "num_predictions": kp["num_predictions"]}


def _float_layers_by_network(names: list[str]) -> dict[str, list[str]]:
    """``quantization.mixed_precision.float_layers`` of a pipeline: ``<network>/<layer>`` entries by network."""
    out: dict[str, list[str]] = {}
    for name in names:
        role, _, layer = name.partition("/")
        if role not in ROLES or not layer:
            raise ConfigError(f"quantization.mixed_precision.float_layers: {name!r} must name its network, "
                              f"'detector/<layer>' or 'landmark/<layer>' (the quantization report lists both)")
        out.setdefault(role, []).append(layer)
    return out


def _copy_atomic(source: Path, target: Path) -> None:
    from segzoo.io import atomic_path

    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
