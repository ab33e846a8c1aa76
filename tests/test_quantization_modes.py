"""Quantization modes end to end on a really trained model: reports, file contents, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_training_config
from segzoo.cli import run

pytestmark = pytest.mark.slow


def quant_config(tmp: Path, dataset_root: Path, model: Path, mode: str = "quantization", **quantization) -> dict:
    cfg = tiny_training_config(tmp, dataset_root)
    cfg["operation_mode"] = mode
    cfg["general"]["model_path"] = str(model)
    cfg["mlflow"]["enabled"] = False
    cfg["quantization"] = {"calibration_images": 24, **quantization}
    return cfg


def tensor_scales(path: Path) -> dict[str, int]:
    """Number of quantization scales of every tensor, read with LiteRT directly (not segzoo's inspector)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    return {t["name"]: len(t["quantization_parameters"]["scales"]) for t in interpreter.get_tensor_details()}


def op_dtypes(path: Path) -> list[tuple[str, set[str]]]:
    """Each op's name and the dtypes of its input and output tensors."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without the default XNNPACK delegate, so that every op stays visible.
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    details = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = []
    for op in interpreter._get_ops_details():
        dtypes = {np.dtype(details[i]["dtype"]).name for i in list(op["inputs"]) + list(op["outputs"]) if i in details}
        ops.append((op["op_name"], dtypes))
    return ops


@pytest.fixture(scope="module")
def float_model(trained_run) -> Path:
    return trained_run[0] / "saved_models" / "best_model.keras"


def test_per_tensor_quantization_report_and_file(tmp_path, dataset_root, float_model) -> None:
    results = run(quant_config(tmp_path, dataset_root, float_model), run_dir=tmp_path / "q")
    report = json.loads((tmp_path / "q" / "quantization_report.json").read_text())
    path = Path(report["quantized"]["model"])
    assert path == Path(results["quantization"]["model"]) and path.is_file()
    # The file itself: one scale per tensor, every compute op on int8/uint8 tensors.
    assert max(tensor_scales(path).values()) <= 1
    compute = [(name, d) for name, d in op_dtypes(path) if name not in ("QUANTIZE", "DEQUANTIZE")]
    assert compute and all(d <= {"int8", "uint8", "int32"} for _, d in compute), compute
    assert report["npu_ready"] is True and report["has_per_channel"] is False
    assert report["int8_compute_share"] == 1.0
    # Both models evaluated on the same images, the drop is their difference.
    float_eval = json.loads((tmp_path / "q" / "evaluation_report.json").read_text())
    quant_eval = json.loads((tmp_path / "q" / "quantized_evaluation_report.json").read_text())
    assert float_eval["num_images"] == quant_eval["num_images"] == 20
    assert report["miou_drop_points"] == pytest.approx(100 * (float_eval["miou"] - quant_eval["miou"]))
    assert abs(report["miou_drop_points"]) < 5.0
    assert report["formatting"]["bn_folded"] > 0 and report["worst_layers"]
    # The default formatting adds no op the NPU lacks: only the float output's DEQUANTIZE leaves it.
    assert report["stm32mp2_estimate"]["npu_pct"] >= 99.0
    assert set(report["stm32mp2_estimate"]["ops_off_npu"]) <= {"DEQUANTIZE (GPU)"}
    assert "mIoU drop" in (tmp_path / "q" / "quantization_report.md").read_text()


def test_per_channel_is_reported_and_warned(tmp_path, dataset_root, float_model) -> None:
    cfg = quant_config(tmp_path, dataset_root, float_model, "chain_eqe", granularity="per_channel", optimize=False)
    run(cfg, run_dir=tmp_path / "pc")
    report = json.loads((tmp_path / "pc" / "quantization_report.json").read_text())
    assert report["has_per_channel"] is True and report["npu_ready"] is False
    assert max(tensor_scales(Path(report["quantized"]["model"])).values()) > 1
    assert any("GPU" in w for w in report["warnings"])


def test_manual_mixed_precision_keeps_named_layers_float(tmp_path, dataset_root, float_model) -> None:
    cfg = quant_config(tmp_path, dataset_root, float_model, mixed_precision={"float_layers": ["logits"]})
    run(cfg, run_dir=tmp_path / "mp")
    report = json.loads((tmp_path / "mp" / "quantization_report.json").read_text())
    assert report["float_layers"] == ["logits"]
    assert report["float_ops"] and report["npu_ready"] is False
    assert Path(report["quantized"]["model"]).name.endswith("_mixed.tflite")


def test_auto_mixed_precision_meets_its_budget_or_uses_all_layers(tmp_path, dataset_root, float_model) -> None:
    cfg = quant_config(tmp_path, dataset_root, float_model,
                       mixed_precision={"auto": True, "max_miou_drop": 0.0, "max_float_layers": 3,
                                        "validation_images": 10})
    run(cfg, run_dir=tmp_path / "auto")
    report = json.loads((tmp_path / "auto" / "quantization_report.json").read_text())
    trace = report["mixed_precision_trace"]
    assert trace and trace[0]["float_layers"] == [], "the all-int8 model is tried first"
    assert all(len(t["float_layers"]) <= 3 for t in trace)
    chosen = [t for t in trace if t["float_layers"] == report["float_layers"]]
    assert chosen, "the kept float layers were never evaluated"
    fitting = [t for t in trace if t["drop"] <= 0.0]
    if fitting:  # the budget is met: by the fewest float layers that met it
        assert chosen[0]["drop"] <= 0.0
        assert len(report["float_layers"]) == min(len(t["float_layers"]) for t in fitting)
    else:  # never met: every allowed layer was tried and the best candidate is kept
        assert max(len(t["float_layers"]) for t in trace) == 3
        assert chosen[0]["miou"] == max(t["miou"] for t in trace)


def test_random_calibration_is_loud(tmp_path, dataset_root, float_model) -> None:
    cfg = quant_config(tmp_path, dataset_root, float_model, calibration_data="random", calibration_images=4)
    run(cfg, run_dir=tmp_path / "rnd")
    report = json.loads((tmp_path / "rnd" / "quantization_report.json").read_text())
    assert report["calibration"]["source"] == "random"
    assert any("RANDOM" in w for w in report["warnings"])
    assert "Warning" in (tmp_path / "rnd" / "quantization_report.md").read_text()


def test_quantizing_a_tflite_is_a_clear_error(tmp_path, dataset_root, st_model) -> None:
    cfg = quant_config(tmp_path, dataset_root, st_model)
    with pytest.raises(SystemExit) as info:
        run(cfg, run_dir=tmp_path / "bad")
    assert info.value.code == 2


def test_grayscale_preprocessing_does_not_match_an_rgb_model(tmp_path, dataset_root, float_model, caplog) -> None:
    cfg = quant_config(tmp_path, dataset_root, float_model)
    cfg["preprocessing"]["color_mode"] = "grayscale"
    cfg["training"]["model"]["input_shape"] = [64, 64, 1]
    with pytest.raises(SystemExit) as info:
        run(cfg, run_dir=tmp_path / "gray")
    assert info.value.code == 2
    assert "the calibration images would not match the model input" in caplog.text
