"""The quantization step: calibration data, optional formatting, mixed precision, conversion, inspection."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segzoo.config.schema import Config
from segzoo.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

LAYER_ERROR_IMAGES = 16
"""Calibration images used to measure per-layer quantization errors (enough to rank layers)."""

PER_CHANNEL_WARNING = ("per-channel quantization for the STM32MP2: the NPU accelerates only per-tensor 8-bit "
                       "models, so this model will run on the GPU (ST measured 806 ms instead of 52 ms)")


@dataclass
class QuantizationResult:
    """What the quantization step produced.

    A model made of several networks (a folder, e.g. a detector and a landmark model) is quantized one network at
    a time; :func:`combine_results` makes one result of theirs: ``path`` is then the folder of the quantized
    files, ``inspection`` and ``stm32mp2`` describe the networks together and ``networks`` holds one section each.
    """

    path: Path
    float_model: Path
    granularity: str
    input_type: str
    output_type: str
    float_layers: list[str]
    calibration: dict
    formatting: dict | None
    layer_errors: list[dict]
    inspection: dict
    mixed_precision_trace: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    stm32mp2: dict | None = None
    refinements: dict = field(default_factory=dict)
    networks: list[dict] = field(default_factory=list)
    """A model made of several networks (e.g. an encoder and a decoder): one section per file, with its own
    inspection, STM32MP2 placement and worst layers; ``inspection`` then describes them together."""
    timings: dict = field(default_factory=dict)


@dataclass
class StepTimer:
    """Wall and process CPU seconds of each named step (the CPU time counts every thread of this process, so on a
    loaded machine it says what the step costs where the wall time says what it waited), and the load average."""

    steps: dict[str, dict[str, float]] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=lambda: _load_average())

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (times add up when a name repeats)."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            entry = self.steps.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0})
            entry["wall_s"] = round(entry["wall_s"] + time.perf_counter() - wall, 2)
            entry["cpu_s"] = round(entry["cpu_s"] + time.process_time() - cpu, 2)

    def to_dict(self) -> dict:
        """``steps`` (name -> wall_s, cpu_s), totals, ``load_average`` (1/5/15 min) at the start and at the end."""
        return {"steps": self.steps, "wall_s": round(sum(v["wall_s"] for v in self.steps.values()), 2),
                "cpu_s": round(sum(v["cpu_s"] for v in self.steps.values()), 2),
                "cpus": os.cpu_count(), "load_average_start": self.load_average, "load_average_end": _load_average()}


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not available on this platform
        return []


def representative(batch: np.ndarray, limit: int | None = None) -> Callable[[], Iterator[np.ndarray]]:
    """A representative-dataset callable over the first ``limit`` images, one [1,H,W,C] batch at a time."""
    images = batch[:limit] if limit else batch

    def generate() -> Iterator[np.ndarray]:
        for image in images:
            yield image[None]

    return generate


def load_float_model(path: Path):
    """The float Keras model to quantize: a ``.keras``/``.h5`` file, or a float ``.tflite`` rebuilt as an equivalent
    Keras model (:mod:`segzoo.litert`, checked against the file on a random input); ModelError when unreadable or
    when the ``.tflite`` is already quantized, or damaged since segzoo wrote it (sha256 sidecar)."""
    from segzoo.io import verified

    verified(path)
    if path.suffix.lower() == ".tflite":
        from segzoo.litert.importer import import_tflite, verify_import

        model = import_tflite(path)
        rows = verify_import(path, model)
        logger.info("Float TFLite %s rebuilt as the Keras model '%s' (%d layers, %d parameters); largest output "
                    "difference to the file on a random input: %s", path.name, model.name, len(model.layers),
                    model.count_params(), ", ".join(f"{r['output']} {r['relative']:.1e} of its range" for r in rows))
        return model
    import keras

    from segzoo.models.registry import custom_objects

    try:
        return keras.saving.load_model(path, compile=False, custom_objects=custom_objects())
    except Exception as exc:  # Keras raises many types for unreadable files
        raise ModelError(f"cannot load the float model {path}: {exc}") from exc


def output_name(float_model: Path, granularity: str, mixed: bool) -> str:
    """File name of the quantized model, e.g. best_model_int8_per_tensor.tflite."""
    return f"{float_model.stem}_int8_{granularity}{'_mixed' if mixed else ''}.tflite"


FineTuning = Callable[[tuple[int, int]], tuple[Any, Any, int]]
"""``input_hw -> (training batches, loss, steps per epoch)``: the task's data for quantization-aware fine-tuning."""

Calibration = Callable[[tuple[int, int], int], tuple[np.ndarray, dict, list[str]]]
"""``(input_hw, channels) -> (preprocessed inputs [N,H,W,C], description, warnings)``: the task's calibration data."""


def run_quantization(cfg: Config, float_model: Path, run_dir: Path, *, calibration: Calibration,
                     metric_of: Callable[[Path], float], fine_tuning: FineTuning | None = None,
                     out_path: Path | None = None) -> QuantizationResult:
    """Quantize ``float_model`` as configured, calibrating on ``calibration``'s inputs. ``metric_of(path)`` gives
    the task's validation metric of a model file (used only by automatic mixed precision); ``fine_tuning`` the
    task's training data (``quantization_type: qat`` only). The quantized file is ``out_path``, by default
    ``<run_dir>/<quantization.export_dir>/<stem>_int8_<granularity>[_mixed].tflite``."""
    from segzoo.quantization import converter, mixed
    from segzoo.quantization.formatting import optimize_for_per_tensor
    from segzoo.litert.inspect import inspect_tflite

    start, q, timer = time.perf_counter(), cfg.quantization, StepTimer()
    with timer.step("load_float_model"):
        model = load_float_model(float_model)
    input_hw, channels = tuple(model.input_shape[1:3]), int(model.input_shape[-1])
    with timer.step("calibration_data"):
        batch, calibration_info, warnings = calibration(input_hw, channels)
    if q.granularity == "per_channel" and q.target == "stm32mp2":
        logger.warning(PER_CHANNEL_WARNING)
        warnings.append(PER_CHANNEL_WARNING)
    formatting = None
    if q.optimize:
        with timer.step("formatting"):
            model, formatting = optimize_for_per_tensor(model, batch[:LAYER_ERROR_IMAGES],
                                                         relu6=q.relu6_equalization, dead_channels=q.dead_channels,
                                                         dead_inputs=q.dead_inputs,
                                                         residual=q.residual_equalization,
                                                         cap_growth=q.relu6_cap_growth,
                                                         split_outliers=q.split_outliers)
        logger.info("Formatting for per-tensor quantization: %s", formatting)
    learned = None
    if q.quantization_type == "qat":
        with timer.step("qat"):
            model, learned, qat_report = quantization_aware_fine_tuning(cfg, model, batch, fine_tuning)
    with timer.step("calibration"):
        calibrated = converter.calibrate(model, representative(batch))
    if learned is None:
        calibrated, refinements = refine_calibrated(cfg, calibrated, batch, timer)
    else:
        from segzoo.quantization.limits import respect_limits
        from segzoo.quantization.qat import apply_ranges

        calibrated, qat_report["ranges"] = apply_ranges(calibrated, learned)
        calibrated, limits_report = respect_limits(calibrated)
        refinements = {"qat": qat_report, "requantization_limits": limits_report}
    with timer.step("layer_errors"):
        errors = mixed.layer_errors(model, representative(batch, LAYER_ERROR_IMAGES), granularity=q.granularity,
                                   calibrated=calibrated)
    float_layers, trace = list(q.mixed_precision.float_layers), []
    if q.mixed_precision.auto:
        with timer.step("mixed_precision_search"):
            float_layers, trace = _auto_float_layers(cfg, calibrated, errors, float_model, metric_of)
    out_path = out_path or run_dir / q.export_dir / output_name(float_model, q.granularity, bool(float_layers))
    with timer.step("int8_conversion"):
        converter.convert_calibrated(calibrated, out_path, granularity=q.granularity,
                                     input_type=q.quantization_input_type, output_type=q.quantization_output_type,
                                     float_layers=float_layers)
    with timer.step("placement_estimate"):
        placement = stm32mp2_placement(out_path) if q.target == "stm32mp2" else None
        inspection = inspect_tflite(out_path)
    timings = timer.to_dict()
    logger.info("Quantization: %.0f s wall, %.0f s process CPU (%s); load average %s -> %s", timings["wall_s"],
                timings["cpu_s"], ", ".join(f"{k} {v['wall_s']:.1f}/{v['cpu_s']:.1f}"
                                            for k, v in timings["steps"].items()),
                timings["load_average_start"], timings["load_average_end"])
    return QuantizationResult(path=out_path, float_model=float_model, granularity=q.granularity,
                              input_type=q.quantization_input_type, output_type=q.quantization_output_type,
                              float_layers=float_layers, calibration=calibration_info, formatting=formatting,
                              refinements=refinements,
                              layer_errors=errors, inspection=inspection,
                              mixed_precision_trace=trace, warnings=warnings, seconds=time.perf_counter() - start,
                              stm32mp2=placement, timings=timings)


def quantization_aware_fine_tuning(cfg: Config, model: Any, batch: np.ndarray,
                                   fine_tuning: FineTuning | None) -> tuple[Any, dict, dict]:
    """Fine-tune a per-tensor fake-quantized clone (``segzoo.quantization.qat``); the plain model with the tuned
    weights, the learned activation ranges (Keras layer -> (min, max)) and a report."""
    from segzoo.quantization import qat

    q = cfg.quantization
    if fine_tuning is None:
        raise ConfigError("quantization.quantization_type: qat needs the task's training data; this task has none")
    start = time.perf_counter()
    dataset, loss, steps = fine_tuning(tuple(model.input_shape[1:3]))
    clone = qat.fake_quant_model(model)
    qat.initialise_ranges(clone, model, batch)
    losses = qat.fine_tune(clone, dataset, epochs=q.qat.epochs, learning_rate=q.qat.learning_rate, loss=loss,
                           steps_per_epoch=steps)
    qat.plain_weights(clone, model)
    report = {"epochs": q.qat.epochs, "learning_rate": q.qat.learning_rate, "steps_per_epoch": steps,
              "loss_per_epoch": losses, "seconds": round(time.perf_counter() - start, 2)}
    logger.info("Quantization-aware fine-tuning: %d epochs of %d steps in %.0f s, loss %s", q.qat.epochs, steps,
                report["seconds"], ", ".join(f"{v:.4f}" for v in losses))
    return model, qat.learned_ranges(clone), report


def refine_calibrated(cfg: Config, calibrated: bytes, batch: np.ndarray,
                      timer: StepTimer | None = None) -> tuple[bytes, dict]:
    """The post-training steps on the calibrated model, in order: activation ranges, AdaRound, bias correction,
    requantization limits (:mod:`segzoo.quantization.limits`: always).

    Each one edits the calibrated float flatbuffer (ranges, weights on their grid, float biases) before the
    quantizer turns it into int8; the report has one entry per step that ran, with its ``seconds`` (wall) and
    ``cpu_seconds`` (process CPU); ``timer`` also records them.
    """
    from segzoo.quantization import bias_correction, limits, ranges

    q, report = cfg.quantization, {}
    steps: list[tuple[str, Callable[[bytes], tuple[bytes, dict]]]] = []
    if q.activation_ranges != "minmax":
        steps.append(("activation_ranges", lambda c: ranges.select_ranges(c, batch, q.activation_ranges,
                                                                          q.activation_percentile)))
    if q.adaround and q.granularity != "per_tensor":
        logger.warning("quantization.adaround: skipped, it rounds onto one grid per tensor (granularity: %s)",
                       q.granularity)
    elif q.adaround:
        from segzoo.quantization import adaround

        steps.append(("adaround", lambda c: adaround.adaround(c, batch, iterations=q.adaround_iterations,
                                                              granularity=q.granularity)))
    if q.bias_correction:
        steps.append(("bias_correction", lambda c: bias_correction.correct_biases(c, batch, q.granularity)))
    steps.append(("requantization_limits", limits.respect_limits))
    timer = timer or StepTimer()
    for name, step in steps:
        with timer.step(name):
            calibrated, report[name] = step(calibrated)
        report[name]["seconds"], report[name]["cpu_seconds"] = timer.steps[name]["wall_s"], timer.steps[name]["cpu_s"]
        logger.info("Post-training step %s: %.1f s wall, %.1f s CPU", name, report[name]["seconds"],
                    report[name]["cpu_seconds"])
    return calibrated, report


def combine_results(path: Path, float_model: Path, results: dict[str, QuantizationResult]) -> QuantizationResult:
    """One result for a model made of several quantized networks (``path``: the folder holding their files).

    Each network keeps its own section in ``networks`` (:func:`network_section`); names that belong to one network
    (float layers, layer-error tensors, warnings) are prefixed ``<name>/``; the inspection and the STM32MP2
    estimate are summed per frame (every network runs once).
    """
    parts = list(results.items())
    first = parts[0][1]
    errors = sorted(({**row, "tensor": f"{name}/{row['tensor']}", "network": name,
                      "layers": [f"{name}/{layer}" for layer in row.get("layers") or []]}
                     for name, r in parts for row in r.layer_errors), key=lambda row: -row["rmse_per_scale"])
    return QuantizationResult(
        path=Path(path), float_model=Path(float_model), granularity=first.granularity, input_type=first.input_type,
        output_type=first.output_type,
        float_layers=[f"{name}/{layer}" for name, r in parts for layer in r.float_layers],
        calibration={name: r.calibration for name, r in parts}, formatting=None, layer_errors=errors,
        inspection=combine_inspections({name: r.inspection for name, r in parts}),
        mixed_precision_trace=[{**t, "network": name} for name, r in parts for t in r.mixed_precision_trace],
        warnings=list(dict.fromkeys(f"{name}: {w}" for name, r in parts for w in r.warnings)),
        seconds=sum(r.seconds for _, r in parts), stm32mp2=combine_placements({n: r.stm32mp2 for n, r in parts}),
        networks=[network_section(name, r) for name, r in parts])


def network_section(name: str, result: QuantizationResult, worst: int = 10) -> dict:
    """The report section of one network of a multi-network model: files, op set, per-tensor check, STM32MP2
    placement (:func:`placement_summary`), formatting, post-training steps, calibration and worst layers."""
    from segzoo.litert.inspect import NON_COMPUTE_OPS

    inspection, float_model = result.inspection, Path(result.float_model)
    compute = [op for op in inspection["ops"] if op["name"] not in NON_COMPUTE_OPS]
    estimate = placement_summary(result.path) if result.stm32mp2 is not None else None
    return {"name": name, "model": str(result.path), "float_model": str(float_model),
            "size_bytes": inspection["size_bytes"], "float_size_bytes": float_model.stat().st_size,
            "compute_ops": len(compute), "int8_ops": sum(op["int8"] for op in compute),
            "int8_compute_share": inspection["int8_compute_share"], "has_per_channel": inspection["has_per_channel"],
            "per_channel_tensors": inspection["per_channel_tensors"], "float_ops": inspection["float_ops"],
            "float_op_types": sorted({op["name"] for op in compute if op["float"]}),
            "op_histogram": inspection["op_histogram"],
            "npu_ready": not inspection["has_per_channel"] and not inspection["float_ops"],
            "formatting": result.formatting, "refinements": result.refinements, "calibration": result.calibration,
            "float_layers": result.float_layers, "stm32mp2_estimate": estimate,
            "worst_layers": [{**row, "network": name} for row in result.layer_errors[:worst]],
            "layer_error_samples": min(LAYER_ERROR_IMAGES, int(result.calibration.get("images") or 0)),
            "layer_errors_skipped": None, "seconds": round(result.seconds, 1), "timings": result.timings}


def combine_inspections(inspections: dict[str, dict]) -> dict:
    """``inspect_tflite`` summaries of several networks as one: sizes and op counts summed, the int8 share over
    every compute op, tensor and op names prefixed ``<name>/``."""
    from collections import Counter

    from segzoo.litert.inspect import NON_COMPUTE_OPS

    compute = [op for i in inspections.values() for op in i["ops"] if op["name"] not in NON_COMPUTE_OPS]
    histogram: Counter = Counter()
    for inspection in inspections.values():
        histogram.update(inspection["op_histogram"])
    per_channel = [f"{name}/{t}" for name, i in inspections.items() for t in i["per_channel_tensors"]]
    return {"ops": [], "op_histogram": dict(histogram),
            "int8_compute_share": sum(op["int8"] for op in compute) / len(compute) if compute else 0.0,
            "per_channel_tensors": per_channel, "has_per_channel": bool(per_channel),
            "size_bytes": sum(i["size_bytes"] for i in inspections.values()),
            "float_ops": [f"{name}/{t}" for name, i in inspections.items() for t in i["float_ops"]]}


def combine_placements(placements: dict[str, dict | None]) -> dict | None:
    """The STM32MP2 estimates (:func:`stm32mp2_placement`) of networks that run once per frame: latencies summed,
    unit shares weighted by each network's estimated time; None when a network has no estimate."""
    if not placements or any(p is None for p in placements.values()):
        return None
    total = sum(p["latency_ms"] for p in placements.values())
    shares = {unit: sum(p[unit] * p["latency_ms"] for p in placements.values()) / total if total else 0.0
              for unit in ("npu_pct", "gpu_pct", "cpu_pct")}
    off_npu = {f"{name}: {op}": count for name, p in placements.items() for op, count in p["ops_off_npu"].items()}
    return {**shares, "latency_ms": total, "ops_off_npu": off_npu}


def placement_summary(path: str | Path, npu_mhz: int = 800) -> dict:
    """The STM32MP257 estimate of a ``.tflite`` file, condensed: time shares per unit, estimated latency, and the
    ops off the NPU grouped by ``(op, unit, reason)`` with their count and estimated time."""
    from collections import Counter

    from segzoo.benchmarking.estimate import estimate_stm32mp2

    est = estimate_stm32mp2(path, npu_mhz=npu_mhz)
    groups: Counter = Counter()
    times: Counter = Counter()
    for op in est["ops"]:
        if op["unit"] != "NPU":
            key = (op["name"], op["unit"], op["reason"])
            groups[key] += 1
            times[key] += op["time_ms"]
    off = [{"op": name, "unit": unit, "reason": reason, "count": n, "time_ms": times[(name, unit, reason)]}
           for (name, unit, reason), n in sorted(groups.items(), key=lambda kv: -times[kv[0]])]
    return {"model": str(path), "latency_ms": est["latency_ms"], "npu_pct": est["npu_pct"], "gpu_pct": est["gpu_pct"],
            "cpu_pct": est["cpu_pct"], "primary_unit": est["primary_unit"], "ops": len(est["ops"]),
            "ops_off_npu": sum(groups.values()), "off_npu": off}


def stm32mp2_placement(path: Path) -> dict:
    """Where the STM32MP2 would run the quantized model (static estimate), and which ops leave the NPU."""
    from collections import Counter

    from segzoo.benchmarking.estimate import estimate_stm32mp2

    estimate = estimate_stm32mp2(path)
    off_npu = Counter(f"{op['name']} ({op['unit']})" for op in estimate["ops"] if op["unit"] != "NPU")
    return {"npu_pct": estimate["npu_pct"], "gpu_pct": estimate["gpu_pct"], "cpu_pct": estimate["cpu_pct"],
            "latency_ms": estimate["latency_ms"], "ops_off_npu": dict(off_npu)}


def _auto_float_layers(cfg: Config, calibrated: bytes, errors: list[dict], float_model: Path,
                       metric_of: Callable[[Path], float]) -> tuple[list[str], list[dict]]:
    """Automatic mixed precision: the fewest most-sensitive layers in float that keep the drop in bounds."""
    from segzoo.quantization import converter, mixed

    q, mp = cfg.quantization, cfg.quantization.mixed_precision
    float_miou = metric_of(float_model)
    logger.info("Mixed precision: float validation mIoU %.2f%%, accepted drop %.2f points, at most %d float layers",
                100 * float_miou, mp.max_miou_drop, mp.max_float_layers)
    with tempfile.TemporaryDirectory() as tmp:
        def evaluate_fn(float_layers: Sequence[str]) -> float:
            path = Path(tmp) / f"try_{len(float_layers)}.tflite"
            converter.convert_calibrated(calibrated, path, granularity=q.granularity,
                                         input_type=q.quantization_input_type,
                                         output_type=q.quantization_output_type, float_layers=float_layers)
            miou = metric_of(path)
            logger.info("  %d float layers: mIoU %.2f%%", len(float_layers), 100 * miou)
            return miou

        all_int8 = evaluate_fn([])
        first = {"float_layers": [], "miou": all_int8, "drop": float_miou - all_int8}
        first["within_budget"] = first["drop"] <= mp.max_miou_drop / 100.0
        if first["within_budget"]:
            logger.info("Mixed precision: the all-int8 model is already within the accepted drop")
            return [], [first]
        layers, trace = mixed.search_float_layers(errors, evaluate_fn, float_miou=float_miou,
                                                  max_miou_drop=mp.max_miou_drop / 100.0,
                                                  max_float_layers=mp.max_float_layers)
        return layers, [first, *trace]

