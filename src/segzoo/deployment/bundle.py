"""A deployment bundle: one directory with everything the board needs, and the sha256 of every file.

Layout: the model (``.tflite``, and the ``.nb`` NPU binary when given), ``labels.txt``, ``preprocessing.json``
(segzoo's preprocessing, the model input size and quantization), the board app (``segment.py``, ``launch.sh``)
and ``manifest.json`` (size and sha256 of each file, written last). A pose bundle (``build_pose_bundle``) holds
the detector and the landmark model, ``pose_config.json`` and ``pose.py`` instead of the labels and
preprocessing. The bundle is staged beside its destination and
renamed into place, so a run directory never holds a half-built bundle. The board checks the same manifest with
``segment.py --verify``; ``verify_bundle`` here runs that very code.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import numpy as np

from segzoo import __version__
from segzoo.benchmarking.estimate import check_bundle_loadable, check_loadable_on_board
from segzoo.errors import ConfigError, ModelError, SegzooError
from segzoo.io import copy_file, staging_dir, verified, write_json, write_text
from segzoo.preprocess import Preprocessing
from segzoo.runners import Runner, check_output_classes, load_runner
from segzoo.runtime.litert import LiteRTRunner
from segzoo.tasks.pose_estimation.pipeline import PosePipeline
from segzoo.tasks.pose_estimation.preset import PosePreset

log = logging.getLogger(__name__)

BOARD_APP_DIR = Path(__file__).resolve().parent / "board_app"
BOARD_APP_FILES = ("segment.py", "launch.sh")
POSE_APP_FILES = ("pose.py", "common.py", "segment.py", "launch.sh")
POSE_CONFIG = "pose_config.json"
MANIFEST = "manifest.json"
PREPROCESSING = "preprocessing.json"
LABELS = "labels.txt"
BUNDLE_FORMAT = "segzoo-bundle/1"
VOID_INDEX = 255
_APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class BundleError(SegzooError):
    """A bundle that is incomplete or whose files do not match its manifest."""

    exit_code = 4


def build_bundle(model_path: str | Path, out_dir: str | Path, *, class_names: list[str], preprocessing: dict,
                 label_file: str | None = None, nb_model: Path | None = None, app_name: str = "segzoo_seg") -> Path:
    """Build ``out_dir/app_name`` (replacing an older bundle there) and return its path.

    ``preprocessing`` is ``Preprocessing.to_dict()``; ``label_file`` (optional) is shipped as ``labels.txt``
    and must list as many names as ``class_names``. The model is loaded once to check that its input channels
    match the colour mode and its outputs match the class names. A model with a custom op that X-LINUX-AI's runtime
    has no kernel for is refused (ModelError naming the op): the board could not load it, and segzoo does not ship
    op kernels.
    """
    if not _APP_NAME.fullmatch(app_name or ""):
        raise ConfigError(f"app name {app_name!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
    model_path = _existing(model_path, ".tflite")
    check_loadable_on_board(model_path)
    nb_path = _existing(nb_model, ".nb") if nb_model is not None else None
    pp = _preprocessing(preprocessing)
    labels_text = _labels_text(class_names, label_file)
    runner = load_runner(model_path, num_threads=1)
    _check_model(runner, pp, len(class_names))

    def fill(stage: Path) -> tuple[list[Path], dict]:
        files = [_copy(model_path, stage), *([_copy(nb_path, stage)] if nb_path else [])]
        files.append(write_text(stage / LABELS, labels_text, checksum=False))
        files.append(write_json(stage / PREPROCESSING, _preprocessing_json(runner, pp, len(class_names)),
                                checksum=False))
        files.extend(_copy(BOARD_APP_DIR / name, stage) for name in BOARD_APP_FILES)
        return files, {"model": model_path.name, "nb_model": nb_path.name if nb_path else None}

    return _staged_bundle(Path(out_dir), app_name, fill)


def build_pose_bundle(preset: PosePreset, detector: str | Path, landmark: str | Path, out_dir: str | Path, *,
                      nb_models: dict[str, Path] | None = None, app_name: str = "segzoo_pose") -> Path:
    """Build ``out_dir/app_name`` for a detector + landmark pose pipeline and return its path.

    Holds both models (and their ``.nb`` binaries, ``nb_models`` keyed ``detector``/``landmark``), the preset as
    ``pose_config.json``, ``pose.py`` with ``common.py`` (network runtimes), ``segment.py`` (manifest check,
    runtimes) and ``launch.sh`` (which
    runs ``pose.py`` when ``pose_config.json`` is there), and the manifest, whose ``models`` name both files.
    Both models are loaded once: their outputs must bind to the preset's roles.
    """
    if not _APP_NAME.fullmatch(app_name or ""):
        raise ConfigError(f"app name {app_name!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
    models = {"detector": _existing(detector, ".tflite"), "landmark": _existing(landmark, ".tflite")}
    check_bundle_loadable(models.values())
    unknown = sorted(set(nb_models or {}) - set(models))
    if unknown:
        raise ConfigError(f"nb_models: unknown role(s) {unknown}; use detector and landmark")
    nbs = {role: _existing(path, ".nb") for role, path in (nb_models or {}).items()}
    names = [p.name for p in (*models.values(), *nbs.values())]
    if len(set(names)) != len(names):
        raise ConfigError(f"the pose bundle's model files must have different names, got {names}")
    PosePipeline(preset, LiteRTRunner(models["detector"], 1), LiteRTRunner(models["landmark"], 1))

    def fill(stage: Path) -> tuple[list[Path], dict]:
        files = [_copy(path, stage) for path in (*models.values(), *nbs.values())]
        files.append(write_json(stage / POSE_CONFIG, preset.to_dict(), checksum=False))
        files.extend(_copy(BOARD_APP_DIR / name, stage) for name in POSE_APP_FILES)
        return files, {"model": None, "nb_model": None, "entry": "pose.py",
                       "models": {role: path.name for role, path in models.items()},
                       "nb_models": {role: path.name for role, path in nbs.items()}}

    return _staged_bundle(Path(out_dir), app_name, fill)


def _staged_bundle(out_dir: Path, app_name: str, fill) -> Path:
    """Write the files ``fill(stage)`` returns and the manifest in a staging folder, then rename it into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = staging_dir(out_dir, app_name)
    try:
        files, entries = fill(stage)
        write_json(stage / MANIFEST, {**_manifest(stage, files, app_name, entries["model"], entries["nb_model"]),
                                      **entries}, checksum=False)
        bundle = out_dir / app_name
        _replace_dir(stage, bundle)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("Deployment bundle written to %s (%d files)", bundle, len(files) + 1)
    return bundle


def verify_bundle(bundle_dir: str | Path) -> list[str]:
    """Problems with a bundle (missing files, size or sha256 mismatches); empty when it is intact.

    The same function the board runs (``segment.py --verify``), so both sides always agree.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        return [f"{bundle_dir}: not a directory"]
    return board_app().verify_manifest(bundle_dir)


@functools.cache
def board_app() -> ModuleType:
    """The board application module (``board_app/segment.py``) loaded from its file; it imports no segzoo."""
    path = BOARD_APP_DIR / "segment.py"
    spec = importlib.util.spec_from_file_location("segzoo_board_segment", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _existing(path: str | Path, suffix: str) -> Path:
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ModelError(f"{path}: expected a {suffix} file")
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    return verified(path)


def _preprocessing(preprocessing: dict) -> Preprocessing:
    try:
        return Preprocessing(**preprocessing)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"deployment preprocessing {preprocessing}: {exc}") from exc


def _labels_text(class_names: list[str], label_file: str | None) -> str:
    """labels.txt content: the label file given, or the class names, one per line."""
    names = [str(name) for name in class_names]
    if not names or any(not name.strip() or "\n" in name for name in names):
        raise ConfigError(f"class names {names}: need at least one, each a non-empty single line")
    if label_file is None:
        return "\n".join(names) + "\n"
    try:
        text = Path(label_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"label file {label_file}: cannot read it ({exc.strerror or exc})") from exc
    listed = [line.strip() for line in text.splitlines() if line.strip()]
    if len(listed) != len(names):
        raise ConfigError(f"label file {label_file} lists {len(listed)} classes but there are {len(names)} "
                          "class names")
    return "\n".join(listed) + "\n"


def _check_model(runner: Runner, pp: Preprocessing, num_classes: int) -> None:
    """The model must take the preprocessing's channels and output ``num_classes`` classes (one inference)."""
    if runner.channels != pp.channels:
        raise ModelError(f"{runner.path.name} takes {runner.channels} input channels but color_mode "
                         f"{pp.color_mode!r} gives {pp.channels}")
    output = runner.predict(np.zeros((1, *runner.input_hw, runner.channels), dtype=np.float32))[0]
    check_output_classes(runner, output, num_classes)


def _preprocessing_json(runner: Runner, pp: Preprocessing, num_classes: int) -> dict:
    return {
        "preprocessing": pp.to_dict(),
        "input": {"height": runner.input_hw[0], "width": runner.input_hw[1], "channels": runner.channels,
                  "quantization": runner.input_quantization.to_dict()},
        "output_kind": runner.output_kind,
        "num_classes": num_classes,
        "void_index": VOID_INDEX,
    }


def _copy(source: Path, directory: Path) -> Path:
    """Copy into the bundle (the manifest holds the checksums; a source with a sha256 sidecar is checked)."""
    return copy_file(source, directory / source.name, checksum=False)


def _manifest(stage: Path, files: list[Path], app_name: str, model: str, nb_model: str | None) -> dict:
    board_app_module = board_app()
    return {
        "format": BUNDLE_FORMAT,
        "app": app_name,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "segzoo_version": __version__,
        "model": model,
        "nb_model": nb_model,
        "entry": "segment.py",
        "launch": "launch.sh",
        "files": {path.name: {"sha256": board_app_module.sha256_file(path), "size": path.stat().st_size}
                  for path in sorted(files, key=lambda p: p.name)},
    }


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is moved aside first and deleted after."""
    if not target.exists():
        os.replace(new, target)
        return
    old = staging_dir(target.parent, f"{target.name}.old")
    os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
