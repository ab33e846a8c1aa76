"""Static estimate of a ``.tflite`` model on the STM32MP257: which unit runs each op, shares, latency.

The rules, throughputs and their sources live in ``stm32mp2.json`` (next to this module), so they can be corrected
without touching code. In short (the data file has the full text and the sources):

- **placement**: an op the OpenVX stack does not know -> CPU; an op with a float activation -> GPU; an op with
  per-channel weights -> GPU; an 8-bit per-tensor op -> NPU when the NPU has a kernel for it, otherwise GPU.
- **time per op** on its unit: ``MACs / mac_rate + elementwise / elementwise_rate`` (see
  :mod:`segzoo.benchmarking.analysis` for the counts); **transfers**: a fixed cost per change of unit along the op
  order plus ``bytes / DRAM bandwidth`` for every activation read on another unit than the one that wrote it.
- **shares** (fractions) by op count, by MACs and by estimated time; the ``npu_pct`` / ``gpu_pct`` / ``cpu_pct``
  headline is the time share in percent (ST's published ``%NPU`` columns are shares of time).
- **calibration**: :func:`calibrate` solves the four NPU/GPU rates from ST's two published measurements (see
  ``calibration`` in the data file); the result is stored in the data file.
- **loadability** (:func:`board_support`): X-LINUX-AI's TFLite runtime knows the builtin ops and a few custom ones
  (``board_runtime`` in the data file). A model with any other custom op cannot be loaded on the board at all: the
  estimate still places that op on the CPU, but says the model is not loadable (``board_loadable``, ``warnings``).

This is an estimate from published figures, not a measurement: the board stack (ovxlib graph optimisations, op
fusion, memory placement) can differ per model.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from segzoo.benchmarking.analysis import analyze_tflite
from segzoo.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

UNITS: tuple[str, ...] = ("NPU", "GPU", "CPU")
DEFAULT_RULES = Path(__file__).with_name("stm32mp2.json")
TARGET = "stm32mp2_estimate"


# ------------------------------------------------------------------------------------------------- rules
def load_rules(path: str | Path | None = None) -> dict:
    """The rules/throughput data file (default: ``stm32mp2.json`` next to this module); ConfigError naming the file
    and the first bad entry if unusable (see :func:`rules_problems`)."""
    path = Path(path) if path is not None else DEFAULT_RULES
    try:
        rules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read the STM32MP2 rules file: {exc}") from exc
    problems = rules_problems(rules)
    if problems:
        raise ConfigError(f"{path}: the STM32MP2 rules file is not usable: {'; '.join(problems[:5])}")
    rules["_path"] = str(path)
    return rules


RATE_KEYS: tuple[tuple[str, ...], ...] = (
    ("npu", "mac_efficiency"), ("npu", "elementwise_per_s_at_800mhz"), ("gpu", "mac_efficiency"),
    ("gpu", "elementwise_per_s"), ("cpu", "mac_efficiency"), ("cpu", "elementwise_per_s"))
"""``latency_model`` figures that may be null until calibrated (:func:`calibrate`), positive otherwise."""
FIGURE_KEYS: tuple[tuple[str, ...], ...] = (
    ("gpu", "peak_gflops"), ("cpu", "cores"), ("cpu", "ghz"), ("cpu", "macs_per_cycle_per_core"),
    ("transfer", "dram_bytes_per_s"))
"""``latency_model`` figures that must be positive numbers."""


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _at(data: object, keys: tuple[str, ...]) -> object:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _is_names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def rules_problems(rules: object) -> list[str]:
    """What makes a rules file unusable: a missing section, a list of op names that is not one, a figure that is
    not a positive number (``latency_model``); empty when it is usable."""
    if not isinstance(rules, dict):
        return ["it is not a JSON object"]
    problems = [f"'{key}' is not a section" for key in ("placement", "latency_model", "calibration")
                if not isinstance(rules.get(key), dict)]
    if problems:
        return problems
    placement, model = rules["placement"], rules["latency_model"]
    if not _is_names(placement.get("stack_ops")):
        problems.append("placement.stack_ops is not a list of op names")
    if not (isinstance(placement.get("npu_ops"), dict) or _is_names(placement.get("npu_ops"))):
        problems.append("placement.npu_ops is neither a mapping nor a list of op names")
    peaks = _at(model, ("npu", "peak_tops"))
    if not isinstance(peaks, dict) or not peaks or not all(_is_number(v) and v > 0 for v in peaks.values()):
        problems.append("latency_model.npu.peak_tops is not a mapping of NPU clocks to positive TOPS")
    for keys in RATE_KEYS + FIGURE_KEYS:
        value = _at(model, keys)
        if (value is None and keys in RATE_KEYS) or (_is_number(value) and value > 0):
            continue
        problems.append(f"latency_model.{'.'.join(keys)} must be a positive number, got {value!r}")
    switch = _at(model, ("transfer", "per_switch_ms"))
    if not (_is_number(switch) and switch >= 0):
        problems.append(f"latency_model.transfer.per_switch_ms must be a number >= 0, got {switch!r}")
    runtime = rules.get("board_runtime")
    if runtime is not None and not (isinstance(runtime, dict) and _is_names(runtime.get("custom_ops", []))):
        problems.append("board_runtime.custom_ops is not a list of op names")
    return problems


def _npu_peak_tops(rules: dict, npu_mhz: int) -> float:
    peaks = rules["latency_model"]["npu"]["peak_tops"]
    if str(npu_mhz) not in peaks:
        raise ConfigError(f"npu_mhz={npu_mhz!r} is not supported; choose one of {', '.join(sorted(peaks))} "
                          f"(NPU clocks of {rules['_path']})")
    return float(peaks[str(npu_mhz)])


def _required(section: dict, key: str, rules: dict) -> float:
    value = section.get(key)
    if value is None:
        raise ConfigError(f"{rules['_path']}: latency_model value '{key}' is not set (run the calibration, "
                          f"tests/benchmarks/bench_stm32mp2_calibration.py)")
    return float(value)


def unit_rates(rules: dict, npu_mhz: int = 800) -> dict[str, dict[str, float]]:
    """``{unit: {"mac_rate", "elementwise_rate"}}`` per second, for the NPU clock ``npu_mhz``."""
    model = rules["latency_model"]
    npu, gpu, cpu = model["npu"], model["gpu"], model["cpu"]
    clock = npu_mhz / 800.0
    return {
        "NPU": {"mac_rate": _npu_peak_tops(rules, npu_mhz) * 1e12 / 2 * _required(npu, "mac_efficiency", rules),
                "elementwise_rate": _required(npu, "elementwise_per_s_at_800mhz", rules) * clock},
        "GPU": {"mac_rate": float(gpu["peak_gflops"]) * 1e9 / 2 * _required(gpu, "mac_efficiency", rules),
                "elementwise_rate": _required(gpu, "elementwise_per_s", rules)},
        "CPU": {"mac_rate": cpu["cores"] * cpu["ghz"] * 1e9 * cpu["macs_per_cycle_per_core"]
                * _required(cpu, "mac_efficiency", rules),
                "elementwise_rate": _required(cpu, "elementwise_per_s", rules)},
    }


# ------------------------------------------------------------------------------------------- loadability
def board_custom_ops(rules: dict | None = None) -> frozenset[str]:
    """The custom ops X-LINUX-AI's runtime can load (``board_runtime.custom_ops``; built-in rules when absent)."""
    section = (rules or {}).get("board_runtime") or load_rules().get("board_runtime", {})
    return frozenset(section.get("custom_ops", ()))


def board_support(custom_ops: list[str], rules: dict | None = None, model: str = "the model") -> dict:
    """``{"loadable", "unloadable_ops", "warning"}`` for a model whose non-builtin ops are ``custom_ops``."""
    unknown = sorted(set(custom_ops) - board_custom_ops(rules))
    warning = None
    if unknown:
        warning = (f"{model} is not loadable on the board: custom op(s) {', '.join(unknown)} have no kernel in "
                   "X-LINUX-AI's TFLite runtime, which refuses to load the whole model (the estimate places them "
                   "on the CPU only to give a figure). Replace them with builtin ops: for a float .tflite, "
                   "segzoo's quantization modes rebuild MediaPipe's Convolution2DTransposeBias as TRANSPOSE_CONV")
    return {"loadable": not unknown, "unloadable_ops": unknown, "warning": warning}


def check_loadable_on_board(path: str | Path) -> None:
    """ModelError naming the ops when X-LINUX-AI's runtime cannot load the ``.tflite`` at ``path``."""
    check_bundle_loadable([path])


def check_bundle_loadable(paths: Iterable[str | Path]) -> None:
    """ModelError naming every file of a bundle (e.g. a pipeline's detector and landmark model, SAM2's encoder and
    decoder) that X-LINUX-AI's runtime cannot load, with its ops: the board app needs all of them."""
    from segzoo.litert.flatbuffer import read_flatbuffer

    warnings = []
    for path in paths:
        custom = sorted({op.name for op in read_flatbuffer(path).operators if op.custom})
        support = board_support(custom, model=str(path))
        if not support["loadable"]:
            warnings.append(support["warning"])
    if warnings:
        raise ModelError("\n".join(warnings))


# --------------------------------------------------------------------------------------------- placement
def place_op(op: dict, rules: dict) -> tuple[str, str]:
    """``(unit, reason)`` for one op of :func:`analyze_tflite` by the rules of the data file."""
    placement = rules["placement"]
    name = op["name"]
    if name not in placement["stack_ops"]:
        return "CPU", f"{name} is not an op of the OpenVX/TIM-VX stack"
    if op["float"]:
        return "GPU", "float activations (the NPU computes 8-bit tensors only)"
    if op["per_channel"]:
        return "GPU", "per-channel quantized weights (the NPU needs per-tensor)"
    if not op["int8"]:
        return "GPU", "activations are neither 8-bit nor float"
    if name in placement["npu_ops"]:
        return "NPU", "8-bit per-tensor, NPU kernel"
    return "GPU", f"8-bit, but {name} has no NPU kernel (shader)"


def place_ops(analysis: dict, rules: dict) -> list[dict]:
    """The ops of ``analysis`` with ``unit``, ``reason``, ``switch`` (unit differs from the previous op) and
    ``crossing_bytes`` (activations read from another unit); independent of the throughput figures."""
    rows: list[dict] = []
    producer: dict[str, tuple[str, int]] = {}
    for op in analysis["ops"]:
        unit, reason = place_op(op, rules)
        # activations written by an op on another unit (graph inputs and constants are not transfers)
        crossing = sum(producer[t][1] for t in set(op["inputs"]) if t in producer and producer[t][0] != unit)
        rows.append({"index": op["index"], "name": op["name"], "tensor": op["tensor"], "unit": unit,
                     "reason": reason, "macs": op["macs"], "elementwise": op["elementwise"],
                     "switch": bool(rows) and rows[-1]["unit"] != unit, "crossing_bytes": crossing})
        for tensor in op["outputs"]:
            producer[tensor] = (unit, op["output_bytes"] // max(1, len(op["outputs"])))
    return rows


# ----------------------------------------------------------------------------------------------- latency
def _transfer_ms(row: dict, transfer: dict) -> float:
    switch = float(transfer["per_switch_ms"]) if row["switch"] else 0.0
    return switch + 1e3 * row["crossing_bytes"] / float(transfer["dram_bytes_per_s"])


def _op_ms(row: dict, rates: dict[str, dict[str, float]]) -> float:
    rate = rates[row["unit"]]
    return 1e3 * (row["macs"] / rate["mac_rate"] + row["elementwise"] / rate["elementwise_rate"])


def _shares(rows: list[dict], weight: str) -> dict[str, float]:
    totals = Counter()
    for row in rows:
        totals[row["unit"]] += 1 if weight == "ops" else row[weight]
    total = sum(totals.values())
    return {unit: (totals[unit] / total if total else 0.0) for unit in UNITS}


def estimate_analysis(analysis: dict, rules: dict, npu_mhz: int = 800) -> dict:
    """The estimate of one analysed ``.tflite`` model (see :func:`estimate_stm32mp2` for the keys)."""
    rates = unit_rates(rules, npu_mhz)
    transfer = rules["latency_model"]["transfer"]
    rows = place_ops(analysis, rules)
    for row in rows:
        row["time_ms"] = _op_ms(row, rates)
        row["transfer_ms"] = _transfer_ms(row, transfer)
    unit_ms = {unit: sum((r["time_ms"] for r in rows if r["unit"] == unit), 0.0) for unit in UNITS}
    transfer_ms = sum(r["transfer_ms"] for r in rows)
    time_share = _shares(rows, "time_ms")
    support = board_support(analysis.get("custom_ops", []), rules, Path(analysis["path"]).name)
    return {
        "target": TARGET,
        "board": rules.get("board", "STM32MP257"),
        "npu_mhz": npu_mhz,
        "model": analysis["path"],
        "precision": analysis["precision"],
        "macs": analysis["macs"],
        "size_bytes": analysis["size_bytes"],
        "peak_activation_bytes": analysis["peak_activation_bytes"],
        "latency_ms": sum(unit_ms.values()) + transfer_ms,
        "unit_ms": unit_ms,
        "transfer_ms": transfer_ms,
        "switches": sum(r["switch"] for r in rows),
        "shares": {"ops": _shares(rows, "ops"), "macs": _shares(rows, "macs"), "time": time_share},
        "npu_pct": 100 * time_share["NPU"],
        "gpu_pct": 100 * time_share["GPU"],
        "cpu_pct": 100 * time_share["CPU"],
        "primary_unit": max(UNITS, key=lambda unit: time_share[unit]),
        "op_types_by_unit": {unit: dict(Counter(r["name"] for r in rows if r["unit"] == unit)) for unit in UNITS},
        "ops": rows,
        "rules": {"path": rules["_path"], "version": rules.get("version")},
        "board_loadable": support["loadable"],
        "unloadable_ops": support["unloadable_ops"],
        "warnings": [support["warning"]] if support["warning"] else [],
    }


def estimate_stm32mp2(path: str | Path, *, npu_mhz: int = 800, rules_path: str | Path | None = None) -> dict:
    """Placement and latency estimate of a ``.tflite`` model on the STM32MP257 (``npu_mhz`` 800 or 900).

    Keys: ``target``, ``board``, ``npu_mhz``, ``model``, ``precision``, ``macs``, ``size_bytes``,
    ``peak_activation_bytes``, ``latency_ms`` (units + transfers), ``unit_ms``, ``transfer_ms``, ``switches``,
    ``shares`` (``ops``/``macs``/``time`` -> fraction per unit), ``npu_pct``/``gpu_pct``/``cpu_pct`` (time shares in
    %), ``primary_unit``, ``op_types_by_unit``, ``ops`` (per op: ``index``, ``name``, ``tensor``, ``unit``, ``reason``,
    ``macs``, ``elementwise``, ``switch``, ``crossing_bytes``, ``time_ms``, ``transfer_ms``), ``rules``,
    ``board_loadable`` (False when X-LINUX-AI's runtime cannot load the model), ``unloadable_ops``, ``warnings``.
    ModelError for a file that is not a readable ``.tflite``; ConfigError for a bad clock or rules file.
    """
    if Path(path).suffix.lower() != ".tflite":
        raise ModelError(f"{path}: the STM32MP2 estimate reads a .tflite model; convert the model first "
                         f"(e.g. the quantization mode)")
    rules = load_rules(rules_path)
    _npu_peak_tops(rules, npu_mhz)
    result = estimate_analysis(analyze_tflite(path), rules, npu_mhz)
    log.info("%s on STM32MP257 (NPU %d MHz): %.1f ms estimated, %.1f%% NPU / %.1f%% GPU / %.1f%% CPU (time)",
             Path(path).name, npu_mhz, result["latency_ms"], result["npu_pct"], result["gpu_pct"], result["cpu_pct"])
    for warning in result["warnings"]:
        log.warning("%s", warning)
    return result


# ------------------------------------------------------------------------------------------- calibration
def _unit_work(rows: list[dict], unit: str) -> tuple[int, int]:
    return (sum(r["macs"] for r in rows if r["unit"] == unit),
            sum(r["elementwise"] for r in rows if r["unit"] == unit))


def _unit_seconds(reference: dict, rows: list[dict], transfer: dict, unit: str) -> float:
    """Time ST's measurement gives ``unit``: its share of the measured time without the estimated transfers."""
    transfers_ms = sum(_transfer_ms(r, transfer) for r in rows)
    return reference["shares"][unit] * (reference["measured_ms"] - transfers_ms) / 1e3


def calibrate(per_tensor: dict, per_channel: dict, rules: dict) -> dict[str, float]:
    """Solve the NPU/GPU rates from ST's two references (``calibration.steps`` of the data file).

    ``per_tensor`` / ``per_channel``: :func:`analyze_tflite` of ST's 257 per-tensor file and of the 512 per-channel
    rebuild. Returns ``npu_mac_efficiency``, ``npu_elementwise_per_s_at_800mhz``, ``gpu_mac_efficiency`` and
    ``gpu_elementwise_per_s`` (put them in ``latency_model``). ConfigError if a reference has no work on a unit.
    """
    refs = rules["calibration"]["references"]
    transfer = rules["latency_model"]["transfer"]
    pt_ref, pc_ref = refs["st_257_per_tensor"], refs["st_512_per_channel"]
    pt_rows, pc_rows = place_ops(per_tensor, rules), place_ops(per_channel, rules)
    pt_npu_macs, pt_npu_elem = _unit_work(pt_rows, "NPU")
    pt_gpu_macs, pt_gpu_elem = _unit_work(pt_rows, "GPU")
    pc_npu_macs, pc_npu_elem = _unit_work(pc_rows, "NPU")
    pc_gpu_macs, pc_gpu_elem = _unit_work(pc_rows, "GPU")
    if min(pt_npu_macs, pt_gpu_elem, pc_npu_elem, pc_gpu_macs) == 0 or pt_gpu_macs or pc_npu_macs:
        raise ConfigError("calibration references do not have the expected placement (per-tensor: MACs on the "
                          "NPU, only elementwise work on the GPU; per-channel: MACs on the GPU, only elementwise "
                          "work on the NPU)")
    gpu_elem_rate = pt_gpu_elem / _unit_seconds(pt_ref, pt_rows, transfer, "GPU")
    npu_elem_rate = pc_npu_elem / _unit_seconds(pc_ref, pc_rows, transfer, "NPU")
    gpu_mac_rate = pc_gpu_macs / (_unit_seconds(pc_ref, pc_rows, transfer, "GPU") - pc_gpu_elem / gpu_elem_rate)
    npu_mac_rate = pt_npu_macs / (_unit_seconds(pt_ref, pt_rows, transfer, "NPU") - pt_npu_elem / npu_elem_rate)
    model = rules["latency_model"]
    npu_peak = float(model["npu"]["peak_tops"]["800"]) * 1e12 / 2
    gpu_peak = float(model["gpu"]["peak_gflops"]) * 1e9 / 2
    result = {"npu_mac_efficiency": npu_mac_rate / npu_peak, "npu_elementwise_per_s_at_800mhz": npu_elem_rate,
              "gpu_mac_efficiency": gpu_mac_rate / gpu_peak, "gpu_elementwise_per_s": gpu_elem_rate}
    if any(not math.isfinite(v) or v <= 0 for v in result.values()):
        raise ConfigError(f"calibration gave non-positive rates {result}: the estimated transfers exceed the "
                          f"measured times; check latency_model.transfer")
    return result


def with_calibration(rules: dict, rates: dict[str, float]) -> dict:
    """A copy of ``rules`` with the rates of :func:`calibrate` filled in."""
    rules = json.loads(json.dumps(rules))
    model = rules["latency_model"]
    model["npu"]["mac_efficiency"] = rates["npu_mac_efficiency"]
    model["npu"]["elementwise_per_s_at_800mhz"] = rates["npu_elementwise_per_s_at_800mhz"]
    model["gpu"]["mac_efficiency"] = rates["gpu_mac_efficiency"]
    model["gpu"]["elementwise_per_s"] = rates["gpu_elementwise_per_s"]
    return rules
