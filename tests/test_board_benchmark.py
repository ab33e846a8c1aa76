"""The ``board`` benchmarking target against a real sshd "board" (tests/sshd.py) with ST's real DeepLabV3."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from sshd import sshd_server  # noqa: F401  (fixture)

from segzoo.benchmarking.board import benchmark_on_board, parse_xlinux_benchmark
from segzoo.errors import ModelError
from segzoo.remote import RemoteError

XLINUX_TABLE = """\
+---------------------------------------+----------------+-------+-------+-------+----------+
|               Model name              | Inference (ms) | CPU % | GPU % | NPU % | RAM (MB) |
+---------------------------------------+----------------+-------+-------+-------+----------+
| deeplabv3_257_int8_per_tensor.tflite  |     12.34      |  1.5  |  10.5 |  88.0 |  21.47   |
+---------------------------------------+----------------+-------+-------+-------+----------+
"""


def _script(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(0o755)
    return path


def test_fallback_benchmark_on_the_board(sshd_server, st_model):
    remote_dir = sshd_server.board_root / "bench dir; $(x)"
    result = benchmark_on_board(st_model, sshd_server.target(), remote_dir=str(remote_dir), runs=5,
                                python=sshd_server.python, tool="no-x-linux-ai-benchmark-here")
    assert result["tool"] == "segment.py" and result["runs"] == 5
    assert result["runtime"] == "ai_edge_litert" and result["delegate"] == "cpu"
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["p90_ms"]
    assert result["model"] == st_model.name and result["host"] == sshd_server.target().address
    assert not remote_dir.exists() and not list(sshd_server.board_root.glob("bench dir*"))


def test_x_linux_ai_benchmark_is_preferred_and_parsed(sshd_server, st_model, tmp_path):
    """The real tool runs only on an STM32MP2 board: a stand-in prints the same kind of table."""
    tool = _script(sshd_server.board_root / "x-linux-ai-benchmark",
                   "#!/bin/sh\n[ \"$1\" = -m ] && [ -f \"$2\" ] || exit 9\ncat <<'EOF'\n" + XLINUX_TABLE + "EOF\n")
    result = benchmark_on_board(st_model, sshd_server.target(), remote_dir=str(sshd_server.board_root / "b"),
                                python="no-python-needed", tool=str(tool))
    assert result["median_ms"] == 12.34 and result["delegate"] == "npu" and result["tool"] == str(tool)
    assert result["unit_shares_pct"] == {"cpu": 1.5, "gpu": 10.5, "npu": 88.0}

    failing = _script(sshd_server.board_root / "failing-benchmark", "#!/bin/sh\necho 'cannot load model' >&2\nexit 1\n")
    with pytest.raises(RemoteError, match="(?s)failing-benchmark failed .*cannot load model"):
        benchmark_on_board(st_model, sshd_server.target(), remote_dir=str(sshd_server.board_root / "b"),
                           tool=str(failing))


def test_parse_x_linux_ai_benchmark_output():
    assert parse_xlinux_benchmark(XLINUX_TABLE)["median_ms"] == 12.34
    assert parse_xlinux_benchmark("Loading...\nInference time: 7.5 ms\n") == {
        "median_ms": 7.5, "mean_ms": 7.5, "min_ms": None, "p90_ms": None, "runs": None, "delegate": "unknown",
        "unit_shares_pct": {}}
    assert parse_xlinux_benchmark("| a | b |\n| 1 | 2 |\nno timing here") is None


def test_missing_python_and_tool_is_a_clear_error(sshd_server, st_model):
    with pytest.raises(RemoteError, match="neither no-benchmark nor /nonexistent/python3 is installed"):
        benchmark_on_board(st_model, sshd_server.target(), remote_dir=str(sshd_server.board_root / "c"),
                           python="/nonexistent/python3", tool="no-benchmark")
    assert not (sshd_server.board_root / "c").exists()


def test_missing_runtime_is_a_clear_error(sshd_server, st_model, tmp_path):
    shadow = sshd_server.board_root / "shadow"  # a Python whose TFLite runtimes cannot be imported
    for package in ("ai_edge_litert", "tflite_runtime", "stai_mpu"):
        (shadow / package).mkdir(parents=True)
        (shadow / package / "__init__.py").write_text(f"raise ImportError('simulated: no {package} here')\n")
    python = _script(sshd_server.board_root / "python-without-runtime",
                     f"#!/bin/sh\nPYTHONPATH={shadow} exec {sys.executable} \"$@\"\n")
    with pytest.raises(RemoteError, match="(?s)no inference runtime.*install X-LINUX-AI's stai_mpu"):
        benchmark_on_board(st_model, sshd_server.target(), remote_dir=str(sshd_server.board_root / "d"),
                           python=str(python), tool="no-benchmark", runs=2)


def test_model_that_fails_to_load(sshd_server, tmp_path):
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(os.urandom(4096))
    with pytest.raises(RemoteError, match="(?s)model failed to load on 127.0.0.1.*broken.tflite"):
        benchmark_on_board(broken, sshd_server.target(), remote_dir=str(sshd_server.board_root / "e"),
                           python=sshd_server.python, tool="no-benchmark", runs=2)
    with pytest.raises(ModelError, match="not an existing"):
        benchmark_on_board(tmp_path / "absent.tflite", sshd_server.target())


def test_unreachable_board_and_refused_key(sshd_server, st_model, tmp_path):
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(RemoteError, match="cannot reach the board"):
        benchmark_on_board(st_model, sshd_server.target(port=closed_port))
    key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with pytest.raises(RemoteError, match=f"authentication refused .* with key file {key}"):
        benchmark_on_board(st_model, sshd_server.target(identity_file=str(key)))
