"""Benchmarking: model analysis, host target, STM32MP2 estimate (placement pins, calibration), report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from segzoo.benchmarking.analysis import activation_liveness, analyze_model
from segzoo.benchmarking.estimate import estimate_stm32mp2, load_rules
from segzoo.benchmarking.host import benchmark_host, latency_stats
from segzoo.benchmarking.report import benchmark_metrics, benchmark_models, write_benchmark_report
from segzoo.errors import ConfigError, ModelError

ST_MEASURED_MS = 52.75  # STM32MP257F-DK2, X-LINUX-AI v5.1.0 (ST model card), 99.2% NPU


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One small DeepLabV3 (64x64, alpha 0.35, ASPP v1, 5 classes) as .keras, float, per-channel and per-tensor."""
    import keras

    from segzoo.models.registry import build_model
    from segzoo.quantization.converter import convert

    out = tmp_path_factory.mktemp("bench_models")
    keras.utils.set_random_seed(0)
    model = build_model("deeplab_v3", input_shape=(64, 64, 3), num_classes=5, alpha=0.35, aspp="v1")
    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):  # smooth random images, preprocessed to [-1, 1]
            low = rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
            yield np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)

    paths = {"keras": out / "tiny.keras"}
    model.save(paths["keras"])
    paths["float"] = convert(model, None, out / "tiny_float.tflite", quantize=False, input_type="float",
                             output_type="float")
    for granularity in ("per_channel", "per_tensor"):
        paths[granularity] = convert(model, representative, out / f"tiny_{granularity}.tflite",
                                     granularity=granularity)
    return paths


@pytest.fixture
def corrupt_tflite(tmp_path) -> Path:
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(b"\x00not a flatbuffer" * 64)
    return path


# ------------------------------------------------------------------------------------------------ analysis
def test_analysis_macs_equal_keras_macs(tiny_models):
    keras_summary = analyze_model(tiny_models["keras"])
    assert keras_summary["macs"] > 0
    for kind in ("float", "per_channel", "per_tensor"):
        analysis = analyze_model(tiny_models[kind])
        assert analysis["macs"] == pytest.approx(keras_summary["macs"], rel=1e-3), kind
        # BatchNorm statistics are folded away by the converter: fewer params than Keras counts, same order
        assert 0.9 * keras_summary["params"] < analysis["params"] <= keras_summary["params"], kind
        assert analysis["peak_activation_bytes"] >= max(op["output_bytes"] for op in analysis["ops"])
    assert analyze_model(tiny_models["per_tensor"])["precision"] == "int8 per-tensor"
    assert analyze_model(tiny_models["per_channel"])["precision"] == "int8 per-channel"
    assert analyze_model(tiny_models["float"])["precision"] == "float32"
    assert analyze_model(tiny_models["per_channel"])["granularity_counts"]["constant"]["per_channel"] > 0
    assert "per_channel" not in analyze_model(tiny_models["per_tensor"])["granularity_counts"]["constant"]


def test_analysis_of_st_model(st_model):
    analysis = analyze_model(st_model)
    first_conv = analysis["ops"][1]
    assert first_conv["name"] == "CONV_2D" and first_conv["output_shape"] == [1, 129, 129, 16]
    assert first_conv["macs"] == 129 * 129 * 16 * 3 * 3 * 3  # 3x3 stride-2 conv, 3 -> 16 channels
    assert analysis["op_histogram"]["CONV_2D"] == 38
    assert analysis["macs"] == sum(op["macs"] for op in analysis["ops"])
    assert analysis["macs_by_op_type"].keys() == {"CONV_2D", "DEPTHWISE_CONV_2D"}
    # the largest live set holds at least the float 257x257x21 output (the last DEQUANTIZE)
    assert analysis["peak_activation_bytes"] >= 257 * 257 * 21 * 4
    assert analysis["input"]["shape"] == [1, 257, 257, 3] and analysis["size_bytes"] == st_model.stat().st_size


def test_activation_liveness_by_hand():
    # t0 (input, 10 B) -> op0 -> t1 (20 B) -> op1 -> t2 (5 B); op2 reads t0 and t2 -> t3 (1 B, graph output)
    ops = [{"act_inputs": [0], "act_outputs": [1]}, {"act_inputs": [1], "act_outputs": [2]},
           {"act_inputs": [0, 2], "act_outputs": [3]}]
    peak, at, alive = activation_liveness(ops, {0: 10, 1: 20, 2: 5, 3: 1}, graph_in=[0], graph_out=[3])
    assert alive == [30, 35, 16] and peak == 35 and at == 1


# ------------------------------------------------------------------------------------------------ estimate
def test_st_model_runs_on_npu_and_matches_its_measured_time(st_model):
    est = estimate_stm32mp2(st_model)
    assert est["shares"]["time"]["NPU"] >= 0.99 and est["npu_pct"] >= 99.0
    assert est["shares"]["macs"]["NPU"] == 1.0 and est["primary_unit"] == "NPU"
    assert abs(est["latency_ms"] / ST_MEASURED_MS - 1) < 0.30
    units = {op["name"]: set() for op in est["ops"]}
    for op in est["ops"]:
        units[op["name"]].add(op["unit"])
    assert units["CONV_2D"] == units["DEPTHWISE_CONV_2D"] == units["RESIZE_BILINEAR"] == {"NPU"}
    assert units["QUANTIZE"] == units["DEQUANTIZE"] == {"GPU"}  # float input/output conversions
    faster = estimate_stm32mp2(st_model, npu_mhz=900)
    assert faster["latency_ms"] < est["latency_ms"]
    with pytest.raises(ConfigError, match="npu_mhz"):
        estimate_stm32mp2(st_model, npu_mhz=1000)


def test_per_channel_runs_mostly_on_gpu_and_per_tensor_on_npu(tiny_models):
    per_tensor = estimate_stm32mp2(tiny_models["per_tensor"])
    per_channel = estimate_stm32mp2(tiny_models["per_channel"])
    floating = estimate_stm32mp2(tiny_models["float"])
    assert per_tensor["shares"]["time"]["NPU"] >= 0.99 and per_tensor["primary_unit"] == "NPU"
    assert per_channel["shares"]["time"]["GPU"] >= 0.8 and per_channel["primary_unit"] == "GPU"
    assert per_channel["shares"]["macs"]["GPU"] == 1.0
    assert all(op["unit"] == "GPU" for op in per_channel["ops"] if op["name"].startswith(("CONV", "DEPTHWISE")))
    # not calibrated on these models: per-channel (GPU) must still come out slower than per-tensor (NPU)
    assert per_channel["latency_ms"] > 2 * per_tensor["latency_ms"]
    assert per_channel["switches"] > per_tensor["switches"]
    assert floating["shares"]["ops"]["NPU"] == 0.0 and floating["primary_unit"] == "GPU"


def test_placement_follows_the_data_file(tiny_models, tmp_path):
    rules = load_rules()
    rules.pop("_path")
    del rules["placement"]["npu_ops"]["ADD"]
    rules["placement"]["stack_ops"].remove("MEAN")
    edited = tmp_path / "rules.json"
    edited.write_text(json.dumps(rules))
    est = estimate_stm32mp2(tiny_models["per_tensor"], rules_path=edited)
    by_name = {op["name"]: op for op in est["ops"]}
    assert by_name["ADD"]["unit"] == "GPU" and "no NPU kernel" in by_name["ADD"]["reason"]
    assert by_name["MEAN"]["unit"] == "CPU" and "OpenVX" in by_name["MEAN"]["reason"]
    assert by_name["CONV_2D"]["unit"] == "NPU"
    with pytest.raises(ConfigError, match="rules file"):
        estimate_stm32mp2(tiny_models["per_tensor"], rules_path=tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------------- host
def test_latency_stats():
    stats = latency_stats([float(v) for v in range(1, 11)], blocks=2)
    assert stats["min_ms"] == 1 and stats["median_ms"] == 5.5 and stats["p90_ms"] == pytest.approx(9.1)
    assert stats["block_medians_ms"] == [3.0, 8.0]
    assert stats["repeat_spread_pct"] == pytest.approx(100 * 5 / 5.5)


def test_host_benchmark_tflite_and_keras(tiny_models):
    result = benchmark_host(tiny_models["per_tensor"], runs=12, warmup=2, threads=1)
    assert result["threads"] == 1 and result["runs"] == 12
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"] <= result["max_ms"]
    assert result["peak_rss_bytes"] > result["baseline_rss_bytes"] > 0
    assert result["size_bytes"] == tiny_models["per_tensor"].stat().st_size
    assert "LiteRT" in result["runtime"] and math.isfinite(result["repeat_spread_pct"])
    keras_result = benchmark_host(tiny_models["keras"], runs=5, warmup=1)
    assert keras_result["median_ms"] > 0 and "Keras" in keras_result["runtime"]
    assert keras_result["peak_rss_bytes"] > keras_result["baseline_rss_bytes"] > 0


def test_unreadable_models_raise_model_error(corrupt_tflite, tiny_models, tmp_path):
    for call in (lambda: benchmark_host(corrupt_tflite, runs=2), lambda: estimate_stm32mp2(corrupt_tflite),
                 lambda: analyze_model(corrupt_tflite)):
        with pytest.raises(ModelError, match="corrupt.tflite"):
            call()
    with pytest.raises(ModelError, match="not found"):
        benchmark_host(tmp_path / "missing.tflite")
    with pytest.raises(ModelError, match=r"\.tflite"):
        estimate_stm32mp2(tiny_models["keras"])


def test_tflite_path_imports_no_tensorflow(st_model):
    code = ("import sys; from segzoo.benchmarking.report import run_target; "
            f"row = run_target({str(st_model)!r}, 'stm32mp2_estimate'); assert row['error'] is None; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -------------------------------------------------------------------------------------------------- report
def test_report_has_a_row_per_model_and_target_and_shows_failures(tiny_models, corrupt_tflite, tmp_path):
    paths = [tiny_models["per_tensor"], tiny_models["per_channel"], corrupt_tflite]
    rows = benchmark_models(paths, runs=5, warmup=1)
    assert len(rows) == 6 and [r["error"] is None for r in rows] == [True] * 4 + [False] * 2
    files = write_benchmark_report(rows, tmp_path / "out")
    assert set(files) == {"json", "md", "latency_plot", "placement_plot"}
    for key in ("latency_plot", "placement_plot"):
        assert files[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = files["md"].read_text()
    table = [line for line in md.splitlines() if line.startswith("| tiny_") or line.startswith("| corrupt")]
    assert len(table) == 6
    assert sum("tiny_per_tensor" in line for line in table) == 2
    failed = [line for line in table if line.startswith("| corrupt")]
    assert len(failed) == 2 and all("**failed**" in line and "not a valid" in line for line in failed)
    assert "## STM32MP257 placement" in md and "per-channel quantized weights" in md
    report = json.loads(files["json"].read_text())
    assert len(report["rows"]) == 6 and report["metrics"]["benchmark_failed_targets"] == 2
    metrics = benchmark_metrics(rows)
    assert metrics["tiny_per_channel.stm32mp2_estimate.gpu_pct"] > 80
    assert metrics["tiny_per_tensor.host.latency_ms"] > 0
    assert all(isinstance(v, float) for v in metrics.values())
    assert not any(k.startswith("corrupt") for k in metrics)
