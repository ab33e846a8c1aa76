"""The float-vs-quantized comparison: quantization_report.json and quantization_report.md."""

from __future__ import annotations

from pathlib import Path

from segzoo.io import write_json, write_text
from segzoo.quantization.quantize import QuantizationResult

WORST_LAYERS = 10


def build_report(result: QuantizationResult, accuracy: dict) -> dict:
    """The report's data: the task's accuracy comparison (``Task.compare``) and what the quantized model is made of
    (for a model made of several networks, ``networks``: one section each)."""
    inspection = result.inspection
    return {
        **accuracy,
        "float": {"model": str(result.float_model), "size_bytes": _float_size(result), **accuracy["float"]},
        "quantized": {"model": str(result.path), "size_bytes": inspection["size_bytes"], **accuracy["quantized"]},
        "granularity": result.granularity,
        "input_type": result.input_type,
        "output_type": result.output_type,
        "int8_compute_share": inspection["int8_compute_share"],
        "has_per_channel": inspection["has_per_channel"],
        "per_channel_tensors": len(inspection["per_channel_tensors"]),
        "float_ops": inspection["float_ops"],
        "float_layers": result.float_layers,
        "npu_ready": not inspection["has_per_channel"] and not inspection["float_ops"],
        "stm32mp2_estimate": result.stm32mp2,
        "op_histogram": inspection["op_histogram"],
        "worst_layers": result.layer_errors[:WORST_LAYERS],
        "formatting": result.formatting,
        "refinements": result.refinements,
        "calibration": result.calibration,
        "mixed_precision_trace": result.mixed_precision_trace,
        "warnings": result.warnings,
        "seconds": result.seconds,
        "networks": result.networks,
        "timings": result.timings,
    }


def _float_size(result: QuantizationResult) -> int:
    """Bytes of the float model: its networks' files (a model folder may hold other files, e.g. a SOURCE.md)."""
    if result.networks:
        return sum(n["float_size_bytes"] for n in result.networks)
    return _size(result.float_model)


def _size(path: Path) -> int:
    """Bytes of a model file, or of every file of a model folder (not counting the sha256 sidecars)."""
    from segzoo.io import SIDECAR_SUFFIX

    path = Path(path)
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.suffix != SIDECAR_SUFFIX)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def to_markdown(report: dict) -> str:
    """A readable summary of the report."""
    networks = report.get("networks") or []
    lines = ["# Quantization report", ""]
    lines += [f"> **Warning:** {w}" for w in report["warnings"]] + ([""] if report["warnings"] else [])
    lines += [
        f"- Granularity: **{report['granularity']}**, input {report['input_type']}, output {report['output_type']}",
        f"- NPU-ready (8-bit per-tensor, no float op): **{'yes' if report['npu_ready'] else 'no'}**; "
        f"int8 share of compute ops {100 * report['int8_compute_share']:.1f}%, "
        f"per-channel tensors {report['per_channel_tensors']}",
        *_placement_lines(report.get("stm32mp2_estimate"), "per frame, every network once" if networks else ""),
        *([] if networks else [_calibration_line(report["calibration"])]),
        f"- Float layers: {', '.join(report['float_layers']) or 'none'}",
        *([] if networks else [f"- Formatting: {_formatting(report['formatting'])}",
                               *_refinement_lines(report.get("refinements") or {})]),
        *_timing_lines(report.get("timings") or {}),
        "",
        *_accuracy_lines(report),
    ]
    if "per_class_iou" in report:
        lines += ["", "## Per-class IoU (%)", "", "| class | float | quantized |", "|---|---:|---:|"]
        lines += [f"| {name} | {_pct(v['float'])} | {_pct(v['quantized'])} |"
                  for name, v in report["per_class_iou"].items()]
    for table in report.get("tables") or []:
        lines += _table_lines(table)
    for network in networks:
        lines += _network_lines(network)
    lines += ["", "## Layers with the largest quantization error", "",
              "RMSE / scale near 0.29 is pure rounding; much larger means the layer quantizes badly. Any name here "
              "can go into `quantization.mixed_precision.float_layers`.", "",
              "| layer | op | RMSE / scale | range |", "|---|---|---:|---|"]
    lines += [f"| `{_layer_name(r)}` | {r.get('op', '')} | {r['rmse_per_scale']:.3f} | "
              f"[{r['range'][0]:.3g}, {r['range'][1]:.3g}] |" for r in report["worst_layers"]]
    if report["mixed_precision_trace"]:
        label = report.get("metric_label", "mIoU")
        lines += ["", "## Mixed-precision search", "", f"| network | float layers | {label} (%) | drop (points) |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {t.get('network', '')} | {len(t['float_layers'])} | {_pct(t['miou'])} | {100 * t['drop']:.2f} |"
                  for t in report["mixed_precision_trace"]]
    return "\n".join(lines) + "\n"


METRIC_LABELS = {"miou": "mIoU", "pixel_accuracy": "pixel accuracy"}


def _accuracy_lines(report: dict) -> list[str]:
    """Both models with every accuracy figure the task compared, then the drop of its main metric."""
    f, q = report["float"], report["quantized"]
    keys = [k for k in f if k not in ("model", "size_bytes") and (f[k] is None or isinstance(f[k], (int, float)))]
    labels = {**METRIC_LABELS, **report.get("metric_labels", {}), report["metric"]: report["metric_label"]}
    lines = ["| model | file | size (KiB) | " + " | ".join(f"{labels.get(k, k)} (%)" for k in keys) + " |",
             "|---|---|---:|" + "---:|" * len(keys)]
    lines += [f"| {role} | `{Path(m['model']).name}` | {m['size_bytes'] / 1024:.0f} | "
              + " | ".join(_pct(m.get(k)) for k in keys) + " |" for role, m in (("float", f), ("quantized", q))]
    extra = (f" (pixel accuracy drop {report['pixel_accuracy_drop_points']:.2f} points)"
             if "pixel_accuracy_drop_points" in report else "")
    return [*lines, "", f"**{report['metric_label']} drop: {report['metric_drop_points']:.2f} points**{extra}"]


def _table_lines(table: dict) -> list[str]:
    """A comparison table of the task (``Task.compare``'s ``tables``: title, columns, rows of text, a note)."""
    lines = ["", f"## {table['title']}", "", "| " + " | ".join(table["columns"]) + " |",
             "|---|" + "---:|" * (len(table["columns"]) - 1)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table["rows"]]
    return lines + (["", table["note"]] if table.get("note") else [])


def _network_lines(network: dict) -> list[str]:
    """One network of a multi-network model: its file, op set, per-tensor check, STM32MP2 placement, calibration,
    formatting and post-training steps, worst layers."""
    estimate = network.get("stm32mp2_estimate")
    formatting = network.get("formatting")
    lines = ["", f"## {network['name']}: `{Path(network['model']).name}`", "",
             f"- Float model `{Path(network['float_model']).name}` {network['float_size_bytes'] / 1024:.0f} KiB -> "
             f"int8 {network['size_bytes'] / 1024:.0f} KiB ({network['seconds']:.0f} s)",
             f"- Per-tensor: **{'yes' if not network['has_per_channel'] else 'no'}** "
             f"({len(network['per_channel_tensors'])} per-channel tensors); int8 share of compute ops "
             f"{100 * network['int8_compute_share']:.1f}%; float ops: "
             f"{', '.join(network['float_op_types']) or 'none'}",
             *([_calibration_line(network["calibration"])] if network.get("calibration") else []),
             f"- Formatting: {formatting if isinstance(formatting, str) else _formatting(formatting)}",
             *_refinement_lines(network.get("refinements") or {}),
             "- Ops: " + ", ".join(f"{op} x{n}" for op, n in sorted(network["op_histogram"].items(),
                                                                   key=lambda kv: (-kv[1], kv[0])))]
    if estimate:
        lines += [f"- STM32MP2 estimate: {estimate['npu_pct']:.1f}% NPU, {estimate['gpu_pct']:.1f}% GPU, "
                  f"{estimate['cpu_pct']:.1f}% CPU (time shares), about {estimate['latency_ms']:.1f} ms; "
                  f"{estimate['ops_off_npu']} of {estimate['ops']} ops off the NPU", "",
                  "| op off the NPU | count | unit | estimated ms | why |", "|---|---:|---|---:|---|"]
        lines += [f"| {row['op']} | {row['count']} | {row['unit']} | {row['time_ms']:.2f} | {row['reason']} |"
                  for row in estimate["off_npu"]]
    if network.get("layer_errors_skipped"):
        lines += ["", f"Worst layers of the {network['name']}: {network['layer_errors_skipped']}"]
    if network.get("worst_layers"):
        lines += ["", f"Worst layers of the {network['name']} ({network['layer_error_samples']} samples):", "",
                  "| layer | op | RMSE / scale |", "|---|---|---:|"]
        lines += [f"| `{network['name']}/{_layer_name(r)}` | {r.get('op', '')} | {r['rmse_per_scale']:.3f} |"
                  for r in network["worst_layers"][:5]]
    return lines


def _calibration_line(calibration: dict) -> str:
    return f"- Calibration: {calibration.get('images')} images from the {calibration.get('source')}"


def _placement_lines(estimate: dict | None, scope: str = "") -> list[str]:
    if not estimate:
        return []
    off = ", ".join(f"{name} x{count}" for name, count in estimate["ops_off_npu"].items()) or "none"
    scope = f" ({scope})" if scope else ""
    return [f"- STM32MP2 estimate{scope}: {estimate['npu_pct']:.1f}% NPU, {estimate['gpu_pct']:.1f}% GPU, "
            f"{estimate['cpu_pct']:.1f}% CPU (time shares), about {estimate['latency_ms']:.1f} ms; ops off the NPU: "
            f"{off}"]


def _layer_name(row: dict) -> str:
    """The Keras layer an op comes from (the one that is not a fused activation or padding), else the tensor."""
    layers = row.get("layers") or [row["tensor"]]
    main = [name for name in layers if not name.endswith(("_relu", "_pad", "_bn"))]
    return (main or layers)[0]


def _formatting(formatting: dict | None) -> str:
    if not formatting:
        return "off (quantization.optimize: false)"
    dead = formatting.get("dead_channels")
    dead_text = ("constant channels not folded (quantization.dead_channels: off)" if not dead else
                 f"{dead['weight_dead']} constant channels (zero weights) folded exactly, "
                 f"{dead['calibration_dead']} channels dead on the calibration images folded, {dead['left']} left "
                 f"(a non-zero constant would meet zero padding)"
                 + (f", {dead['dead_inputs']} weight input channels reading a ReLU channel dead on the calibration "
                    f"images zeroed" if dead.get("dead_inputs") else ""))
    exact = ("the float model is unchanged for every input" if formatting.get("exact", True) else
             "the float model is unchanged on the calibration images, statistically elsewhere")
    return (f"{formatting.get('bn_folded', 0)} batch norms folded, {dead_text}, {formatting.get('cle_pairs', 0)} "
            f"layer pairs equalized in {formatting.get('cle_sweeps', 0)} sweeps, "
            f"{formatting.get('channel_relus', 0)} ReLU6 turned into per-channel caps"
            f"{' (raised at most x%g)' % formatting['cap_growth'] if formatting.get('channel_relus') else ''}, "
            f"{formatting.get('relu6_headroom_pairs', 0)} pairs equalized across a ReLU6 within the calibration "
            f"headroom, {formatting.get('residual_streams', 0)} residual streams equalized "
            f"({formatting.get('residual_stream_convolutions', 0)} convolutions), "
            f"{formatting.get('biases_absorbed', 0)} bias channels absorbed"
            + (f", {_count(sum(splits.values()), 'channel')} added by splitting outlier channels of "
               f"{_count(len(splits), 'layer')}" if (splits := formatting.get("outlier_splits")) else "")
            + f"; {exact}")


def _count(number: int, noun: str) -> str:
    """``"1 layer"``, ``"2 layers"``."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _refinement_lines(refinements: dict) -> list[str]:
    """One line per post-training step that ran (they change the int8 model only, never the float one)."""
    lines = []
    if "activation_ranges" in refinements:
        r = refinements["activation_ranges"]
        lines.append(f"- Activation ranges ({r['method']}): {r['changed']} of {r['tensors']} activation tensors "
                     f"narrowed from the calibration min/max ({r['seconds']:.1f} s)")
    if "adaround" in refinements:
        r = refinements["adaround"]
        lines.append(f"- AdaRound: {r['layers']} weight tensors, {100 * r['flipped']:.1f}% of the weights rounded "
                     f"away from nearest, layer reconstruction error x{r['recon_gain'] or 1:.2f} of nearest "
                     f"rounding, {r['iterations']} iterations ({r['seconds']:.1f} s)")
    if "bias_correction" in refinements:
        r = refinements["bias_correction"]
        shift = r["mean_abs_shift"][-1] if r["mean_abs_shift"] else 0.0
        lines.append(f"- Bias correction: float biases of {r['ops']} int8 layers moved by {shift:.2f} output steps "
                     f"on average ({r['images']} images, {r['rounds']} rounds, {r['seconds']:.1f} s)")
    limits = refinements.get("requantization_limits") or {}
    widened = limits.get("widened") or []
    if widened:
        lines.append(f"- Requantization limits: {len(widened)} output range(s) widened so that no int8 rescale factor "
                     f"exceeds {limits.get('max_factor', 128):g} (XNNPACK, LiteRT's CPU delegate, refuses a model "
                     "with one of 256 or more): "
                     + ", ".join(f"`{w['tensor'].split(';')[0]}` (factor {w['factor']:.3g})" for w in widened[:5]))
    if "qat" in refinements:
        r = refinements["qat"]
        lines.append(f"- Quantization-aware fine-tuning: {r['epochs']} epochs x {r['steps_per_epoch']} steps at "
                     f"learning rate {r['learning_rate']:g}, {r.get('ranges', {}).get('tensors', 0)} learned "
                     f"activation ranges kept ({r['seconds']:.0f} s)")
    return lines


def _timing_lines(timings: dict) -> list[str]:
    """Wall and process CPU seconds per step, and the machine's load while it ran."""
    if not timings.get("steps"):
        return []
    steps = ", ".join(f"{name} {v['wall_s']:.1f}/{v['cpu_s']:.1f}" for name, v in timings["steps"].items())
    load = timings.get("load_average_start") or []
    return [f"- Time: {timings['wall_s']:.0f} s wall, {timings['cpu_s']:.0f} s process CPU on {timings.get('cpus')} "
            f"cores (load average {load[0] if load else 'n/a'} at the start); per step, wall/CPU s: {steps}"]


def write_quantization_report(run_dir: Path, report: dict) -> dict[str, Path]:
    """Write the JSON and Markdown reports atomically."""
    return {"json": write_json(run_dir / "quantization_report.json", report),
            "md": write_text(run_dir / "quantization_report.md", to_markdown(report))}


def report_metrics(report: dict) -> dict[str, float]:
    """The report's numbers for MLflow (``float_<metric>``, ``quantized_<metric>``, ``<metric>_drop_points``, ...;
    per network ``<network>_size_bytes`` and ``<network>_stm32mp2_npu_pct``)."""
    metric = report["metric"]
    networks = {}
    for n in report.get("networks") or []:
        networks[f"{n['name']}_size_bytes"] = n["size_bytes"]
        if n.get("stm32mp2_estimate"):
            networks[f"{n['name']}_stm32mp2_npu_pct"] = n["stm32mp2_estimate"]["npu_pct"]
            networks[f"{n['name']}_stm32mp2_estimated_ms"] = n["stm32mp2_estimate"]["latency_ms"]
    return {f"float_{metric}": report["float"][metric], f"quantized_{metric}": report["quantized"][metric],
            f"{metric}_drop_points": report["metric_drop_points"],
            **({"pixel_accuracy_drop_points": report["pixel_accuracy_drop_points"]}
               if "pixel_accuracy_drop_points" in report else {}),
            **networks,
            "int8_compute_share": report["int8_compute_share"],
            "per_channel_tensors": report["per_channel_tensors"], "float_layers": len(report["float_layers"]),
            "quantized_size_bytes": report["quantized"]["size_bytes"], "quantization_seconds": report["seconds"],
            **({"stm32mp2_npu_pct": report["stm32mp2_estimate"]["npu_pct"],
                "stm32mp2_estimated_ms": report["stm32mp2_estimate"]["latency_ms"]}
               if report.get("stm32mp2_estimate") else {})}
