"""The promptable-segmentation report: JSON (IoUs as fractions in [0, 1]) and Markdown (percentages), atomic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segzoo.io import write_json, write_text


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def report_dict(result: dict, *, model: dict[str, Any], dataset: dict[str, Any],
                class_names: dict[int, str] | None = None) -> dict:
    """The content of ``promptable_evaluation_report.json``: the :func:`~.evaluate.evaluate_clicks` result with
    the model and dataset it describes and class names on the per-class rows."""
    names = class_names or {}
    per_class = {key: {**row, "name": names.get(int(key), key)} for key, row in result["per_class"].items()}
    return {**result, "per_class": per_class, "model": dict(model), "dataset": dict(dataset)}


def report_markdown(report: dict) -> str:
    """Headline mIoU after each click, the protocol, and a per-class table."""
    clicks = report["num_clicks"]
    lines = [
        "# Promptable segmentation report",
        "",
        f"- Model: {', '.join(f'{k}: `{v}`' for k, v in report['model'].items()) or 'n/a'}",
        f"- Dataset: {', '.join(f'{k}: {v}' for k, v in report['dataset'].items()) or 'n/a'}",
        f"- Instances: {report['num_instances']} on {report['num_images']} images "
        f"({report['skipped_small']} smaller than {report['min_area']} pixels skipped), {report['seconds']:.1f} s",
        f"- **One-click mIoU: {_percent(report['one_click_miou'])} %**",
        *(f"- mIoU after {k + 1} clicks: {_percent(v)} %" for k, v in enumerate(report["miou_at"]) if k),
        *_timing_lines(report.get("timings") or {}),
        f"- Protocol: first click at the instance's interior point farthest from its boundary, further clicks at "
        f"the centre of the largest error region (positive on a miss, negative on a false alarm); mask = logits > "
        f"{report['threshold']:g}.",
        "",
        "| class | instances | " + " | ".join(f"mIoU@{k + 1} (%)" for k in range(clicks)) + " |",
        "|---|---:|" + "---:|" * clicks,
    ]
    for row in report["per_class"].values():
        lines.append(f"| {row['name']} | {row['instances']} | "
                     + " | ".join(_percent(v) for v in row["miou_at"]) + " |")
    return "\n".join(lines) + "\n"


def _timing_lines(timings: dict) -> list[str]:
    """Per-stage times (median ms per call), when the evaluation measured them."""
    stages = [(stage, timings[f"{stage}_median_ms"], timings[f"{stage}_calls"]) for stage in ("encoder", "decoder")
              if f"{stage}_median_ms" in timings]
    if not stages:
        return []
    return ["- Times (median per call): " + ", ".join(f"{stage} {ms:.1f} ms ({calls} calls)"
                                                      for stage, ms, calls in stages)]


def write_report(result: dict, out_dir: str | Path, *, model: dict[str, Any], dataset: dict[str, Any],
                 class_names: dict[int, str] | None = None, prefix: str = "") -> dict[str, Path]:
    """Write ``{prefix}promptable_evaluation_report.json`` and ``.md`` into ``out_dir``; their paths."""
    out_dir = Path(out_dir)
    report = report_dict(result, model=model, dataset=dataset, class_names=class_names)
    return {"json": write_json(out_dir / f"{prefix}promptable_evaluation_report.json", report),
            "md": write_text(out_dir / f"{prefix}promptable_evaluation_report.md", report_markdown(report))}
