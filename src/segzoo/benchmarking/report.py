"""Comparison of several models on several targets: rows, JSON + Markdown table, two plots, MLflow metrics.

A *row* is one model on one target (``host`` or ``stm32mp2_estimate``), made by :func:`run_target` /
:func:`benchmark_models`. Its flat keys feed the table: ``model``, ``path``, ``target``, ``precision``, ``device``,
``runtime``, ``latency_ms``, ``latency_p90_ms`` (host only), ``peak_memory_bytes``, ``peak_memory_kind``,
``primary_unit``, ``npu_pct``/``gpu_pct``/``cpu_pct`` (estimate only), ``macs``, ``params``, ``size_bytes``,
``error`` (None, or why this target failed for this model; the other targets are still reported), ``details``
(the target's full result: latency statistics, or the per-op placement), ``board_loadable`` (False when
X-LINUX-AI's runtime cannot load the model, e.g. an unknown custom op; None when not known) and ``warnings``. Rows
of :func:`benchmark_models` also carry ``analysis`` (:func:`segzoo.benchmarking.analysis.analyze_model` without its
per-op and per-tensor lists).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from matplotlib.figure import Figure

from segzoo.benchmarking.analysis import analyze_model
from segzoo.benchmarking.estimate import TARGET as ESTIMATE_TARGET
from segzoo.benchmarking.estimate import board_support, estimate_stm32mp2
from segzoo.benchmarking.host import TARGET as HOST_TARGET
from segzoo.benchmarking.host import benchmark_host
from segzoo.errors import ConfigError, SegzooError
from segzoo.io import save_figure, write_json, write_text

log = logging.getLogger(__name__)

TARGETS: tuple[str, ...] = (HOST_TARGET, ESTIMATE_TARGET)
UNIT_COLORS = MappingProxyType({"NPU": "#2ca02c", "GPU": "#ff7f0e", "CPU": "#1f77b4"})
MAX_PLACEMENT_ROWS = 40


# -------------------------------------------------------------------------------------------------- rows
def new_row(path: Path, target: str, name: str | None, analysis: dict | None) -> dict:
    """A row with every table key empty (fill it for another target, e.g. a board measurement)."""
    analysis = analysis or {}
    return {"model": name or path.stem, "path": str(path), "target": target,
            "precision": analysis.get("precision"), "device": None, "runtime": None, "latency_ms": None,
            "latency_p90_ms": None, "peak_memory_bytes": None, "peak_memory_kind": None, "primary_unit": None,
            "npu_pct": None, "gpu_pct": None, "cpu_pct": None, "macs": analysis.get("macs"),
            "params": analysis.get("params"), "size_bytes": analysis.get("size_bytes"), "error": None,
            "details": None, "board_loadable": None, "warnings": []}


def _host_fields(result: dict) -> dict:
    return {"device": result["device"], "runtime": f"{result['runtime']}, {result['threads']} threads",
            "latency_ms": result["median_ms"], "latency_p90_ms": result["p90_ms"],
            "peak_memory_bytes": result["peak_rss_bytes"], "peak_memory_kind": "peak RSS of the benchmark process",
            "primary_unit": "host CPU", "size_bytes": result["size_bytes"]}


def _estimate_fields(result: dict) -> dict:
    return {"device": f"{result['board']} (estimate, NPU {result['npu_mhz']} MHz)",
            "runtime": "OpenVX rules (static estimate)", "latency_ms": result["latency_ms"],
            "peak_memory_bytes": result["peak_activation_bytes"],
            "peak_memory_kind": "activations (liveness estimate)", "primary_unit": result["primary_unit"],
            "npu_pct": result["npu_pct"], "gpu_pct": result["gpu_pct"], "cpu_pct": result["cpu_pct"],
            "precision": result["precision"], "macs": result["macs"], "size_bytes": result["size_bytes"]}


def run_target(path: str | Path, target: str, *, name: str | None = None, analysis: dict | None = None,
               runs: int = 50, warmup: int = 5, threads: int | None = None, npu_mhz: int = 800,
               rules_path: str | Path | None = None) -> dict:
    """One row: ``target`` run on ``path``; a user-caused failure (SegzooError) becomes the row's ``error``."""
    if target not in TARGETS:
        raise ConfigError(f"unknown benchmark target {target!r}; choose one of {', '.join(TARGETS)}")
    path = Path(path)
    row = new_row(path, target, name, analysis)
    try:
        if target == HOST_TARGET:
            result = benchmark_host(path, runs=runs, warmup=warmup, threads=threads)
            row.update(_host_fields(result))
        else:
            result = estimate_stm32mp2(path, npu_mhz=npu_mhz, rules_path=rules_path)
            row.update(_estimate_fields(result))
        row["details"] = result
    except SegzooError as exc:
        log.warning("%s on %s failed: %s", path.name, target, exc)
        row["error"] = str(exc)
    return row


def benchmark_models(paths: Sequence[str | Path], targets: Sequence[str] = TARGETS, *,
                     names: Sequence[str] | None = None, **options: Any) -> list[dict]:
    """Rows for every model x target; each model is analysed once (its analysis goes in every row's ``analysis``).

    ``options`` go to :func:`run_target` (``runs``, ``warmup``, ``threads``, ``npu_mhz``, ``rules_path``). A model
    whose analysis fails still gets one row per target, each with the error.
    """
    names = list(names) if names is not None else [None] * len(paths)
    rows = []
    for path, name in zip(paths, names, strict=True):
        try:
            analysis, error = analyze_model(path), None
        except SegzooError as exc:
            analysis, error = None, str(exc)
        support = _board_support(analysis, name or Path(path).stem)
        for target in targets:
            row = (run_target(path, target, name=name, analysis=analysis, **options) if error is None
                   else {**new_row(Path(path), target, name, None), "error": error})
            row["analysis"] = _analysis_summary(analysis)
            if support is not None:
                row["board_loadable"] = support["loadable"]
                row["warnings"] = [support["warning"]] if support["warning"] else []
            rows.append(row)
    return rows


def _board_support(analysis: dict | None, name: str) -> dict | None:
    """Whether the board can load an analysed ``.tflite`` (None for a Keras model or a failed analysis); a
    warning is logged when it cannot."""
    if analysis is None or analysis.get("format") != "tflite":
        return None
    support = board_support(analysis.get("custom_ops", []), model=name)
    if support["warning"]:
        log.warning("%s", support["warning"])
    return support


def frame_rows(rows: list[dict], groups: dict[str, list[str]]) -> list[dict]:
    """Per-frame rows of models made of several networks that each run once per frame.

    ``groups`` maps a model's label to the row names (``model``) of its networks; for each group of two or more
    and each target, one row sums the networks' latencies, MACs, parameters and sizes (estimate: unit shares
    weighted by each network's time; memory: the largest). The row fails when one of its networks failed; it is
    not loadable on the board when one of its networks is not (with that network's warnings).
    """
    out = []
    for label, names in groups.items():
        if len(names) < 2:
            continue
        for target in dict.fromkeys(r["target"] for r in rows if r["model"] in names):
            parts = [r for r in rows if r["model"] in names and r["target"] == target]
            networks = " + ".join(name.removeprefix(f"{label}/") for name in names)
            out.append(_sum_row(f"{label} per frame ({networks})", target, parts))
    return out


def _sum_row(name: str, target: str, parts: list[dict]) -> dict:
    row = {**new_row(Path(parts[0]["path"]).parent, target, name, None), "frame_of": [r["model"] for r in parts]}
    loadable = [r.get("board_loadable") for r in parts]  # the frame needs every network on the board
    row["board_loadable"] = False if False in loadable else (True if all(loadable) else None)
    row["warnings"] = [w for r in parts for w in r.get("warnings") or []]
    failed = [f"{r['model']}: {r['error']}" for r in parts if r["error"]]
    if failed or any(r["latency_ms"] is None for r in parts):
        row["error"] = "; ".join(failed) or "a network has no latency"
        return row
    total = sum(r["latency_ms"] for r in parts)

    def summed(key: str) -> float | None:
        values = [r[key] for r in parts]
        return None if any(v is None for v in values) else sum(values)

    row.update(device=parts[0]["device"], runtime=parts[0]["runtime"], latency_ms=total,
               precision=" + ".join(dict.fromkeys(str(r["precision"]) for r in parts)),
               macs=summed("macs"), params=summed("params"), size_bytes=summed("size_bytes"),
               peak_memory_bytes=max((r["peak_memory_bytes"] or 0) for r in parts) or None,
               peak_memory_kind=parts[0]["peak_memory_kind"], details={"networks": [r["model"] for r in parts]})
    if all(r["npu_pct"] is not None for r in parts):
        for unit in ("npu", "gpu", "cpu"):
            row[f"{unit}_pct"] = sum(r[f"{unit}_pct"] * r["latency_ms"] for r in parts) / total if total else 0.0
        row["primary_unit"] = max(("NPU", "GPU", "CPU"), key=lambda u: row[f"{u.lower()}_pct"])
    else:
        row["primary_unit"] = parts[0]["primary_unit"]
    return row


def _analysis_summary(analysis: dict | None) -> dict | None:
    """The analysis without its per-op and per-tensor lists (those are in the estimate's details)."""
    if analysis is None:
        return None
    return {k: v for k, v in analysis.items() if k not in ("ops", "tensors")}


# ---------------------------------------------------------------------------------------------- markdown
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _mb(value: float | None) -> str:
    return "—" if value is None else f"{value / 1e6:.1f} MB"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _latency(row: dict) -> str:
    if row["error"]:
        return f"**failed**: {_cell(row['error'])}"
    if row["latency_ms"] is None:
        return "—"
    p90 = f" (p90 {row['latency_p90_ms']:.2f})" if row["latency_p90_ms"] is not None else " (estimate)"
    flag = " ⚠ **not loadable on the board**" if row.get("board_loadable") is False else ""
    return f"{row['latency_ms']:.2f} ms{p90}{flag}"


def _macs(value: int | None) -> str:
    return "—" if value is None else f"{value / 1e9:.3f} G"


def table_markdown(rows: list[dict]) -> list[str]:
    """The comparison table, one line per row."""
    lines = ["| Model | Precision | Device / target | Runtime | Inference time (median, p90) | Peak memory | "
             "Primary compute unit | %NPU | %GPU | %CPU | MACs | Size |",
             "|---|---|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        memory = f"{_mb(r['peak_memory_bytes'])} ({r['peak_memory_kind']})" if r["peak_memory_bytes"] else "—"
        lines.append("| " + " | ".join([
            _cell(r["model"]), _cell(r["precision"] or "—"), _cell(r["device"] or r["target"]),
            _cell(r["runtime"] or "—"), _latency(r), memory, _cell(r["primary_unit"] or "—"), _pct(r["npu_pct"]),
            _pct(r["gpu_pct"]), _pct(r["cpu_pct"]), _macs(r["macs"]), _mb(r["size_bytes"]),
        ]) + " |")
    return lines


def _placement_markdown(row: dict) -> list[str]:
    """Op types per unit and the ops that do not run on the NPU (capped) for one estimate row."""
    details = row["details"]
    lines = [f"### {row['model']}: {details['latency_ms']:.1f} ms estimated, "
             f"{details['switches']} unit switches ({details['transfer_ms']:.2f} ms of transfers)", ""]
    shares = details["shares"]
    lines += ["| share | NPU | GPU | CPU |", "|---|---:|---:|---:|"]
    for basis in ("ops", "macs", "time"):
        lines.append(f"| by {basis} | " + " | ".join(f"{100 * shares[basis][u]:.1f}%" for u in ("NPU", "GPU", "CPU"))
                     + " |")
    lines.append("")
    for unit, types in details["op_types_by_unit"].items():
        if types:
            lines.append(f"- {unit}: " + ", ".join(f"{name} x{count}" for name, count in sorted(types.items())))
    off_npu = [op for op in details["ops"] if op["unit"] != "NPU"]
    if off_npu:
        lines += ["", "| op | type | unit | why | time (ms) |", "|---:|---|---|---|---:|"]
        lines += [f"| {op['index']} | {op['name']} | {op['unit']} | {_cell(op['reason'])} | {op['time_ms']:.3f} |"
                  for op in off_npu[:MAX_PLACEMENT_ROWS]]
        if len(off_npu) > MAX_PLACEMENT_ROWS:
            lines.append(f"\n({len(off_npu) - MAX_PLACEMENT_ROWS} more ops off the NPU in benchmark_report.json)")
    return lines + [""]


def report_markdown(rows: list[dict]) -> str:
    """The whole Markdown report: table, failures, placement per estimated model."""
    lines = ["# Benchmark report", "", *table_markdown(rows), "",
             "Host rows: median and p90 of the timed runs in a fresh process per model; peak memory is that "
             "process's peak RSS. Estimate rows: static STM32MP257 estimate (segzoo.benchmarking.estimate, rules "
             "and sources in stm32mp2.json); %NPU/%GPU/%CPU are shares of the estimated time.", ""]
    warned = list(dict.fromkeys(w for r in rows for w in r.get("warnings") or []))
    if warned:
        lines += ["## Warnings", ""] + [f"- ⚠ {_cell(w)}" for w in warned] + [""]
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["## Failures", ""] + [f"- {r['model']} / {r['target']}: {_cell(r['error'])}" for r in failed] + [""]
    if any(r.get("frame_of") for r in rows):
        lines += ["Per-frame rows add up the networks of a model that each run once per frame (the models alone, "
                  "without the pre- and post-processing between them; peak memory: the largest of them).", ""]
    estimates = [r for r in rows if r["target"] == ESTIMATE_TARGET and not r["error"] and not r.get("frame_of")]
    if estimates:
        lines += ["## STM32MP257 placement", ""]
        for row in estimates:
            lines += _placement_markdown(row)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- plots
def _label(row: dict) -> str:
    return f"{row['model']} · {row['target']}"


def _width(labels: list[str]) -> float:
    """Figure width (inches) that leaves the bars room beside the longest y-axis label."""
    return max(8.0, 6.0 + 0.075 * max((len(label) for label in labels), default=0))


def latency_figure(rows: list[dict]) -> Figure:
    """Horizontal bars of the latency per row (host: median with a whisker to p90)."""
    ok = [r for r in rows if not r["error"] and r["latency_ms"] is not None]
    fig = Figure(figsize=(_width([_label(r) for r in ok]), max(2.5, 0.45 * len(ok) + 1.2)), dpi=100,
                 layout="constrained")
    ax = fig.add_subplot()
    if not ok:
        ax.text(0.5, 0.5, "no latency measured", ha="center", va="center")
        ax.set_axis_off()
        return fig
    values = [r["latency_ms"] for r in ok]
    colors = ["#7f7f7f" if r["target"] == HOST_TARGET else UNIT_COLORS.get(r["primary_unit"], "#9467bd") for r in ok]
    ax.barh(range(len(ok)), values, color=colors)
    spread = [(i, r) for i, r in enumerate(ok) if r["latency_p90_ms"] is not None]
    if spread:
        ax.errorbar([r["latency_ms"] for _, r in spread], [i for i, _ in spread], fmt="none", ecolor="black",
                    capsize=3, xerr=[[0.0] * len(spread),
                                     [max(0.0, r["latency_p90_ms"] - r["latency_ms"]) for _, r in spread]])
    ax.set_yticks(range(len(ok)), [_label(r) for r in ok])
    ax.invert_yaxis()
    if max(values) / max(min(values), 1e-9) > 50:
        ax.set_xscale("log")
    ax.set_xlabel("inference time (ms)\nhost (grey): median, whisker to p90; estimate: colour of its primary unit")
    ax.set_title("Inference time per model and target")
    return fig


def placement_figure(rows: list[dict]) -> Figure:
    """Stacked bars of the NPU/GPU/CPU time shares of the estimate rows."""
    ok = [r for r in rows if not r["error"] and r["npu_pct"] is not None]
    fig = Figure(figsize=(_width([r["model"] for r in ok]) + 1.0, max(2.5, 0.45 * len(ok) + 1.2)), dpi=100,
                 layout="constrained")
    ax = fig.add_subplot()
    if not ok:
        ax.text(0.5, 0.5, "no STM32MP2 estimate", ha="center", va="center")
        ax.set_axis_off()
        return fig
    left = [0.0] * len(ok)
    for unit in ("NPU", "GPU", "CPU"):
        values = [r[f"{unit.lower()}_pct"] for r in ok]
        ax.barh(range(len(ok)), values, left=left, color=UNIT_COLORS[unit], label=unit)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_yticks(range(len(ok)), [r["model"] for r in ok])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of the estimated time (%)")
    ax.set_title("STM32MP257 placement (estimate)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


# ---------------------------------------------------------------------------------------------- outputs
def write_benchmark_report(rows: list[dict], out_dir: str | Path) -> dict[str, Path]:
    """Write ``benchmark_report.json``/``.md``, ``benchmark_latency.png`` and ``benchmark_placement.png``."""
    out_dir = Path(out_dir)
    return {
        "json": write_json(out_dir / "benchmark_report.json", {"rows": rows, "metrics": benchmark_metrics(rows)}),
        "md": write_text(out_dir / "benchmark_report.md", report_markdown(rows)),
        "latency_plot": save_figure(latency_figure(rows), out_dir / "benchmark_latency.png"),
        "placement_plot": save_figure(placement_figure(rows), out_dir / "benchmark_placement.png"),
    }


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-.]", "_", text)


def benchmark_metrics(rows: list[dict]) -> dict[str, float]:
    """Flat MLflow metrics: ``{model}.{target}.{latency_ms, latency_p90_ms, peak_memory_mb, npu_pct, ...}``."""
    metrics: dict[str, float] = {"benchmark_failed_targets": float(sum(bool(r["error"]) for r in rows))}
    for r in rows:
        if r["error"]:
            continue
        prefix = f"{_metric_name(r['model'])}.{r['target']}"
        values = {"latency_ms": r["latency_ms"], "latency_p90_ms": r["latency_p90_ms"],
                  "peak_memory_mb": None if r["peak_memory_bytes"] is None else r["peak_memory_bytes"] / 1e6,
                  "npu_pct": r["npu_pct"], "gpu_pct": r["gpu_pct"], "cpu_pct": r["cpu_pct"]}
        metrics.update({f"{prefix}.{k}": float(v) for k, v in values.items()
                        if v is not None and math.isfinite(float(v))})
    return metrics
