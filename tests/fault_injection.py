"""Kill -9 segzoo at random points of a long job, run the same command again, and compare with an uninterrupted run.

A *scenario* is a configuration (written as a YAML file) run through ``stm32ai_main.py`` and the list of outputs that
must come out identical. :func:`kill_and_rerun` runs it once with a fault: SIGKILL at the N-th publication of a file
(``tests/fault_runner.py``) or after a random delay; checks that no file at its final name is damaged (sha256
sidecars, bundle manifest); runs the same command again in the same run directory (``hydra.run.dir``); checks that it
finishes, leaves no temporary file, and gives the outputs of the uninterrupted reference run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from reliability_helpers import run_dir_problems

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "fault_runner.py"
TIMEOUT_S = 900


@dataclass(frozen=True)
class Scenario:
    """One command to interrupt: its configuration and the outputs (relative paths) an interrupted run must match."""

    name: str
    config: dict
    outputs: tuple[str, ...]
    json_ignore: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per JSON output, keys that legitimately differ between two runs (a creation time)."""


@dataclass
class KillResult:
    """What one kill-and-rerun found."""

    scenario: str
    fault: str
    killed: bool
    after_kill: list[str]
    rerun_code: int
    after_rerun: list[str]
    differences: list[str]

    @property
    def ok(self) -> bool:
        return not self.after_kill and self.rerun_code == 0 and not self.after_rerun and not self.differences


def _env(count_file: Path | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests")]),
           "TF_CPP_MIN_LOG_LEVEL": "3", "HYDRA_FULL_ERROR": "1"}
    if count_file is not None:
        env["SEGZOO_FAULT_COUNT"] = str(count_file)
    return env


def write_config(scenario: Scenario, folder: Path) -> Path:
    """The scenario's configuration as ``<folder>/<name>.yaml``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{scenario.name}.yaml"
    path.write_text(yaml.safe_dump(scenario.config))
    return path


def _argv(config: Path, run_dir: Path, kill_at: int | None = None) -> list[str]:
    fault = ["--kill-at-publish", str(kill_at)] if kill_at is not None else []
    return [sys.executable, str(RUNNER), *fault, "--", "--config-path", str(config.parent), "--config-name",
            config.stem, f"hydra.run.dir={run_dir}"]


def run(config: Path, run_dir: Path, *, kill_at: int | None = None, kill_after_s: float | None = None,
        count_file: Path | None = None, cwd: Path | None = None) -> tuple[int, bool]:
    """Run the command (with a fault); ``(exit code, killed by SIGKILL)``."""
    process = subprocess.Popen(_argv(config, run_dir, kill_at), cwd=cwd or config.parent, env=_env(count_file),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if kill_after_s is not None:
            try:
                process.wait(timeout=kill_after_s)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    killed = process.returncode == -signal.SIGKILL
    if process.returncode not in (0, -signal.SIGKILL):
        sys.stderr.write(stderr[-4000:])
    return process.returncode, killed


def reference(scenario: Scenario, folder: Path) -> tuple[Path, int, float]:
    """An uninterrupted run: its directory, how many publications it makes, and how long it takes."""
    config = write_config(scenario, folder)
    count_file = folder / f"{scenario.name}.publications"
    run_dir = folder / f"{scenario.name}_reference"
    start = time.perf_counter()
    code, _ = run(config, run_dir, count_file=count_file)
    if code != 0:
        raise AssertionError(f"the reference run of {scenario.name} failed with exit code {code}")
    return run_dir, int(count_file.read_text()), time.perf_counter() - start


def bundle_problems(run_dir: Path) -> list[str]:
    """A deployment bundle at its final name must verify against its manifest."""
    from segzoo.deployment.bundle import verify_bundle

    bundle = run_dir / "deployment" / "segzoo_seg"
    return [f"bundle: {p}" for p in verify_bundle(bundle)] if bundle.exists() else []


def _normalised(path: Path, ignore: tuple[str, ...]) -> bytes:
    if not ignore:
        return path.read_bytes()
    data = json.loads(path.read_text())
    for key in ignore:
        data.pop(key, None)
    return json.dumps(data, sort_keys=True).encode()


def differences(scenario: Scenario, reference_dir: Path, run_dir: Path) -> list[str]:
    """Outputs that are missing or differ from the reference run's."""
    found = []
    for name in scenario.outputs:
        ours, theirs = run_dir / name, reference_dir / name
        if not ours.is_file():
            found.append(f"{name}: missing")
            continue
        ignore = scenario.json_ignore.get(name, ())
        if hashlib.sha256(_normalised(ours, ignore)).digest() != hashlib.sha256(_normalised(theirs, ignore)).digest():
            found.append(f"{name}: differs from the uninterrupted run")
    return found


def kill_and_rerun(scenario: Scenario, folder: Path, reference_dir: Path, tag: str, *, kill_at: int | None = None,
                   kill_after_s: float | None = None) -> KillResult:
    """Interrupt the scenario once (``kill_at`` publication or ``kill_after_s`` seconds), check, rerun, compare."""
    config = write_config(scenario, folder)
    run_dir = folder / f"{scenario.name}_{tag}"
    _, killed = run(config, run_dir, kill_at=kill_at, kill_after_s=kill_after_s)
    after_kill = run_dir_problems(run_dir) + bundle_problems(run_dir) if run_dir.exists() else []
    code, _ = run(config, run_dir)
    after_rerun = run_dir_problems(run_dir, allow_temporaries=False) + bundle_problems(run_dir)
    fault = f"publication {kill_at}" if kill_at is not None else f"{kill_after_s:.1f} s"
    return KillResult(scenario.name, fault, killed, after_kill, code, after_rerun,
                      differences(scenario, reference_dir, run_dir) if code == 0 else [])


# -------------------------------------------------------------------------------------------------- scenarios
def deployment_scenario(model: Path, class_names: list[str]) -> Scenario:
    """Build the board bundle of a .tflite model (no board: the bundle only)."""
    config = {"operation_mode": "deployment", "general": {"model_path": str(model)},
              "dataset": {"class_names": class_names}, "mlflow": {"enabled": False}}
    files = ("deeplab.tflite", "labels.txt", "preprocessing.json", "segment.py", "launch.sh", "manifest.json")
    outputs = tuple(f"deployment/segzoo_seg/{name}" for name in files)
    return Scenario("deployment", config, outputs,
                    json_ignore={"deployment/segzoo_seg/manifest.json": ("created_utc",)})


def quantization_scenario(model: Path, datasets: Path) -> Scenario:
    """Quantize a float model to int8 per-tensor, evaluate float and int8 on the built-in dataset, compare."""
    config = {"operation_mode": "quantization", "general": {"model_path": str(model)},
              "dataset": {"name": "synthetic_shapes", "root": str(datasets)},
              "quantization": {"calibration_images": 8}, "evaluation": {"max_images": 8},
              "mlflow": {"enabled": False}}
    name = f"{model.stem}_int8_per_tensor.tflite"
    timing = ("seconds", "images_per_second", "model")
    return Scenario("quantization", config,
                    (f"quantized_models/{name}", "evaluation_report.json", "quantized_evaluation_report.json"),
                    json_ignore={"evaluation_report.json": timing, "quantized_evaluation_report.json": timing})
