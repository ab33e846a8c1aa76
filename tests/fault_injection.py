"""Kill -9 segzoo at random points of a long job, run the same command again, and compare with an uninterrupted run.

A *scenario* is a configuration (written as a YAML file) run through ``stm32ai_main.py`` and the list of outputs that
must come out identical. :func:`kill_and_rerun` runs it once with a fault: SIGKILL at the N-th publication of a file
(``tests/fault_runner.py``) or after a random delay; checks that no file at its final name is damaged (sha256
sidecars, bundle manifest); runs the same command again in the same run directory (``hydra.run.dir``); checks that it
finishes, leaves no temporary file, and gives the outputs of the uninterrupted reference run.

Training is compared on its epochs (each logged once), the epochs of work lost (at most one: the epochs completed
when it was killed less those the rerun starts after) and its final validation mIoU, within a tolerance
(:data:`TRAINING_MIOU_TOLERANCE`) next to the measured run-to-run noise. A killed training is relaunched with the same
command in the same run directory (it restarts from ``<run dir>/backup``), or, with ``resume=True``, resumed with
``training.resume_training_from=<killed run>`` into ``<killed run>_resumed`` when it saved a resumable state
(``saved_models/training_state.json``).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from reliability_helpers import run_dir_problems

REPO = Path(__file__).resolve().parents[1]
RUNNER = REPO / "tests" / "fault_runner.py"
TIMEOUT_S = 900
TRAINING_MIOU_TOLERANCE = 0.05
"""Largest accepted |mIoU difference| between a killed-and-resumed training and the uninterrupted one (final
validation mIoU and the evaluation of the best model; the benchmark prints the measured differences next to the
run-to-run noise: the same run repeated, and another seed)."""
_RESTART = re.compile(r"(?:Restarting|Resuming from) \S+ after epoch (\d+) \(")


@dataclass(frozen=True)
class Scenario:
    """One command to interrupt: its configuration and the outputs (relative paths) an interrupted run must match."""

    name: str
    config: dict
    outputs: tuple[str, ...]
    json_ignore: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per JSON output, keys that legitimately differ between two runs (a creation time)."""
    resume_key: str | None = None
    """A key that makes the rerun continue the killed run (``training.resume_training_from``) when it left a
    resumable state; None: the same command in the same run directory."""
    compare: Callable[[Path, Path], tuple[list[str], dict[str, float]]] | None = None
    """``(reference dir, run dir) -> (differences, measured deviations by name)`` instead of byte-identical
    outputs."""


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
    resumed: bool = False
    deviation: dict[str, float] | None = None
    how: str = ""
    """A training's rerun: ``relaunch`` (same command, same run directory) or ``resume`` (resume_training_from)."""
    completed_at_kill: int | None = None
    """A training's epochs completed (logged) when it was killed."""
    restarted_after: int | None = None
    """The epoch a training's rerun started after (0: from the start)."""

    @property
    def lost_epochs(self) -> int | None:
        """Epochs of work lost (completed when killed, trained again by the rerun); None for other jobs."""
        if self.completed_at_kill is None or self.restarted_after is None:
            return None
        return self.completed_at_kill - self.restarted_after

    @property
    def ok(self) -> bool:
        lost = self.lost_epochs
        return (not self.after_kill and self.rerun_code == 0 and not self.after_rerun and not self.differences
                and (lost is None or 0 <= lost <= 1))


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


def _argv(config: Path, run_dir: Path, kill_at: int | None = None, overrides: tuple[str, ...] = (),
          kill_of: str | None = None) -> list[str]:
    fault = ["--kill-at-publish", str(kill_at)] if kill_at is not None else []
    fault += ["--kill-at-publish-of", kill_of] if kill_of is not None else []
    return [sys.executable, str(RUNNER), *fault, "--", "--config-path", str(config.parent), "--config-name",
            config.stem, f"hydra.run.dir={run_dir}", *overrides]


def run(config: Path, run_dir: Path, *, kill_at: int | None = None, kill_of: str | None = None,
        kill_after_s: float | None = None, kill_when: Callable[[Path], bool] | None = None,
        count_file: Path | None = None, cwd: Path | None = None, overrides: tuple[str, ...] = ()) -> tuple[int, bool]:
    """Run the command with a fault (SIGKILL at the ``kill_at``-th publication, at the K-th publication of a file
    name, ``kill_of="NAME:K"``, after ``kill_after_s`` seconds, or as soon as ``kill_when(run_dir)`` holds) and
    extra Hydra overrides; ``(exit code, killed by SIGKILL)``.
    The command's stderr goes to ``<config folder>/<run dir name>.stderr`` (a pipe could fill and stall it; the run
    directory may be on a full disk)."""
    stderr_path = config.parent / f"{run_dir.name}.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(_argv(config, run_dir, kill_at, overrides, kill_of), cwd=cwd or config.parent,
                                   env=_env(count_file), stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            _watch(process, kill_after_s, kill_when, run_dir)
            process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    killed = process.returncode == -signal.SIGKILL
    if process.returncode not in (0, -signal.SIGKILL):
        sys.stderr.write(stderr_path.read_text()[-4000:])
    return process.returncode, killed


def _watch(process: subprocess.Popen, kill_after_s: float | None, kill_when: Callable[[Path], bool] | None,
           run_dir: Path) -> None:
    """SIGKILL the process after ``kill_after_s`` seconds or once ``kill_when(run_dir)`` holds (polled)."""
    if kill_after_s is None and kill_when is None:
        return
    deadline = time.monotonic() + (kill_after_s if kill_after_s is not None else TIMEOUT_S)
    while process.poll() is None:
        if time.monotonic() >= deadline or (kill_when is not None and kill_when(run_dir)):
            process.send_signal(signal.SIGKILL)
            return
        time.sleep(0.05)


def reference(scenario: Scenario, folder: Path, tag: str = "reference", overrides: tuple[str, ...] = (),
              watch: Callable[[Path], object] | None = None) -> tuple[Path, int, float]:
    """An uninterrupted run: its directory, how many publications it makes, and how long it takes; ``watch(run
    dir)`` is polled while it runs (it never stops it)."""
    config = write_config(scenario, folder)
    count_file = folder / f"{scenario.name}.publications"
    Path(f"{count_file}.names").unlink(missing_ok=True)
    run_dir = folder / f"{scenario.name}_{tag}"
    start = time.perf_counter()
    observe = (lambda path: bool(watch(path)) and False) if watch is not None else None
    code, _ = run(config, run_dir, count_file=count_file, overrides=overrides, kill_when=observe)
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


def publications(scenario: Scenario, folder: Path) -> list[tuple[int, str]]:
    """The publications of the scenario's last reference run in ``folder``: (number, file name published)."""
    names = folder / f"{scenario.name}.publications.names"
    return [(int(number), name) for number, name in (line.split(" ", 1) for line in names.read_text().splitlines())]


def completed_epochs(run_dir: Path) -> int:
    """The epochs a training has completed and logged (rows of its CSV log; 0 before the first)."""
    try:
        with open(run_dir / "logs" / "training_log.csv", newline="") as handle:
            return sum(1 for row in csv.DictReader(handle) if row.get("epoch"))
    except OSError:
        return 0


def restarted_after(run_dir: Path) -> int:
    """The epoch the last run in ``run_dir`` restarted or resumed after (its log), 0 when it started afresh."""
    try:
        found = _RESTART.findall((run_dir / "stm32ai_main.log").read_text(errors="replace"))
    except OSError:
        return 0
    return int(found[-1]) if found else 0


def kill_and_rerun(scenario: Scenario, folder: Path, reference_dir: Path, tag: str, *, kill_at: int | None = None,
                   kill_of: str | None = None, kill_after_s: float | None = None,
                   kill_when: Callable[[Path], bool] | None = None, when: str = "", resume: bool = False) -> KillResult:
    """Interrupt the scenario once (``kill_at`` publication, ``kill_of`` file publication, ``kill_after_s`` seconds
    or ``kill_when``), check, rerun (the same command in the same run directory; with ``resume``, a training that
    saved a state is resumed into a new one), compare."""
    config = write_config(scenario, folder)
    run_dir = folder / f"{scenario.name}_{tag}"
    _, killed = run(config, run_dir, kill_at=kill_at, kill_of=kill_of, kill_after_s=kill_after_s,
                    kill_when=kill_when)
    after_kill = run_dir_problems(run_dir) + bundle_problems(run_dir) if run_dir.exists() else []
    training = scenario.resume_key is not None
    completed = completed_epochs(run_dir) if training else None
    out_dir, overrides = run_dir, ()
    resumed = killed and resume and training and (run_dir / "saved_models" / "training_state.json").is_file()
    if resumed:
        out_dir = run_dir.with_name(f"{run_dir.name}_resumed")
        overrides = (f"++{scenario.resume_key}={run_dir}",)
    code, _ = run(config, out_dir, overrides=overrides)
    after_rerun = run_dir_problems(out_dir, allow_temporaries=False) + bundle_problems(out_dir)
    fault = when or (f"publication {kill_at}" if kill_at is not None else kill_of
                     or (f"{kill_after_s:.1f} s" if kill_after_s is not None else "when watched"))
    found, deviation = [], None
    if code == 0 and scenario.compare is not None:
        found, deviation = scenario.compare(reference_dir, out_dir)
    elif code == 0:
        found = differences(scenario, reference_dir, out_dir)
    result = KillResult(scenario.name, fault, killed, after_kill, code, after_rerun, found, resumed, deviation)
    if training:
        result.how = "resume" if resumed else "relaunch"
        result.completed_at_kill = completed if killed else completed_epochs(out_dir)
        result.restarted_after = restarted_after(out_dir) if killed else result.completed_at_kill
        result.resumed = result.restarted_after > 0
    return result


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


def training_outcome(run_dir: Path) -> dict:
    """What a training run ended with: its logged epochs, epochs done, per-epoch logs, final validation mIoU and the
    evaluation of its best model."""
    with open(run_dir / "logs" / "training_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    state = json.loads((run_dir / "saved_models" / "training_state.json").read_text())
    report = json.loads((run_dir / "evaluation_report.json").read_text())
    return {"epochs": [int(row["epoch"]) for row in rows], "epochs_done": int(state["epochs_done"]), "rows": rows,
            "final_val_miou": float(rows[-1]["val_miou"]), "eval_miou": float(report["miou"])}


def training_differences(reference_dir: Path, run_dir: Path) -> tuple[list[str], dict[str, float]]:
    """The same epochs, each logged once, the same epochs done, the final validation mIoU and the best model's
    evaluated mIoU within the tolerance; the measured differences (``final_val_miou``, ``eval_miou``)."""
    try:
        ours, theirs = training_outcome(run_dir), training_outcome(reference_dir)
    except (OSError, KeyError, ValueError, IndexError) as exc:
        return [f"missing or unreadable training output: {exc}"], {}
    found = []
    if ours["epochs"] != theirs["epochs"]:
        found.append(f"epochs logged {ours['epochs']}, uninterrupted run {theirs['epochs']}")
    if ours["epochs_done"] != theirs["epochs_done"]:
        found.append(f"epochs done {ours['epochs_done']}, uninterrupted run {theirs['epochs_done']}")
    deviations = {key: abs(ours[key] - theirs[key]) for key in ("final_val_miou", "eval_miou")}
    for key, deviation in deviations.items():
        if deviation > TRAINING_MIOU_TOLERANCE:
            found.append(f"{key} {ours[key]:.4f}, uninterrupted run {theirs[key]:.4f} "
                         f"(tolerance {TRAINING_MIOU_TOLERANCE})")
    return found, deviations


LEARNING_RUN = {"epochs": 6, "steps_per_epoch": 15, "output_stride": 8, "learning_rate": 0.01}
"""The smallest training found whose validation mIoU rises over its epochs (0.155, i.e. all background, for two
epochs, then 0.159, 0.213, 0.211, 0.225 with seed 127): 6 epochs of 15 batches of 16 at 64x64, DeepLabV3 alpha 0.35
at output stride 8, Adam 0.01. A run that stops improving after its first epoch would make "the same final mIoU"
vacuous. (The same at output stride 16, Adam 0.003, 10 batches: all background for 6 epochs.)"""


def training_scenario(datasets: Path, epochs: int = LEARNING_RUN["epochs"],
                      steps_per_epoch: int = LEARNING_RUN["steps_per_epoch"],
                      output_stride: int = LEARNING_RUN["output_stride"],
                      learning_rate: float = LEARNING_RUN["learning_rate"]) -> Scenario:
    """A short DeepLabV3 training on the built-in dataset, evaluated at the end (training and evaluate steps); by
    default :data:`LEARNING_RUN`."""
    config = {"operation_mode": "training", "general": {"global_seed": 127},
              "dataset": {"name": "synthetic_shapes", "root": str(datasets)},
              "training": {"model": {"name": "deeplab_v3", "alpha": 0.35, "output_stride": output_stride,
                                     "aspp": "v2", "input_shape": [64, 64, 3], "dropout": 0.0},
                           "batch_size": 16, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
                           "optimizer": {"name": "adam", "learning_rate": learning_rate},
                           "lr_schedule": {"name": "constant"}, "tensorboard": False},
              "evaluation": {"max_images": 40}, "mlflow": {"enabled": False}}
    return Scenario("training", config, ("saved_models/best_model.keras", "evaluation_report.json"),
                    resume_key="training.resume_training_from", compare=training_differences)


def epochs_saved(run_dir: Path) -> int:
    """The epochs a training run has fully checkpointed so far: those of its restart state (``backup/state.json``,
    the last file written at the end of an epoch); 0 before the first."""
    try:
        return int(json.loads((run_dir / "backup" / "state.json").read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
