"""The board bundle of a promptable (SAM2) model: the encoder and decoder ``.tflite`` files and the point app.

Layout: both models, ``sam2_config.json`` (model size, number of point inputs, SAM2 normalization, resize mode,
mask threshold, and for each network its input and output names in the order of the file's tensors, with their
shapes: the board app binds tensors by that order, which ``stai_mpu`` shares with the TFLite interpreter),
``sam2_point.py`` with ``common.py`` (network runtimes) and ``segment.py`` (manifest check, image reading,
camera, runtimes), ``launch.sh`` and ``manifest.json`` (``"entry": "sam2_point.py"``, ``"models": {"encoder",
"decoder"}``). Staged and renamed into place like every bundle (:func:`segzoo.deployment.bundle._staged_bundle`).
"""

from __future__ import annotations

from pathlib import Path

from segzoo.benchmarking.estimate import check_bundle_loadable
from segzoo.deployment.bundle import _APP_NAME, BOARD_APP_DIR, _copy, _existing, _staged_bundle
from segzoo.errors import ConfigError, ModelError
from segzoo.io import write_json

POINT_APP_FILES = ("sam2_point.py", "common.py", "segment.py", "launch.sh")
POINT_CONFIG = "sam2_config.json"
ROLES = ("encoder", "decoder")
REQUIRED = {"encoder": ("image",), "decoder": ("image_embeddings", "high_res_features_s0", "high_res_features_s1",
                                                "point_coords", "point_labels", "masks", "iou")}


def tensor_order(path: Path) -> dict:
    """``{"inputs": [names], "outputs": [names], "shapes": {name: shape}}`` of a ``.tflite`` file's
    ``serving_default`` signature, names in the order of the interpreter's input and output tensors."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
        runner = interpreter.get_signature_runner("serving_default")
    except Exception as exc:  # noqa: BLE001 - any loader failure names the file
        raise ModelError(f"{path}: cannot read its 'serving_default' signature ({type(exc).__name__}: {exc})") from exc
    spec: dict = {"shapes": {}}
    for what, signature, details in (("inputs", runner.get_input_details(), interpreter.get_input_details()),
                                     ("outputs", runner.get_output_details(), interpreter.get_output_details())):
        by_index = {int(d["index"]): name for name, d in signature.items()}
        spec[what] = [by_index[int(d["index"])] for d in details]
        spec["shapes"].update({name: [int(v) for v in d["shape"]] for name, d in signature.items()})
    return spec


def point_config(encoder: Path, decoder: Path, *, resize_mode: str, threshold: float) -> dict:
    """The content of ``sam2_config.json``; ModelError when the files are not a SAM2 encoder and decoder."""
    from segzoo.tasks.promptable_segmentation.preprocess import PIXEL_MEAN, PIXEL_STD

    specs = {"encoder": tensor_order(encoder), "decoder": tensor_order(decoder)}
    for role, names in REQUIRED.items():
        missing = [n for n in names if n not in specs[role]["shapes"]]
        if missing:
            raise ModelError(f"{encoder if role == 'encoder' else decoder}: not a SAM2 {role}, its signature lacks "
                             f"{', '.join(missing)}")
    shapes = specs["decoder"]["shapes"]
    size = specs["encoder"]["shapes"]["image"][1]
    return {"format": "segzoo-sam2/1", "image_size": size, "num_points": shapes["point_coords"][1],
            "mask_size": shapes["masks"][1], "num_masks": shapes["masks"][-1], "resize_mode": resize_mode,
            "pixel_mean": [float(v) for v in PIXEL_MEAN], "pixel_std": [float(v) for v in PIXEL_STD],
            "mask_threshold": float(threshold), **specs}


def build_point_bundle(encoder: str | Path, decoder: str | Path, out_dir: str | Path, *, resize_mode: str,
                       threshold: float, app_name: str = "segzoo_sam2") -> Path:
    """Build ``out_dir/app_name`` for an encoder + decoder pair and return its path (see the module docstring)."""
    if not _APP_NAME.fullmatch(app_name or ""):
        raise ConfigError(f"app name {app_name!r}: use letters, digits, '.', '_' or '-' (it names a directory)")
    models = {"encoder": _existing(encoder, ".tflite"), "decoder": _existing(decoder, ".tflite")}
    if models["encoder"].name == models["decoder"].name:
        raise ConfigError(f"the encoder and the decoder must have different file names, both are "
                          f"{models['encoder'].name}")
    check_bundle_loadable(models.values())
    config = point_config(models["encoder"], models["decoder"], resize_mode=resize_mode, threshold=threshold)
    for role, path in models.items():
        config[role]["file"] = path.name

    def fill(stage: Path) -> tuple[list[Path], dict]:
        files = [_copy(path, stage) for path in models.values()]
        files.append(write_json(stage / POINT_CONFIG, config))
        files.extend(_copy(BOARD_APP_DIR / name, stage) for name in POINT_APP_FILES)
        return files, {"model": None, "nb_model": None, "entry": "sam2_point.py",
                       "models": {role: path.name for role, path in models.items()}}

    return _staged_bundle(Path(out_dir), app_name, fill)
