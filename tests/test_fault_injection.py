"""kill -9 at random points of long jobs, then the same command again: nothing lost, nothing half-written, the same
outputs as an uninterrupted run; a full disk gives a clear error and leaves nothing corrupt.

The quick tests interrupt a deployment; the ``heavy`` ones (run by ``.ci/run`` after the quick suite) interrupt a
quantization and fill a real tmpfs. ``tests/benchmarks/bench_reliability.py`` runs 20+ random kill points.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest
from fault_injection import (deployment_scenario, epochs_saved, kill_and_rerun, quantization_scenario, reference,
                             run, training_scenario, write_config)
from reliability_helpers import conv_model, run_dir_problems

from segzoo.errors import OutputError

CLASSES = ["background", "disc", "box", "triangle", "ring"]


@pytest.fixture(scope="module")
def deployment_reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deploy")
    scenario = deployment_scenario(conv_model(folder / "deeplab.tflite", classes=5), CLASSES)
    run_dir, publications, _ = reference(scenario, folder)
    return scenario, folder, run_dir, publications


@pytest.mark.slow
def test_deployment_killed_while_publishing_files_then_rerun(deployment_reference) -> None:
    scenario, folder, reference_dir, publications = deployment_reference
    assert publications >= 8  # config, bundle files, manifest, bundle folder, results
    rng = random.Random(14)
    for kill_at in sorted(rng.sample(range(1, publications + 1), 2)):
        result = kill_and_rerun(scenario, folder, reference_dir, f"kill{kill_at}", kill_at=kill_at)
        assert result.killed, result
        assert result.ok, result


@pytest.mark.heavy
def test_quantization_killed_at_random_points_then_rerun(tmp_path) -> None:
    scenario = quantization_scenario(conv_model(tmp_path / "seg5.tflite", classes=5), tmp_path / "datasets")
    reference_dir, publications, seconds = reference(scenario, tmp_path)
    rng = random.Random(7)
    faults = [{"kill_at": rng.randint(1, publications)}, {"kill_after_s": rng.uniform(0.3, 0.9) * seconds}]
    for index, fault in enumerate(faults):
        result = kill_and_rerun(scenario, tmp_path, reference_dir, f"fault{index}", **fault)
        assert result.ok, result


@pytest.mark.heavy
def test_training_killed_during_an_epoch_and_at_a_checkpoint_write_then_resumed(tmp_path) -> None:
    """Killed in its 2nd epoch (after the 1st checkpoint) and at a publication of its 3rd epoch's checkpoint files:
    resumed with training.resume_training_from, the same epochs, each logged once, and the mIoU within tolerance."""
    scenario = training_scenario(tmp_path / "datasets", epochs=3, steps_per_epoch=5)
    reference_dir, _, _ = reference(scenario, tmp_path)
    during_epoch = kill_and_rerun(scenario, tmp_path, reference_dir, "epoch2", when="in epoch 2",
                                  kill_when=lambda run_dir: epochs_saved(run_dir) >= 1)
    assert during_epoch.killed and during_epoch.resumed and during_epoch.ok, during_epoch
    count_file = tmp_path / "kill_at.count"
    at_write = kill_and_rerun(scenario, tmp_path, reference_dir, "write3", when="at a checkpoint write of epoch 3",
                              kill_at=_first_publication_after(scenario, tmp_path, count_file, epochs=2))
    assert at_write.killed and at_write.resumed and at_write.ok, at_write


def _first_publication_after(scenario, folder: Path, count_file: Path, epochs: int) -> int:  # noqa: ANN001
    """The number of the first publication made after ``epochs`` epochs were checkpointed (watched on a run)."""
    seen = []

    def note(run_dir: Path) -> bool:
        if epochs_saved(run_dir) >= epochs and not seen:
            try:
                seen.append(int(count_file.read_text()))
            except ValueError:  # caught while the runner rewrites it: read it at the next poll
                pass
        return False

    run(write_config(scenario, folder), folder / "training_counting", kill_when=note, count_file=count_file)
    return seen[0] + 1


def _mount_tmpfs(folder: Path, size_kb: int) -> bool:
    folder.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


FULL_DISK_KB = {"deployment": (4096, 24), "quantization": (4096, 24), "training": (65536, 400)}
"""Per job: the size of the tmpfs, and the free space left on it by a filler: less than the job needs (the
training's checkpoints are a few MB), so it fails while writing its outputs; once the filler is removed, it fits."""


def _full_disk_scenario(name: str, tmp_path: Path):  # noqa: ANN202 - a fault_injection.Scenario
    if name == "deployment":
        return deployment_scenario(conv_model(tmp_path / "deeplab.tflite", classes=5), CLASSES)
    if name == "quantization":
        return quantization_scenario(conv_model(tmp_path / "seg5.tflite", classes=5), tmp_path / "datasets")
    return training_scenario(tmp_path / "datasets", epochs=1, steps_per_epoch=2)


@pytest.mark.heavy
@pytest.mark.parametrize("name", sorted(FULL_DISK_KB))
def test_a_full_disk_is_a_clear_error_and_a_rerun_with_space_finishes(name: str, tmp_path) -> None:
    disk = tmp_path / "disk"
    size_kb, free_kb = FULL_DISK_KB[name]
    if not _mount_tmpfs(disk, size_kb):
        pytest.skip("cannot mount a tmpfs here (not root); tests/test_reliability.py simulates ENOSPC instead")
    try:
        scenario = _full_disk_scenario(name, tmp_path)
        config = write_config(scenario, tmp_path)
        filler = disk / "filler"
        with open(filler, "wb") as handle:  # leave less than the job needs
            handle.write(b"\0" * (shutil.disk_usage(disk).free - free_kb * 1024))
        run_dir = disk / "run"
        code, _ = run(config, run_dir)
        assert code == OutputError.exit_code
        assert run_dir_problems(run_dir, allow_temporaries=False) == []
        assert not (run_dir / "deployment" / "segzoo_seg").exists()
        filler.unlink()
        code, _ = run(config, run_dir)
        assert code == 0 and run_dir_problems(run_dir, allow_temporaries=False) == []
        assert all((run_dir / output).is_file() for output in scenario.outputs)
    finally:
        subprocess.run(["umount", str(disk)], check=False)
