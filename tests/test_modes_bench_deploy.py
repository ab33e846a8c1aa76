"""chain_qb and chain_qd end to end: a trained model quantized, benchmarked, and deployed to a real SSH "board"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sshd import sshd_server  # noqa: F401  (fixture)

from conftest import tiny_training_config
from segzoo.cli import run

pytestmark = pytest.mark.slow


def chain_config(tmp: Path, dataset_root: Path, model: Path, mode: str) -> dict:
    cfg = tiny_training_config(tmp, dataset_root)
    cfg["operation_mode"] = mode
    cfg["general"]["model_path"] = str(model)
    cfg["mlflow"]["enabled"] = False
    cfg["quantization"] = {"calibration_images": 16}
    cfg["evaluation"] = {"max_images": 10}
    return cfg


def test_chain_qb_compares_float_and_int8(tmp_path, dataset_root, trained_run) -> None:
    cfg = chain_config(tmp_path, dataset_root, trained_run[0] / "saved_models" / "best_model.keras", "chain_qb")
    (tmp_path / "kh").write_text("")
    cfg["benchmarking"] = {"targets": ["host", "stm32mp2_estimate", "board"], "runs": 5, "warmup": 1,
                           "board": {"host": "127.0.0.1", "port": 9, "known_hosts": str(tmp_path / "kh")}}
    run(cfg, run_dir=tmp_path / "qb")
    report = json.loads((tmp_path / "qb" / "benchmark_report.json").read_text())
    rows = report["rows"] if isinstance(report, dict) else report
    by_key = {(r["model"], r["target"]): r for r in rows}
    float_name, int8_name = "best_model (float32)", "best_model_int8_per_tensor"
    assert {(float_name, "host"), (int8_name, "host"), (float_name, "stm32mp2_estimate"),
            (int8_name, "stm32mp2_estimate")} <= set(by_key)
    assert by_key[(int8_name, "stm32mp2_estimate")]["npu_pct"] >= 99.0
    assert by_key[(float_name, "stm32mp2_estimate")]["npu_pct"] < 50.0
    assert by_key[(int8_name, "host")]["latency_ms"] > 0
    # The unreachable board fails its rows with a clear cause; the other targets are still reported.
    board = [r for r in rows if r["target"] == "board"]
    assert len(board) == 2 and all("127.0.0.1:9" in r["error"] for r in board)
    assert (tmp_path / "qb" / "benchmark_report.md").read_text().count("|") > 20


def test_chain_qd_deploys_a_verified_bundle_and_runs_it(tmp_path, dataset_root, trained_run, sshd_server) -> None:
    # If the name reached a shell unquoted, the payload would create ~/pwned on the board (the same user here).
    marker = Path.home() / "pwned"
    marker.unlink(missing_ok=True)
    image_dir = tmp_path / "board images; $(cd; touch pwned)"
    image_dir.mkdir()
    source = next((dataset_root / "synthetic_shapes" / "JPEGImages").glob("*.jpg"))
    (image_dir / source.name).write_bytes(source.read_bytes())
    deploy_path = str(sshd_server.board_root / "app dir 'x'")
    cfg = chain_config(tmp_path, dataset_root, trained_run[0] / "saved_models" / "best_model.keras", "chain_qd")
    cfg["deployment"] = sshd_server.deployment(deploy_path, str(image_dir))
    results = run(cfg, run_dir=tmp_path / "qd")
    summary = results["deployment"]
    assert summary["verified"] is True and summary["launched"] is True
    deployed = Path(deploy_path)
    manifest = json.loads((deployed / "manifest.json").read_text())
    assert any(name.endswith(".tflite") for name in manifest["files"])
    overlays = list(Path(deploy_path + "_results").glob("*_overlay.png"))
    assert len(overlays) == 1
    assert not marker.exists(), "a configured path was executed by the board's shell"
    _injection_control(sshd_server)
    assert not list(sshd_server.board_root.glob("*.tmp-*"))
    saved = (tmp_path / "qd" / "config.yaml").read_text()
    assert str(sshd_server.identity_file) in saved  # a path is not a secret; key content never appears
    assert "PRIVATE KEY" not in saved


def _injection_control(sshd_server) -> None:
    """The same payload, deliberately handed to the board's shell unquoted, does create ~/pwned_control: the
    location checked above is where an injected command writes."""
    from segzoo.remote import Remote

    control = Path.home() / "pwned_control"
    control.unlink(missing_ok=True)
    with Remote(sshd_server.target()) as remote:
        remote.run(["sh", "-c", "echo board images; $(cd; touch pwned_control)"], timeout=30)
    assert control.exists()
    control.unlink()

