"""The ``board`` benchmarking target: inference time measured on a real STM32MP2 board over SSH.

The model (and the bundle's ``segment.py``) is uploaded to a scratch directory on the board. When X-LINUX-AI's
unified benchmark ``x-linux-ai-benchmark`` (package ``x-linux-ai-benchmark``, installed in /usr/bin) is there, it
measures the model and its table is parsed (average inference time and the CPU/GPU/NPU shares); otherwise
``segment.py --benchmark N`` times N inferences with the board's own runtime (stai_mpu, or TFLite with the VX
delegate, or the CPU) and prints min/median/p90. The scratch directory is removed afterwards.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import shutil
import tempfile
from pathlib import Path

from segzoo.deployment.bundle import BOARD_APP_DIR, board_app
from segzoo.errors import ConfigError, ModelError
from segzoo.remote import BoardTarget, Remote, RemoteError

log = logging.getLogger(__name__)

XLINUX_BENCHMARK = "x-linux-ai-benchmark"
MODEL_SUFFIXES = (".tflite", ".nb")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_INFERENCE_LINE = re.compile(r"inference[^\n\d]*?(\d+(?:\.\d+)?)\s*ms", re.IGNORECASE)


def benchmark_on_board(model_path: str | Path, target: BoardTarget, *, remote_dir: str = "/tmp/segzoo_bench",
                       runs: int = 50, timeout: float = 900.0, python: str = "python3",
                       tool: str = XLINUX_BENCHMARK) -> dict:
    """Measure ``model_path`` (.tflite or .nb) on the board; {median_ms, min_ms, p90_ms, runtime, delegate, tool, ...}.

    ``tool`` is X-LINUX-AI's benchmark (used when the board has it), ``python`` the board's interpreter for the
    fallback. RemoteError when the board is unreachable, refuses the key, has neither tool nor Python with a
    runtime, or cannot load the model.
    """
    model = Path(model_path)
    if model.suffix.lower() not in MODEL_SUFFIXES or not model.is_file():
        raise ModelError(f"{model}: not an existing {' or '.join(MODEL_SUFFIXES)} model file")
    if runs < 1:
        raise ConfigError(f"board benchmark runs must be at least 1, got {runs}")
    with tempfile.TemporaryDirectory(prefix="segzoo_bench.") as stage:
        shutil.copy2(model, Path(stage) / model.name)
        shutil.copy2(BOARD_APP_DIR / "segment.py", Path(stage) / "segment.py")
        with Remote(target) as remote:
            remote.upload_dir(stage, remote_dir)
            try:
                result = _measure(remote, posixpath.join(remote_dir, model.name), remote_dir, runs, timeout,
                                  python, tool)
            finally:
                _remove_quietly(remote, remote_dir)
    result.update(host=target.address, model=model.name)
    log.info("Board %s: %s median %.2f ms (%s, %s, %s)", target.address, model.name, result["median_ms"],
             result["runtime"], result["delegate"], result["tool"])
    return result


def _measure(remote: Remote, remote_model: str, remote_dir: str, runs: int, timeout: float, python: str,
             tool: str) -> dict:
    if _has_command(remote, tool):
        measured = _run_xlinux_benchmark(remote, tool, remote_model, timeout)
        if measured is not None:
            return measured
        log.warning("Could not read %s's output; measuring with segment.py --benchmark instead", tool)
    else:
        log.info("%s is not installed on %s; measuring with segment.py --benchmark", tool, remote.target.address)
    return _run_fallback(remote, python, posixpath.join(remote_dir, "segment.py"), remote_model, runs, timeout, tool)


def _has_command(remote: Remote, name: str) -> bool:
    """True when ``name`` is an executable on the board's PATH (or an executable path)."""
    probe = remote.run(["sh", "-c", 'command -v "$1" >/dev/null 2>&1', "sh", name], timeout=30, check=False)
    return probe.exit_code == 0


def _run_xlinux_benchmark(remote: Remote, tool: str, remote_model: str, timeout: float) -> dict | None:
    """Run X-LINUX-AI's unified benchmark on the model; parsed results, or None when its output is unreadable."""
    result = remote.run([tool, "-m", remote_model], timeout=timeout, check=False)
    if result.exit_code != 0:
        detail = (result.stderr.strip() or result.stdout.strip())[-1500:]
        raise RemoteError(f"{tool} failed on the board {remote.target.address} (exit code {result.exit_code}); "
                          f"the model may not load there:\n{detail}")
    parsed = parse_xlinux_benchmark(result.stdout)
    if parsed is None:
        return None
    suffix = Path(remote_model).suffix
    parsed.update(tool=tool, runtime="stai_mpu (NBG)" if suffix == ".nb" else "tflite (x-linux-ai-benchmark)")
    return parsed


def parse_xlinux_benchmark(text: str) -> dict | None:
    """Average inference time (ms) and CPU/GPU/NPU shares from x-linux-ai-benchmark's result table.

    The table has a column whose header mentions "inference" (in ms) and, on STM32MP2, "CPU %", "GPU %" and
    "NPU %" columns. A plain "Inference time: X ms" line is accepted too. None when neither is found.
    """
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.strip().startswith("|")]
    for index, header in enumerate(rows):
        column = next((k for k, name in enumerate(header) if "inference" in name.lower()), None)
        if column is None:
            continue
        for row in rows[index + 1 :]:
            value = _number(row[column]) if len(row) == len(header) else None
            if value is not None:
                shares = {unit: _number(row[k]) for k, name in enumerate(header)
                          for unit in ("cpu", "gpu", "npu") if unit in name.lower() and "%" in name}
                return _xlinux_result(value, {k: v for k, v in shares.items() if v is not None})
    match = _INFERENCE_LINE.search(text)
    return _xlinux_result(float(match.group(1)), {}) if match else None


def _xlinux_result(mean_ms: float, shares: dict[str, float]) -> dict:
    """x-linux-ai-benchmark reports one average: it stands for the median; min and p90 are unknown."""
    delegate = max(shares, key=shares.get) if shares else "unknown"
    return {"median_ms": mean_ms, "mean_ms": mean_ms, "min_ms": None, "p90_ms": None, "runs": None,
            "delegate": delegate, "unit_shares_pct": shares}


def _number(cell: str) -> float | None:
    match = _NUMBER.search(cell)
    return float(match.group()) if match else None


def _run_fallback(remote: Remote, python: str, script: str, remote_model: str, runs: int, timeout: float,
                  tool: str) -> dict:
    """``segment.py --benchmark`` on the board; RemoteError naming what is missing when it cannot run."""
    app = board_app()
    result = remote.run([python, script, "--model", remote_model, "--benchmark", str(runs)], timeout=timeout,
                        check=False)
    where = remote.target.address
    detail = (result.stderr.strip() or result.stdout.strip())[-1500:]
    if result.exit_code == 127:
        raise RemoteError(f"cannot benchmark on {where}: neither {tool} nor {python} is installed there. Install "
                          "X-LINUX-AI's benchmark (x-linux-ai -i x-linux-ai-benchmark) or Python 3 with stai_mpu or "
                          "a TFLite runtime")
    if result.exit_code == app.EXIT_RUNTIME:
        raise RemoteError(f"cannot benchmark on {where}: {tool} is not installed and {python} there has no inference "
                          f"runtime or package it needs:\n{detail}")
    if result.exit_code == app.EXIT_MODEL:
        raise RemoteError(f"the model failed to load on {where}:\n{detail}")
    if result.exit_code != 0:
        raise RemoteError(f"segment.py --benchmark failed on {where} (exit code {result.exit_code}):\n{detail}")
    for line in reversed(result.stdout.splitlines()):
        try:
            measured = json.loads(line)
        except ValueError:
            continue
        if isinstance(measured, dict) and "median_ms" in measured:
            return measured
    raise RemoteError(f"segment.py --benchmark on {where} printed no result:\n{result.stdout[-1500:]}")


def _remove_quietly(remote: Remote, remote_dir: str) -> None:
    try:
        remote.remove_tree(remote_dir)
    except RemoteError as exc:
        log.warning("Could not remove %s from the board: %s", remote_dir, exc)


def board_row(path: Path, name: str, analysis: dict | None, board: object, runs: int) -> dict:
    """One benchmark table row measured on the board of config section ``board`` (``benchmarking.board``);
    a board problem becomes the row's error, so that the other rows are still reported."""
    from segzoo.benchmarking.analysis import analyze_model
    from segzoo.benchmarking.estimate import board_support
    from segzoo.benchmarking.report import new_row
    from segzoo.errors import SegzooError

    analysis = analysis or analyze_model(path)
    row = new_row(path, "board", name, analysis)
    support = board_support(analysis.get("custom_ops", []), model=name)
    if not support["loadable"]:  # the board's runtime would refuse it: no upload
        row.update(error=support["warning"], board_loadable=False, warnings=[support["warning"]])
        return row
    try:
        target = BoardTarget.from_section(board)
        result = benchmark_on_board(path, target, remote_dir=board.remote_dir, runs=runs, python=board.python)
    except SegzooError as exc:
        row["error"] = str(exc)
        return row
    row.update(device=f"STM32MP2 board {target.address}", runtime=f"{result['runtime']} ({result['delegate']})",
               latency_ms=result["median_ms"], latency_p90_ms=result.get("p90_ms"),
               primary_unit=result.get("delegate"), details=result)
    return row
