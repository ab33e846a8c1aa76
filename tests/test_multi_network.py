"""Models made of several networks: one quantization result and report for all of them, per-frame benchmark rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from segzoo.benchmarking.report import frame_rows, new_row, report_markdown
from segzoo.quantization.quantize import QuantizationResult, combine_results
from segzoo.quantization.report import build_report, report_metrics, to_markdown


def _result(folder: Path, name: str, *, ops: list[tuple[str, bool]], latency: float, npu: float,
            per_channel: list[str] = ()) -> QuantizationResult:
    path = folder / name
    path.write_bytes(b"x" * 1000)
    float_path = folder.parent / "float" / name
    float_path.parent.mkdir(exist_ok=True)
    float_path.write_bytes(b"x" * 3000)
    inspection = {"ops": [{"name": op, "int8": int8, "float": not int8, "tensor": f"t{i}"}
                          for i, (op, int8) in enumerate(ops)],
                  "op_histogram": {op: sum(o == op for o, _ in ops) for op, _ in ops},
                  "int8_compute_share": sum(i for _, i in ops) / len(ops), "per_channel_tensors": list(per_channel),
                  "has_per_channel": bool(per_channel), "size_bytes": 1000,
                  "float_ops": [f"t{i}" for i, (op, int8) in enumerate(ops) if not int8 and op != "DEQUANTIZE"]}
    return QuantizationResult(
        path=path, float_model=float_path, granularity="per_tensor", input_type="uint8", output_type="float",
        float_layers=["conv_a"] if per_channel else [], calibration={"images": 3, "source": "photos"},
        formatting={"bn_folded": 1}, layer_errors=[{"tensor": "out", "layers": ["conv_a"], "op": "CONV_2D",
                                                   "rmse_per_scale": latency, "range": [0.0, 1.0]}],
        inspection=inspection, warnings=["w"], seconds=2.0,
        stm32mp2={"npu_pct": npu, "gpu_pct": 100.0 - npu, "cpu_pct": 0.0, "latency_ms": latency,
                  "ops_off_npu": {"DEQUANTIZE (GPU)": 1}})


def test_combined_result_sums_networks_and_reports_each(tmp_path, monkeypatch):
    # the per-network placement table re-reads each file with the STM32MP2 estimator; these files are stand-ins
    monkeypatch.setattr("segzoo.quantization.quantize.placement_summary",
                        lambda path: {"model": str(path), "latency_ms": 1.0, "npu_pct": 100.0, "gpu_pct": 0.0,
                                      "cpu_pct": 0.0, "primary_unit": "NPU", "ops": 2, "ops_off_npu": 0,
                                      "off_npu": []})
    folder = tmp_path / "int8"
    folder.mkdir()
    detector = _result(folder, "det.tflite", ops=[("CONV_2D", True), ("DEQUANTIZE", False)], latency=40.0, npu=100.0)
    landmark = _result(folder, "lm.tflite", ops=[("CONV_2D", True), ("ADD", False), ("CONV_2D", True)],
                       latency=60.0, npu=90.0, per_channel=["w"])
    combined = combine_results(folder, tmp_path / "float", {"detector": detector, "landmark": landmark})
    assert combined.path == folder and [n["name"] for n in combined.networks] == ["detector", "landmark"]
    assert combined.float_layers == ["landmark/conv_a"]
    assert combined.inspection["size_bytes"] == 2000
    assert combined.inspection["int8_compute_share"] == pytest.approx(3 / 4)  # DEQUANTIZE is not compute
    assert combined.inspection["float_ops"] == ["landmark/t1"]
    assert combined.inspection["per_channel_tensors"] == ["landmark/w"]
    assert combined.stm32mp2["latency_ms"] == 100.0
    assert combined.stm32mp2["npu_pct"] == pytest.approx((40 * 100 + 60 * 90) / 100)
    assert combined.stm32mp2["ops_off_npu"] == {"detector: DEQUANTIZE (GPU)": 1, "landmark: DEQUANTIZE (GPU)": 1}
    assert [r["tensor"] for r in combined.layer_errors] == ["landmark/out", "detector/out"]
    assert combined.warnings == ["detector: w", "landmark: w"]

    accuracy = {"metric": "mean_oks", "metric_label": "mean OKS", "metric_drop_points": 5.0,
                "float": {"mean_oks": 0.5}, "quantized": {"mean_oks": 0.45},
                "tables": [{"title": "Per stage", "columns": ["a", "b"], "rows": [["float", "50.00"]]}]}
    report = build_report(combined, accuracy)
    assert report["float"]["size_bytes"] == 6000  # the float folder: two files of 3000 bytes
    assert report["quantized"]["size_bytes"] == 2000
    networks = {n["name"]: n for n in report["networks"]}
    assert networks["landmark"]["npu_ready"] is False and networks["detector"]["npu_ready"]
    assert networks["detector"]["float_size_bytes"] == 3000 and networks["landmark"]["per_channel_tensors"] == ["w"]
    markdown = to_markdown(report)
    assert "## detector: `det.tflite`" in markdown and "## landmark: `lm.tflite`" in markdown
    assert "**mean OKS drop: 5.00 points**" in markdown and "| quantized | `int8` | 2 | 45.00 |" in markdown
    assert "| float | 50.00 |" in markdown and "| `landmark/conv_a` | CONV_2D |" in markdown
    assert "per frame, every network once" in markdown
    metrics = report_metrics(report)
    assert metrics["float_mean_oks"] == 0.5 and metrics["quantized_mean_oks"] == 0.45
    assert metrics["mean_oks_drop_points"] == 5.0 and "miou_drop_points" not in metrics
    assert metrics["landmark_size_bytes"] == 1000 and metrics["detector_stm32mp2_npu_pct"] == 100.0


def _row(name: str, target: str, latency: float | None, npu: float | None = None, error: str | None = None) -> dict:
    row = new_row(Path(f"/m/{name}.tflite"), target, name, {"precision": "int8", "macs": 10, "params": 5,
                                                           "size_bytes": 100})
    row.update(latency_ms=latency, npu_pct=npu, gpu_pct=None if npu is None else 100 - npu,
               cpu_pct=None if npu is None else 0.0, error=error, device="dev", peak_memory_bytes=10)
    return row


def test_frame_rows_sum_the_networks_of_a_model():
    rows = [_row("pose/det", "host", 10.0), _row("pose/lm", "host", 30.0),
            _row("pose/det", "stm32mp2_estimate", 40.0, 100.0), _row("pose/lm", "stm32mp2_estimate", 60.0, 50.0),
            _row("pose/det", "board", None, error="unreachable"), _row("pose/lm", "board", None, error="unreachable"),
            _row("single", "host", 5.0)]
    sums = frame_rows(rows, {"pose": ["pose/det", "pose/lm"], "single": ["single"]})
    assert [(r["model"], r["target"]) for r in sums] == [("pose per frame (det + lm)", t)
                                                         for t in ("host", "stm32mp2_estimate", "board")]
    host, estimate, board = sums
    assert host["latency_ms"] == 40.0 and host["macs"] == 20 and host["size_bytes"] == 200
    assert estimate["npu_pct"] == pytest.approx((40 * 100 + 60 * 50) / 100) and estimate["primary_unit"] == "NPU"
    assert board["error"] == "pose/det: unreachable; pose/lm: unreachable" and board["latency_ms"] is None
    # the placement section lists the networks' own estimates, not the sum (rows here have no placement details)
    markdown = report_markdown([r for r in rows if r["target"] == "host"] + sums)
    assert "Per-frame rows add up the networks" in markdown and "| pose per frame (det + lm) |" in markdown
