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
from fault_injection import (deployment_scenario, kill_and_rerun, quantization_scenario, reference, run,
                             write_config)
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


def _mount_tmpfs(folder: Path, size_kb: int) -> bool:
    folder.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                          capture_output=True)
    return done.returncode == 0


@pytest.mark.heavy
def test_deployment_on_a_full_disk_is_a_clear_error_and_a_rerun_with_space_finishes(tmp_path) -> None:
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, 256):
        pytest.skip("cannot mount a tmpfs here (not root); tests/test_reliability.py simulates ENOSPC instead")
    try:
        model = conv_model(tmp_path / "deeplab.tflite", classes=5)
        config = write_config(deployment_scenario(model, CLASSES), tmp_path)
        filler = disk / "filler"
        with open(filler, "wb") as handle:  # leave about 24 kB: less than the bundle needs
            free = shutil.disk_usage(disk).free
            handle.write(b"\0" * (free - 24 * 1024))
        run_dir = disk / "run"
        code, _ = run(config, run_dir)
        assert code == OutputError.exit_code
        log = (run_dir / "stm32ai_main.log").read_text() if (run_dir / "stm32ai_main.log").exists() else ""
        assert "No space left on device" in log or code == OutputError.exit_code
        assert run_dir_problems(run_dir, allow_temporaries=False) == []
        assert not (run_dir / "deployment" / "segzoo_seg").exists()
        filler.unlink()
        code, _ = run(config, run_dir)
        assert code == 0 and run_dir_problems(run_dir, allow_temporaries=False) == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)
