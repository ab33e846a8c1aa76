"""Checks across keys: value ranges, the model registry, augmentations, and what each mode needs."""

from __future__ import annotations

import difflib
from pathlib import Path
from types import MappingProxyType

from segzoo.config.ranges import check_ranges
from segzoo.config.schema import Config
from segzoo.data import SYNTHETIC_DATASET as SYNTHETIC
from segzoo.errors import ConfigError, ModelError, SegzooError
from segzoo.modes import MODES, steps_for
from segzoo.runners import KERAS_SUFFIXES, TFLITE_SUFFIXES

MODEL_SUFFIXES = KERAS_SUFFIXES + TFLITE_SUFFIXES
SPLITS = ("training", "validation", "test", "quantization")


def check_values(cfg: Config) -> list[str]:
    """Range and consistency checks that need no file system access."""
    errors: list[str] = check_ranges(cfg)
    if cfg.operation_mode not in MODES:
        close = difflib.get_close_matches(cfg.operation_mode, list(MODES), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        errors.append(f"operation_mode: bad value {cfg.operation_mode!r}; allowed values: {', '.join(MODES)}{hint}")
    errors += _check_dataset(cfg)
    errors += _check_training(cfg)
    errors += _check_model(cfg)
    if cfg.data_augmentation:
        from segzoo.data.augment_spec import validate_augmentations

        try:
            validate_augmentations(cfg.data_augmentation, "data_augmentation")
        except ConfigError as exc:
            errors.append(str(exc))
    if cfg.preprocessing.rescaling.scale == 0:
        errors.append("preprocessing.rescaling.scale: must not be 0")
    errors += _check_pose_values(cfg)
    errors += _check_points(cfg)
    return errors


def _check_pose_values(cfg: Config) -> list[str]:
    """Person-mask values that cannot both be a person and ignored (the numeric ranges are in ``ranges.py``)."""
    masks, errors = cfg.pose_estimation.person_masks, []
    if not masks.person_values:
        errors.append("pose_estimation.person_masks.person_values: give at least one mask value of a person")
    both = sorted(set(masks.person_values) & set(masks.ignore_values))
    if both:
        errors.append(f"pose_estimation.person_masks: values {both} are both person_values and ignore_values")
    return errors


def _check_points(cfg: Config) -> list[str]:
    """``prediction.points``: each with x and y (finite image pixels) and a label 1 or 0."""
    import math

    errors = []
    for i, point in enumerate(cfg.prediction.points):
        key = f"prediction.points[{i}]"
        missing = [name for name in ("x", "y") if getattr(point, name) is None]
        if missing:
            errors.append(f"{key}: {' and '.join(missing)} required (image pixels), e.g. {{x: 320, y: 240, label: 1}}")
        elif not (math.isfinite(point.x) and math.isfinite(point.y) and point.x >= 0 and point.y >= 0):
            errors.append(f"{key}: x and y must be finite, non-negative image pixels, got ({point.x}, {point.y})")
        if point.label not in (0, 1):
            errors.append(f"{key}.label: 1 (on the object) or 0 (background), got {point.label}")
    return errors


def num_classes(cfg: Config) -> int | None:
    """Number of classes, from class_names, the dataset layout or the built-in dataset."""
    from segzoo.data.resolve import layout_class_names

    if cfg.dataset.class_names:
        return len(cfg.dataset.class_names)
    if layout_class_names(cfg.dataset.layout):
        return len(layout_class_names(cfg.dataset.layout))
    if cfg.dataset.name == SYNTHETIC:
        from segzoo.data.synthetic import SYNTHETIC_CLASSES

        return len(SYNTHETIC_CLASSES)
    return None


def _check_dataset(cfg: Config) -> list[str]:
    ds, errors = cfg.dataset, []
    if ds.class_names is not None and len(ds.class_names) < 2:
        errors.append("dataset.class_names: at least 2 classes are needed")
    if ds.class_names and len(set(ds.class_names)) != len(ds.class_names):
        errors.append("dataset.class_names: names must be unique")
    n = num_classes(cfg)
    if n is not None:
        if ds.ignore_index < n:
            errors.append(f"dataset.ignore_index: {ds.ignore_index} is a class index (there are {n} classes)")
        targets = dict(ds.class_mapping or {})
        bad = sorted({v for v in targets.values() if not (0 <= v < n or v == ds.ignore_index)})
        if bad:
            errors.append(f"dataset.class_mapping: targets {bad} are neither a class index (0..{n - 1}) "
                          f"nor dataset.ignore_index ({ds.ignore_index})")
        default = ds.class_mapping_default
        if default is not None and not (0 <= default < n or default == ds.ignore_index):
            errors.append(f"dataset.class_mapping_default: {default} is neither a class index (0..{n - 1}) "
                          f"nor dataset.ignore_index ({ds.ignore_index})")
    bad_keys = sorted(k for k in (ds.class_mapping or {}) if not 0 <= k <= 65535)
    if bad_keys:
        errors.append(f"dataset.class_mapping: mask values {bad_keys[:5]} cannot occur (masks hold 0..65535)")
    if ds.class_mapping_default is not None and ds.class_mapping is None:
        errors.append("dataset.class_mapping_default: only used together with dataset.class_mapping")
    return errors


def _check_training(cfg: Config) -> list[str]:
    tr, errors = cfg.training, []
    if tr.lr_schedule.name == "reduce_on_plateau" and tr.lr_schedule.warmup_epochs:
        errors.append("training.lr_schedule.warmup_epochs: not available with reduce_on_plateau")
    errors += _check_distribution(cfg)
    n = num_classes(cfg)
    if isinstance(tr.class_weights, list):
        if n is not None and len(tr.class_weights) != n:
            errors.append(f"training.class_weights: {len(tr.class_weights)} weights given for {n} classes")
    return errors


def _check_distribution(cfg: Config) -> list[str]:
    """``training.distribution``: devices only where they are used, a batch that splits over them."""
    tr, dist, errors = cfg.training, cfg.training.distribution, []
    if dist.devices and dist.strategy not in ("one_device", "mirrored"):
        errors.append(f"training.distribution.devices: only used by the one_device and mirrored strategies, not "
                      f"{dist.strategy!r}")
    if dist.strategy == "one_device" and len(dist.devices) > 1:
        errors.append(f"training.distribution.devices: one_device takes one device, got {len(dist.devices)}")
    if len(set(dist.devices)) != len(dist.devices):
        errors.append("training.distribution.devices: a device is listed twice")
    if dist.devices and tr.batch_size % len(dist.devices):
        errors.append(f"training.batch_size: {tr.batch_size} does not split evenly over the {len(dist.devices)} "
                      f"devices of training.distribution.devices; use a multiple of {len(dist.devices)} (it is "
                      "the global batch, shared by all replicas)")
    return errors


def _check_model(cfg: Config) -> list[str]:
    """The input shape against the preprocessing (the family's own rules ran when its params were built)."""
    shape = cfg.training.model.input_shape
    if len(shape) != 3 or min(shape) < 1:
        return []  # reported when the family's params were built
    channels = 1 if cfg.preprocessing.color_mode == "grayscale" else 3
    if shape[2] != channels:
        return [f"training.model.input_shape: {shape[2]} channels but preprocessing.color_mode "
                f"{cfg.preprocessing.color_mode!r} gives {channels}"]
    return []


def _model_suffix(cfg: Config) -> str | None:
    return Path(cfg.general.model_path).suffix.lower() if cfg.general.model_path else None


def _synthetic(cfg: Config) -> bool:
    return cfg.dataset.name == SYNTHETIC


def _needs_training_data(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    errors = [] if _synthetic(cfg) else _require(cfg, ["dataset.training_path", "dataset.training_masks_path"], mode)
    if _model_suffix(cfg) == ".tflite":
        errors.append("general.model_path: a .tflite model cannot be trained; give a .keras or .h5 model")
    return errors


def _needs_model(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """A model to work on: trained in the run, given, listed for benchmarking, or imported from weights."""
    if cfg.general.model_path or cfg.training.model.pretrained_weights or "train" in steps:
        return []
    if steps == ("benchmark",) and cfg.benchmarking.models:
        return []
    return [f"general.model_path: required for operation_mode {mode} (or training.model.pretrained_weights to use "
            f"the configured model with pretrained weights)"]


def _needs_mask_layout(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    if cfg.dataset.layout == "yolo_seg":
        return ["dataset.layout: yolo_seg holds instance polygons for the promptable_segmentation task; semantic "
                "segmentation reads class masks (pairs, cityscapes, cityscapes_label_ids)"]
    return []


def _needs_classes(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    return [] if num_classes(cfg) is not None else _require(cfg, ["dataset.class_names"], mode)


def _needs_evaluation_images(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    ds, errors = cfg.dataset, []
    if not _synthetic(cfg) and not (ds.validation_path or ds.test_path or ds.training_path):
        errors.append(f"dataset.test_path: {mode} needs images to evaluate on: set dataset.test_path or "
                      "dataset.validation_path (with its *_masks_path)")
    if cfg.evaluation.split == "test" and not (ds.test_path or _synthetic(cfg)):
        errors.append("evaluation.split: 'test' needs dataset.test_path")
    return errors


def _needs_calibration_images(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    ds = cfg.dataset
    if cfg.quantization.calibration_data == "dataset" and not (ds.quantization_path or ds.training_path
                                                                or _synthetic(cfg)):
        return ["dataset.quantization_path: quantization needs calibration images: set dataset.quantization_path "
                "or dataset.training_path (quantization.calibration_data: random exists for tests only and gives "
                "poor models)"]
    return []


def _needs_float_model(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """A .tflite to quantize must be a float model (it is rebuilt as Keras); a quantized one is refused here."""
    path = cfg.general.model_path
    if "train" in steps or _model_suffix(cfg) != ".tflite" or not Path(path).is_file():
        return []
    from segzoo.litert.flatbuffer import quantization_problem, read_flatbuffer

    try:
        problem = quantization_problem(read_flatbuffer(path))
    except ModelError as exc:
        return [f"general.model_path: {exc}"]
    if problem:
        return [f"general.model_path: {path!r} is already quantized ({problem}) and cannot be quantized again; "
                "give the float model (a float .tflite, or the .keras/.h5 model)"]
    return []


def _needs_prediction_inputs(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    return _require(cfg, ["prediction.test_files_path"], mode)


def _needs_benchmark_targets(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    bench, errors = cfg.benchmarking, []
    if "board" in bench.targets:
        errors += _require(cfg, ["benchmarking.board.host"], f"{mode} with the board target")
        errors += _ssh_files("benchmarking.board", bench.board)
    for i, model in enumerate(bench.models):
        errors += _exists(f"benchmarking.models[{i}]", model, "file")
    return errors + _exists("benchmarking.rules_path", bench.rules_path, "file")


def _needs_deployable_model(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    errors = []
    if "quantize" not in steps and _model_suffix(cfg) not in (None, ".tflite"):
        errors.append("general.model_path: deployment needs a .tflite model (or use operation_mode chain_qd)")
    return errors + _exists("deployment.label_file_path", cfg.deployment.label_file_path, "file")


def _model_file(cfg: Config) -> list[Path]:
    """The run's single .tflite model, when it exists."""
    path = cfg.general.model_path
    return [Path(path)] if _model_suffix(cfg) == ".tflite" and Path(path).is_file() else []


def _pipeline_files(cfg: Config) -> list[Path]:
    """Every file of the ``general.pipeline`` preset present in the ``general.model_path`` folder."""
    preset, folder = _pipeline_of(cfg), cfg.general.model_path
    if preset is None or not folder:
        return []
    return [Path(folder) / name for name in preset.files if (Path(folder) / name).is_file()]


def _pair_files(cfg: Config) -> list[Path]:
    """The encoder and decoder .tflite of a promptable model folder (none for a Keras pair or a bad folder)."""
    from segzoo.tasks.promptable_segmentation.models import find_pair

    path = cfg.general.model_path
    try:
        pair = find_pair(path) if path and Path(path).is_dir() else None
    except ModelError:
        return []  # reported by _needs_model_folder
    return [pair.encoder, pair.decoder] if pair is not None and pair.kind == "tflite" else []


BUNDLE_FILES = MappingProxyType({"semantic_segmentation": _model_file, "pose_estimation": _pipeline_files,
                                 "promptable_segmentation": _pair_files})
"""Task -> the .tflite files its board bundle carries (all of them must load on the board)."""


def _needs_loadable_files(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Every .tflite of the bundle a deployment would push must be loadable by the board's runtime (no custom op
    it lacks); a run that quantizes first checks its own files when it builds the bundle."""
    if "quantize" in steps:
        return []
    from segzoo.benchmarking.estimate import check_bundle_loadable

    try:
        check_bundle_loadable(BUNDLE_FILES[task_name(cfg)](cfg))
    except ModelError as exc:
        return [f"general.model_path: {exc}"]
    return []


def _needs_board_setup(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """The NPU compiler and the board of a deployment, when given, must be usable."""
    dep, errors = cfg.deployment, []
    errors += _exists("tools.stedgeai.path_to_stedgeai", cfg.tools.stedgeai.path_to_stedgeai, "file")
    if dep.launch and not dep.hardware_setup.ip_address:
        errors.append("deployment.launch: needs deployment.hardware_setup.ip_address")
    if dep.hardware_setup.ip_address:
        errors += _ssh_files("deployment.hardware_setup", dep.hardware_setup)
    return errors


SEGMENTATION_REQUIREMENTS = MappingProxyType({
    "train": (_needs_training_data, _needs_classes, _needs_mask_layout),
    "evaluate": (_needs_model, _needs_classes, _needs_evaluation_images, _needs_mask_layout),
    "quantization_report": (_needs_model, _needs_classes, _needs_evaluation_images, _needs_mask_layout),
    "quantize": (_needs_model, _needs_float_model, _needs_classes, _needs_calibration_images, _needs_mask_layout),
    "predict": (_needs_model, _needs_classes, _needs_prediction_inputs),
    "benchmark": (_needs_model, _needs_benchmark_targets),
    "deploy": (_needs_model, _needs_classes, _needs_deployable_model, _needs_loadable_files, _needs_board_setup),
})
"""Semantic segmentation: step -> the checks of what it needs."""


# ------------------------------------------------------------------------------------------ per-task key choices
TASK_CHOICES = MappingProxyType({
    "pose_estimation": MappingProxyType({
        "quantization.quantization_type": (("ptq",), "quantizes published float .tflite files, which have no "
                                                     "training to fine-tune (no qat)"),
    }),
    "promptable_segmentation": MappingProxyType({
        "quantization.quantization_type": (("ptq",), "is never trained"),
        "quantization.granularity": (("per_tensor",), "quantizes per_tensor only (the STM32MP2 NPU)"),
    }),
})
"""Task -> key -> (the values the task accepts, why), checked when the run quantizes."""


def _needs_task_choices(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Keys whose value the run's task restricts (:data:`TASK_CHOICES`): the key, the allowed values, the value."""
    task = task_name(cfg)
    errors = []
    for key, (allowed, why) in TASK_CHOICES.get(task, {}).items():
        value = _get(cfg, key)
        if value not in allowed:
            errors.append(f"{key}: the {task} task {why}; allowed values: {', '.join(allowed)}, got {value!r}")
    return errors


# ----------------------------------------------------------------------------------------------- pose estimation
def _pipeline_of(cfg: Config) -> object | None:
    """The ``general.pipeline`` preset, or None when not set or unknown (``_check_pipeline`` reports that)."""
    from segzoo.models.external import get_pipeline

    try:
        return get_pipeline(cfg.general.pipeline) if cfg.general.pipeline else None
    except ConfigError:
        return None


def _needs_pipeline(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """A pipeline preset, and its files: ``general.model_path`` (a folder) or the preset's published sources."""
    if steps == ("benchmark",) and cfg.benchmarking.models:
        return []
    from segzoo.models.external import PIPELINES

    preset = _pipeline_of(cfg)
    if preset is None:
        return [f"general.pipeline: required for the {task_name(cfg)} task in operation_mode {mode} (known "
                f"pipelines: {', '.join(sorted(PIPELINES))}); general.model_path is then the folder of its files"]
    if not cfg.general.model_path and not getattr(preset, "sources", ()):
        return [f"general.model_path: required for operation_mode {mode}: the folder holding "
                f"{', '.join(preset.files)} ({preset.name} names no download location)"]
    return []


def _needs_keypoint_annotations(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Evaluation images with a COCO keypoints file: the test split, else the validation split."""
    ds, split = cfg.dataset, cfg.evaluation.split
    if split == "auto":
        split = "validation" if ds.validation_path or ds.validation_annotations_path else "test"
    images, annotations = getattr(ds, f"{split}_path"), getattr(ds, f"{split}_annotations_path")
    if images and annotations:
        return []
    return [f"dataset.{split}_annotations_path: {mode} needs COCO keypoint annotations: set dataset.{split}_path "
            f"(the images folder) and dataset.{split}_annotations_path (the person_keypoints JSON file)"]


def _needs_person_photos(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Calibration photos of people (each network is calibrated on its own inputs made from them)."""
    errors = []
    if not cfg.dataset.quantization_path:
        errors.append("dataset.quantization_path: quantization needs calibration photos of people (a folder of "
                      "images; the detector is calibrated on them, the landmark model on the crops they give)")
    if cfg.quantization.calibration_data == "random":
        errors.append("quantization.calibration_data: random gives the landmark model no person crop; use dataset "
                      "with dataset.quantization_path")
    return errors


def _needs_float_pipeline(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Every file of the pipeline folder must be a float model (each is rebuilt as Keras to be quantized)."""
    preset, folder = _pipeline_of(cfg), cfg.general.model_path
    if preset is None or not folder or not Path(folder).is_dir():
        return []
    from segzoo.litert.flatbuffer import quantization_problem, read_flatbuffer

    errors = []
    for name in preset.files:
        path = Path(folder) / name
        if not path.is_file():
            continue
        try:
            problem = quantization_problem(read_flatbuffer(path))
        except ModelError as exc:
            errors.append(f"general.model_path: {exc}")
            continue
        if problem:
            errors.append(f"general.model_path: {str(path)!r} is already quantized ({problem}) and cannot be "
                          f"quantized again; give the folder of the float {preset.name} files")
    return errors


def _needs_network_float_layers(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Float layers of a detector + landmark pipeline name their network: ``detector/<layer>``, ``landmark/<layer>``."""
    bad = [name for name in cfg.quantization.mixed_precision.float_layers
           if name.partition("/")[0] not in ("detector", "landmark") or not name.partition("/")[2]]
    return [f"quantization.mixed_precision.float_layers: {bad} must name their network: 'detector/<layer>' or "
            "'landmark/<layer>' (the quantization report lists the layers of both)"] if bad else []


POSE_REQUIREMENTS = MappingProxyType({
    "evaluate": (_needs_pipeline, _needs_keypoint_annotations),
    "quantization_report": (_needs_pipeline, _needs_keypoint_annotations),
    "quantize": (_needs_pipeline, _needs_float_pipeline, _needs_person_photos, _needs_network_float_layers,
                 _needs_task_choices),
    "predict": (_needs_pipeline, _needs_prediction_inputs),
    "benchmark": (_needs_pipeline, _needs_benchmark_targets),
    "deploy": (_needs_pipeline, _needs_loadable_files, _needs_board_setup),
})
"""Pose estimation (a published detector + landmark pipeline, used as it is: no training step)."""


# ----------------------------------------------------------------------------------------- promptable segmentation
def _needs_model_folder(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """A promptable model is a folder with an encoder and a decoder (or it is imported from ``pretrained_weights``)."""
    from segzoo.errors import ModelError as FolderError
    from segzoo.tasks.promptable_segmentation.models import find_pair

    path = cfg.general.model_path
    if not path or not Path(path).exists():
        return []
    try:
        pair = find_pair(path)
    except FolderError as exc:
        return [f"general.model_path: {exc}"]
    if "quantize" in steps and pair.kind != "keras":
        return [f"general.model_path: {path!r} holds TFLite files; quantization starts from the float Keras pair "
                f"(encoder.keras, decoder.keras), e.g. the imported model of a run"]
    if "deploy" in steps and "quantize" not in steps and pair.kind != "tflite":
        return [f"general.model_path: {path!r} holds Keras files; deployment needs the TFLite pair (or use "
                f"operation_mode chain_qd)"]
    return []


def _needs_instances(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Evaluation instances: a split with images and YOLO-seg labels, ``dataset.layout: yolo_seg``."""
    from segzoo.tasks.promptable_segmentation.data import EVALUATION_ORDER, LAYOUT

    ds, errors = cfg.dataset, []
    if ds.layout != LAYOUT:
        errors.append(f"dataset.layout: the promptable_segmentation task evaluates on instance labels; set "
                      f"dataset.layout: {LAYOUT} (YOLO-seg: images/ and labels/*.txt), got {ds.layout}")
    splits = EVALUATION_ORDER[cfg.evaluation.split]
    if not any(getattr(ds, f"{s}_path") and getattr(ds, f"{s}_masks_path") for s in splits):
        errors.append(f"dataset.test_path: {mode} needs instance images and labels: set dataset.test_path (images) "
                      f"and dataset.test_masks_path (the YOLO-seg labels/ folder)"
                      + (f" (evaluation.split: {cfg.evaluation.split})" if cfg.evaluation.split != "auto" else ""))
    return errors


def _needs_enough_points(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """``evaluation.clicks`` must fit the decoder's point inputs (when they are known before loading the model)."""
    from segzoo.tasks.promptable_segmentation.models import declared_num_points

    path = cfg.general.model_path
    points = declared_num_points(path) if path else getattr(cfg.training.model, "num_points", None)
    clicks = cfg.evaluation.clicks
    if points is not None and clicks > points:
        where = f"the decoder of {path}" if path else "training.model.num_points"
        return [f"evaluation.clicks: {clicks} clicks, but {where} takes at most {points} points; "
                f"{'use a model built with ' if path else 'set '}training.model.num_points={clicks}"]
    return []


def _needs_instance_calibration(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    """Calibration images with labels (the decoder is calibrated with clicks on their instances); no mixed
    precision (two networks)."""
    ds, q, errors = cfg.dataset, cfg.quantization, []
    labelled = any(getattr(ds, f"{s}_path") and getattr(ds, f"{s}_masks_path") for s in ("quantization", "training"))
    if q.calibration_data == "dataset" and not labelled:
        errors.append("dataset.quantization_path: the SAM2 encoder is calibrated on images and the decoder on clicks "
                      "on their instances: set dataset.quantization_path and dataset.quantization_masks_path (or "
                      "dataset.training_path and dataset.training_masks_path) to YOLO-seg images and labels")
    if q.mixed_precision.auto or q.mixed_precision.float_layers:
        errors.append("quantization.mixed_precision: not available for the promptable_segmentation task (its two "
                      "networks are quantized all-int8; the decoder's point encoding stays float by itself)")
    return errors


def _needs_prompts(cfg: Config, mode: str, steps: tuple[str, ...]) -> list[str]:
    errors = _require(cfg, ["prediction.test_files_path"], mode)
    if not cfg.prediction.prompts_path and not cfg.prediction.points:
        errors.append(f"prediction.prompts_path: {mode} needs point prompts: a JSON file (image file name -> "
                      f"[{{x, y, label}}]) or prediction.points for every image")
    return errors


PROMPTABLE_REQUIREMENTS = MappingProxyType({
    "evaluate": (_needs_model, _needs_model_folder, _needs_instances, _needs_enough_points),
    "quantization_report": (_needs_model, _needs_model_folder, _needs_instances, _needs_enough_points),
    "quantize": (_needs_model, _needs_model_folder, _needs_instance_calibration, _needs_task_choices),
    "predict": (_needs_model, _needs_model_folder, _needs_prompts),
    "benchmark": (_needs_model, _needs_model_folder, _needs_benchmark_targets),
    "deploy": (_needs_model, _needs_model_folder, _needs_loadable_files, _needs_board_setup),
})
"""Promptable segmentation (SAM2): step -> the checks of what it needs (no training step)."""

TASK_REQUIREMENTS = MappingProxyType({"semantic_segmentation": SEGMENTATION_REQUIREMENTS,
                                      "pose_estimation": POSE_REQUIREMENTS,
                                      "promptable_segmentation": PROMPTABLE_REQUIREMENTS})
"""Task -> its step requirements; a mode needs what its steps need for the run's task (each problem once)."""


def check_mode(cfg: Config) -> list[str]:
    """What the steps of ``operation_mode`` need for the run's task: keys that must be set, paths that must exist."""
    from segzoo.tasks import task_of

    if cfg.operation_mode not in MODES:
        return []
    try:
        task = task_of(cfg)
    except SegzooError as exc:
        return [str(exc)]
    if task not in TASK_REQUIREMENTS:
        return [f"general.task: {task} is not available in this version (available: {', '.join(TASK_REQUIREMENTS)})"]
    requirements = TASK_REQUIREMENTS[task]
    steps, mode = steps_for(cfg.operation_mode), cfg.operation_mode
    unsupported = [step for step in steps if step not in requirements]
    if unsupported:
        supported = [name for name, mode_steps in MODES.items() if set(mode_steps) <= set(requirements)]
        return [f"operation_mode: {mode} runs {', '.join(unsupported)}, which the {task} task does not support; "
                f"its modes are {', '.join(supported)}"]
    checks = dict.fromkeys(check for step in steps for check in requirements[step])
    errors = (_check_pipeline(cfg, task) + _check_paths(cfg, task)
              + [error for check in checks for error in check(cfg, mode, steps)])
    return list(dict.fromkeys(errors))


def task_name(cfg: Config) -> str:
    """The run's task (``segzoo.tasks.task_of``)."""
    from segzoo.tasks import task_of

    return task_of(cfg)


def _check_pipeline(cfg: Config, task: str) -> list[str]:
    """``general.pipeline`` must be known, and an explicit ``general.task`` must be the pipeline's task."""
    from segzoo.models.external import get_pipeline

    if not cfg.general.pipeline:
        return []
    try:
        preset = get_pipeline(cfg.general.pipeline)
    except ConfigError as exc:
        return [str(exc)]
    if preset.task != task:
        return [f"general.task: {task}, but general.pipeline {preset.name} is a {preset.task} pipeline "
                "(set general.task: auto)"]
    return []


def _ssh_files(section: str, board: object) -> list[str]:
    """The key and known_hosts files of a board section must exist when given (``~`` expanded)."""
    errors = []
    for key in ("identity_file", "known_hosts"):
        value = getattr(board, key)
        if value and not Path(value).expanduser().is_file():
            errors.append(f"{section}.{key}: {value!r} does not exist")
    return errors


def _require(cfg: Config, keys: list[str], mode: str) -> list[str]:
    return [f"{key}: required for operation_mode {mode}" for key in keys if _get(cfg, key) in (None, "", [])]


def _get(cfg: Config, key: str) -> object:
    obj: object = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


SPLIT_TARGETS = MappingProxyType({"semantic_segmentation": "masks", "pose_estimation": "annotations"})
"""Task -> what goes with a split's images: ``dataset.<split>_<target>_path`` (masks folder, annotation file)."""


def _check_paths(cfg: Config, task: str = "semantic_segmentation") -> list[str]:
    """Every path that is set must exist, with the right kind (folder or file)."""
    errors = []
    ds = cfg.dataset
    target = SPLIT_TARGETS.get(task, "masks")
    for split in SPLITS:
        for key, kind in ((f"{split}_path", "dir"), (f"{split}_masks_path", "dir"), (f"{split}_files_path", "file")):
            errors += _exists(f"dataset.{key}", getattr(ds, key), kind)
        if split in ("validation", "test"):
            errors += _exists(f"dataset.{split}_annotations_path", getattr(ds, f"{split}_annotations_path"), "file")
        images = getattr(ds, f"{split}_path")
        for kind in ("masks", "annotations"):
            if getattr(ds, f"{split}_{kind}_path", None) and not images:
                errors.append(f"dataset.{split}_path: required when dataset.{split}_{kind}_path is set")
        labels_key = f"{split}_{target}_path"
        if images and split != "quantization" and hasattr(ds, labels_key) and not getattr(ds, labels_key):
            errors.append(f"dataset.{labels_key}: required when dataset.{split}_path is set")
    errors += _check_model_path(cfg, task)
    masks = cfg.pose_estimation.person_masks
    errors += _exists("pose_estimation.person_masks.images_path", masks.images_path, "dir")
    errors += _exists("pose_estimation.person_masks.masks_path", masks.masks_path, "dir")
    if bool(masks.images_path) != bool(masks.masks_path):
        missing = "masks_path" if masks.images_path else "images_path"
        errors.append(f"pose_estimation.person_masks.{missing}: required with the other person_masks folder")
    errors += _exists("prediction.test_files_path", cfg.prediction.test_files_path, "dir")
    errors += _exists("prediction.prompts_path", cfg.prediction.prompts_path, "file")
    resume = cfg.training.resume_training_from
    errors += _exists("training.resume_training_from", resume, "dir")
    errors += _check_weights(cfg)
    return errors


FOLDER_MODEL_TASKS = frozenset({"promptable_segmentation"})
"""Tasks whose model is a folder of networks found by the task itself (its own requirement checks the files)."""


def _check_model_path(cfg: Config, task: str = "semantic_segmentation") -> list[str]:
    """A model file, a folder for a task of :data:`FOLDER_MODEL_TASKS`, or with ``general.pipeline`` the folder
    holding every file of the pipeline."""
    model_path, preset = cfg.general.model_path, _pipeline_of(cfg)
    if not model_path:
        return []
    if task in FOLDER_MODEL_TASKS:
        return _exists("general.model_path", model_path, "dir")
    if preset is None:
        errors = _exists("general.model_path", model_path, "file")
        if Path(model_path).suffix.lower() not in MODEL_SUFFIXES:
            errors.append(f"general.model_path: {model_path!r} is not a model file ({', '.join(MODEL_SUFFIXES)})")
        return errors
    errors = _exists("general.model_path", model_path, "dir")
    if errors and Path(model_path).is_file():
        return [f"general.model_path: with general.pipeline {preset.name} it is the folder of "
                f"{', '.join(preset.files)}, not a file ({model_path!r})"]
    missing = [name for name in preset.files if not errors and not (Path(model_path) / name).is_file()]
    if missing:
        errors.append(f"general.model_path: {model_path!r} has no {', '.join(missing)} (the {preset.name} pipeline "
                      f"needs {', '.join(preset.files)} in that folder)")
    return errors


def _check_weights(cfg: Config) -> list[str]:
    """``pretrained_weights``: a named checkpoint of the family, or an existing file; weights folders exist."""
    from segzoo.models.registry import get_family

    errors = [e for i, d in enumerate(cfg.general.weights_dirs) for e in _exists(f"general.weights_dirs[{i}]", d, "dir")]
    weights = cfg.training.model.pretrained_weights
    named = get_family(cfg.training.model.name).weights
    if weights and weights not in named and not Path(weights).expanduser().is_file():
        choices = ", ".join(named) or "none"
        errors.append(f"training.model.pretrained_weights: {weights!r} is neither an existing file nor a named "
                      f"checkpoint of {cfg.training.model.name} ({choices})")
    return errors


def _exists(key: str, value: str | None, kind: str) -> list[str]:
    if not value:
        return []
    path = Path(value)
    if not path.exists():
        return [f"{key}: {value!r} does not exist"]
    if kind == "dir" and not path.is_dir():
        return [f"{key}: {value!r} is not a folder"]
    if kind == "file" and not path.is_file():
        return [f"{key}: {value!r} is not a file"]
    return []
