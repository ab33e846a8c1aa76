"""Pose evaluation reports: JSON (fractions), Markdown (percentages), per-keypoint error bars and keypoint
overlays (ground truth and prediction), written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from segzoo.data.loader import read_image
from segzoo.io import save_figure, write_json, write_text, write_with
from segzoo.tasks.pose_estimation.evaluation import COCO_STATS, ImagePrediction, KeypointDataset
from segzoo.tasks.pose_estimation.keypoints import COCO_SKELETON
from segzoo.tasks.pose_estimation.prediction import draw_skeleton

TRUTH_COLOR, PREDICTION_COLOR = (40, 200, 40), (230, 40, 40)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def report_markdown(report: dict) -> str:
    """Markdown summary: COCO AP/AR, mean per-person OKS, PCK, per-keypoint table, mask IoU."""
    kp, masks = report.get("keypoints"), report.get("masks")
    lines = ["# Pose evaluation report", "", f"- Pipeline: `{report['pipeline']}`"]
    for key, value in report.get("models", {}).items():
        lines.append(f"- {key}: `{value}`")
    if kp:
        lines += [f"- Keypoints: {kp['num_images']} images, {kp['num_persons']} persons, "
                  f"{kp['num_predictions']} predicted poses ({report.get('dataset', {}).get('keypoints', 'n/a')})",
                  f"- **Mean per-person OKS: {kp['mean_oks']:.4f}**" if kp["mean_oks"] is not None else
                  "- Mean per-person OKS: n/a",
                  f"- PCK@{kp['ratio']} (torso): {_percent(kp['pck'])} %"
                  f" ({kp['persons_without_torso']} persons without a torso left out)", "",
                  "| " + " | ".join(COCO_STATS) + " |", "|" + "---:|" * len(COCO_STATS),
                  "| " + " | ".join(f"{100 * kp['coco'][k]:.2f}" for k in COCO_STATS) + " |", "",
                  "| keypoint | PCK (%) | mean error (torso) | labelled |", "|---|---:|---:|---:|"]
        for name, row in kp["per_keypoint"].items():
            error = "n/a" if row["mean_error"] is None else f"{row['mean_error']:.3f} ± {row['std_error']:.3f}"
            lines.append(f"| {name} | {_percent(row['pck'])} | {error} | {row['labelled']} |")
        lines.append("")
    if masks:
        lines += [f"- **Person-mask IoU: {_percent(masks['iou'])} %** over {masks['num_images']} images "
                  f"(mean per image {_percent(masks['mean_image_iou'])} %)", ""]
    return "\n".join(lines)


def keypoint_error_figure(per_keypoint: dict) -> Figure:
    """Mean torso-normalized error per COCO keypoint with its standard deviation as error bars."""
    names = list(per_keypoint)
    means = [per_keypoint[n]["mean_error"] or 0.0 for n in names]
    stds = [per_keypoint[n]["std_error"] or 0.0 for n in names]
    fig = Figure(figsize=(8.0, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(names)), means, yerr=stds, color="tab:blue", capsize=3)
    ax.axhline(0.2, color="tab:red", linestyle="--", label="PCK@0.2 threshold")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("error / torso diameter")
    ax.set_title("Per-keypoint error of matched persons")
    ax.legend(fontsize=8)
    return fig


def keypoint_overlay(dataset: KeypointDataset, image_id: int, prediction: ImagePrediction) -> np.ndarray:
    """An image with its labelled ground truth (green) and predicted COCO keypoints (red)."""
    image = next(im for im in dataset.images if im.id == image_id)
    canvas = np.ascontiguousarray(read_image(image.path))
    for person in image.persons:
        draw_skeleton(canvas, person.keypoints, COCO_SKELETON, TRUTH_COLOR, person.labelled)
    for keypoints in prediction.keypoints:
        draw_skeleton(canvas, keypoints, COCO_SKELETON, PREDICTION_COLOR)
    return canvas


def write_pose_report(report: dict, out_dir: str | Path, *, dataset: KeypointDataset | None = None,
                      predictions: dict[int, ImagePrediction] | None = None, prefix: str = "",
                      max_overlays: int = 20) -> dict[str, Path]:
    """``{prefix}pose_evaluation_report.json/.md``, ``{prefix}keypoint_errors.png`` and
    ``{prefix}keypoint_overlays/<image>.png`` (when the dataset and predictions are given)."""
    out_dir = Path(out_dir)
    files = {"json": write_json(out_dir / f"{prefix}pose_evaluation_report.json", report),
             "md": write_text(out_dir / f"{prefix}pose_evaluation_report.md", report_markdown(report))}
    if report.get("keypoints"):
        files["keypoint_errors"] = save_figure(keypoint_error_figure(report["keypoints"]["per_keypoint"]),
                                               out_dir / f"{prefix}keypoint_errors.png")
    if dataset is not None and predictions:
        for image_id in list(predictions)[:max_overlays]:
            overlay = Image.fromarray(keypoint_overlay(dataset, image_id, predictions[image_id]))
            name = next(im.path.stem for im in dataset.images if im.id == image_id)
            files[f"overlay_{name}"] = write_with(out_dir / f"{prefix}keypoint_overlays" / f"{name}.png",
                                                  lambda tmp, im=overlay: im.save(tmp, format="PNG"))
    return files


def mlflow_metrics(report: dict, prefix: str = "eval_") -> dict[str, float]:
    """Flat metric names for MLflow (``eval_oks``, ``eval_ap``, ``eval_pck``, ``eval_mask_iou``, ...)."""
    out: dict[str, float] = {}
    kp, masks = report.get("keypoints"), report.get("masks")
    if kp:
        if kp["mean_oks"] is not None:
            out[f"{prefix}oks"] = kp["mean_oks"]
        if kp["pck"] is not None:
            out[f"{prefix}pck"] = kp["pck"]
        out.update({f"{prefix}{k.lower()}": v for k, v in kp["coco"].items()})
    if masks and masks["iou"] is not None:
        out[f"{prefix}mask_iou"] = masks["iou"]
    return out
