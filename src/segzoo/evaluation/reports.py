"""Evaluation reports: JSON (fractions in [0, 1]), Markdown (percentages) and two plots, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from segzoo.io import save_figure, write_json, write_text

if TYPE_CHECKING:
    from segzoo.evaluation.evaluate import EvaluationResult


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def report_dict(result: EvaluationResult, *, model_path: str | Path, dataset: dict, class_names: list[str]) -> dict:
    """The content of ``evaluation_report.json``."""
    m = result.metrics
    return {
        "miou": m["miou"],
        "pixel_accuracy": m["pixel_accuracy"],
        "mean_accuracy": m["mean_accuracy"],
        "fwiou": m["fwiou"],
        "per_class_iou": m["per_class_iou"],
        "per_class_accuracy": m["per_class_accuracy"],
        "per_class_pixels": m["per_class_pixels"],
        "confusion_matrix": result.confusion.tolist(),
        "class_names": list(class_names),
        "num_images": result.num_images,
        "num_pixels": m["num_pixels"],
        "seconds": result.seconds,
        "images_per_second": result.images_per_second,
        "resolution": result.resolution,
        "model": {**result.model, "path": str(model_path)},
        "dataset": dataset,
        "skipped": list(result.skipped),
    }


def report_markdown(report: dict) -> str:
    """A Markdown summary: headline metrics and a per-class table (percentages, 2 decimals)."""
    model = report["model"]
    lines = [
        "# Evaluation report",
        "",
        f"- Model: `{model['path']}` ({model.get('output_kind', 'unknown')} output)",
        f"- Dataset: {', '.join(f'{k}: {v}' for k, v in report['dataset'].items()) or 'n/a'}",
        f"- Images: {report['num_images']} ({report['images_per_second']:.2f} images/s), "
        f"compared at {report['resolution']} resolution",
        f"- **mIoU: {_percent(report['miou'])} %**",
        f"- Pixel accuracy: {_percent(report['pixel_accuracy'])} %",
        f"- Mean accuracy: {_percent(report['mean_accuracy'])} %",
        f"- Frequency-weighted IoU: {_percent(report['fwiou'])} %",
        "",
        "| class | IoU (%) | accuracy (%) | pixels |",
        "|---|---:|---:|---:|",
    ]
    for name in report["class_names"]:
        lines.append(f"| {name} | {_percent(report['per_class_iou'][name])} | "
                     f"{_percent(report['per_class_accuracy'][name])} | {report['per_class_pixels'][name]} |")
    lines += ["", "n/a: the class is absent from both the masks and the predictions (IoU) or from the masks "
              "(accuracy); such classes are left out of the means.", ""]
    lines += skipped_markdown(report.get("skipped", []))
    return "\n".join(lines)


def skipped_markdown(skipped: list[dict]) -> list[str]:
    """A "Skipped" section listing each item left out and why (nothing when none was)."""
    if not skipped:
        return []
    lines = [f"## Skipped ({len(skipped)}, dataset.on_bad_sample: skip)", "", "| file | reason |", "|---|---|"]
    for entry in skipped:
        reason = str(entry["reason"]).replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{entry['item']}` | {reason} |")
    return lines + [""]


def confusion_figure(cm: np.ndarray, class_names: list[str]) -> Figure:
    """Row-normalized confusion matrix (each truth row sums to 1), annotated when small enough to read."""
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    n = len(class_names)
    side = max(5.0, 0.45 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix (row-normalized)")
    if n <= 30:
        for (i, j), value in np.ndenumerate(norm):
            if value >= 0.005:
                ax.text(j, i, f"{100 * value:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if value > 0.5 else "black")
    return fig


def iou_figure(per_class_iou: dict[str, float | None], miou: float | None) -> Figure:
    """Horizontal bars of per-class IoU with values and the mIoU as a vertical line."""
    names = list(per_class_iou)
    values = [per_class_iou[name] for name in names]
    fig = Figure(figsize=(7.5, max(3.0, 0.32 * len(names) + 1.2)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, [0.0 if v is None else v for v in values], color="tab:blue")
    for yi, v in zip(y, values):
        label = "n/a" if v is None else f"{100 * v:.1f}"
        ax.text((v or 0.0) + 0.01, yi, label, va="center", fontsize=8)
    if miou is not None:
        ax.axvline(miou, color="tab:red", linestyle="--", label=f"mIoU {100 * miou:.2f} %")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, 1.1)
    ax.set_xlabel("IoU")
    ax.set_title("Per-class IoU")
    return fig


def write_evaluation_report(result: EvaluationResult, out_dir: Path, *, model_path: str | Path, dataset: dict,
                            class_names: list[str], prefix: str = "") -> dict[str, Path]:
    """Write ``{prefix}evaluation_report.json/.md``, ``{prefix}confusion_matrix.png`` and ``{prefix}per_class_iou.png``."""
    out_dir = Path(out_dir)
    report = report_dict(result, model_path=model_path, dataset=dataset, class_names=class_names)
    return {
        "json": write_json(out_dir / f"{prefix}evaluation_report.json", report),
        "md": write_text(out_dir / f"{prefix}evaluation_report.md", report_markdown(report)),
        "confusion_matrix": save_figure(confusion_figure(result.confusion, class_names),
                                  out_dir / f"{prefix}confusion_matrix.png"),
        "per_class_iou": save_figure(iou_figure(result.metrics["per_class_iou"], result.metrics["miou"]),
                               out_dir / f"{prefix}per_class_iou.png"),
    }
