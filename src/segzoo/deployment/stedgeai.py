"""The STM32MP2 NPU binary (.nb, Network Binary Graph) from ST Edge AI Core.

Runs ``stedgeai generate --model <model.tflite> --target stm32mp25 --output <dir> --workspace <dir>``: the
generate command of ST Edge AI Core for STM32MPU targets writes ``<model stem>.nb`` into the output directory.
The tool is not redistributable; its path comes from the configuration. Its full output is kept beside the .nb.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from segzoo.errors import ConfigError, ModelError
from segzoo.io import TEMP_MARK, sidecar_path, write_sidecar, write_text

log = logging.getLogger(__name__)

TARGET = "stm32mp25"
REPORT_SUFFIX = "_stedgeai_generate.txt"
_TAIL_LINES = 15


def generate_nb(tflite_path: str | Path, stedgeai_path: str | Path, out_dir: str | Path, *,
                timeout: float = 1800.0) -> Path:
    """Generate ``out_dir/<stem>.nb`` from a per-tensor int8 ``.tflite`` and return its path.

    The tool's report (its whole console output) is written to ``out_dir/<stem>_stedgeai_generate.txt``.
    ConfigError when the executable is missing; ModelError when the tool fails or writes no .nb.
    """
    tflite = Path(tflite_path)
    if tflite.suffix.lower() != ".tflite" or not tflite.is_file():
        raise ModelError(f"{tflite}: not an existing .tflite file, which ST Edge AI Core needs for an .nb")
    executable = _executable(stedgeai_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".stedgeai{TEMP_MARK}", dir=out_dir) as work:
        output, workspace = Path(work) / "output", Path(work) / "workspace"
        argv = [executable, "generate", "--model", str(tflite.resolve()), "--target", TARGET,
                "--output", str(output), "--workspace", str(workspace)]
        report = _run(argv, Path(work), timeout)
        report_path = write_text(out_dir / f"{tflite.stem}{REPORT_SUFFIX}", report)
        nb = _find_nb(output, tflite.stem)
        if nb is None:
            raise ModelError(f"{Path(executable).name} finished but wrote no .nb file for {tflite.name}; "
                             f"its report is in {report_path}:\n{_tail(report)}")
        target = out_dir / f"{tflite.stem}.nb"
        sidecar_path(target).unlink(missing_ok=True)
        shutil.move(str(nb), target)  # same file system: an atomic rename
        write_sidecar(target)
    log.info("NPU binary %s generated (%d bytes); ST Edge AI Core report: %s", target, target.stat().st_size,
             report_path)
    return target


def generate_nb_if_configured(stedgeai_path: str | None, tflite_path: Path, out_dir: Path) -> Path | None:
    """The NPU network binary when ``tools.stedgeai.path_to_stedgeai`` is set, else None."""
    return generate_nb(tflite_path, stedgeai_path, out_dir) if stedgeai_path else None


def _executable(stedgeai_path: str | Path) -> str:
    """The stedgeai executable: a path, or a name on PATH."""
    candidate = str(stedgeai_path)
    found = shutil.which(candidate) if os.sep not in candidate else candidate
    if not found or not Path(found).is_file():
        raise ConfigError(f"ST Edge AI Core executable not found: {candidate}. Install ST Edge AI Core (with its "
                          "STM32MP2 component) and give the path to its 'stedgeai' program")
    if not os.access(found, os.X_OK):
        raise ConfigError(f"ST Edge AI Core executable {found} is not executable (chmod +x it)")
    return found


def _run(argv: list[str], cwd: Path, timeout: float) -> str:
    """Run the tool; its combined output, or a ModelError with the end of it."""
    log.info("Running %s", " ".join(argv))
    try:
        completed = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ModelError(f"{Path(argv[0]).name} generate did not finish within {timeout:g} s") from exc
    except OSError as exc:
        raise ConfigError(f"cannot run {argv[0]}: {exc.strerror or exc}") from exc
    if completed.returncode != 0:
        raise ModelError(f"{Path(argv[0]).name} generate failed for {Path(argv[3]).name} "
                         f"(exit code {completed.returncode}):\n{_tail(completed.stdout)}")
    return completed.stdout


def _find_nb(output: Path, stem: str) -> Path | None:
    """``<stem>.nb`` in the output directory, else the only .nb found below it."""
    expected = output / f"{stem}.nb"
    if expected.is_file():
        return expected
    found = sorted(output.rglob("*.nb")) if output.is_dir() else []
    return found[0] if len(found) == 1 else None


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-_TAIL_LINES:])
