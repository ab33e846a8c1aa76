"""Config validation: unknown keys with suggestions, bad values with allowed values, mode requirements."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from segzoo.config import load_config
from segzoo.config.overrides import check_overrides
from segzoo.config.validate import all_key_paths
from segzoo.errors import ConfigError


def default_config() -> dict:
    return yaml.safe_load((REPO / "user_config.yaml").read_text())


def errors_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(data)
    return str(info.value)


def test_default_config_is_valid() -> None:
    cfg = load_config(default_config())
    assert cfg.operation_mode == "chain_tqeb"
    assert cfg.dataset.name == "synthetic_shapes"
    assert cfg.preprocessing.rescaling.scale == pytest.approx(1 / 127.5)


@pytest.mark.parametrize("path", sorted((REPO / "config_file_examples").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_parse(path: Path) -> None:
    """Every example has only known keys and valid values (paths may point at data not present here)."""
    from segzoo.config.checks import check_values
    from segzoo.config.validate import build_config

    cfg, errors = build_config(yaml.safe_load(path.read_text()))
    assert errors == []
    assert check_values(cfg) == []


def test_unknown_key_names_full_path_and_closest_key() -> None:
    data = default_config()
    data["dataset"]["trainning_path"] = "x"
    message = errors_of(data)
    assert "dataset.trainning_path: unknown key; did you mean dataset.training_path?" in message


def test_key_in_wrong_section_points_to_the_right_one() -> None:
    data = default_config()
    data["training"]["class_names"] = ["a", "b"]
    assert "training.class_names: unknown key; did you mean dataset.class_names?" in errors_of(data)


def test_bad_value_lists_allowed_values() -> None:
    data = default_config()
    data["preprocessing"]["resizing"]["aspect_ratio"] = "stretch"
    data["training"]["model"]["aspp"] = "v3"
    message = errors_of(data)
    assert "preprocessing.resizing.aspect_ratio: bad value 'stretch'; allowed values: fit, crop, padding" in message
    assert "training.model.aspp: bad value 'v3'; allowed values: v1, v2, none" in message


def test_all_problems_reported_at_once() -> None:
    data = default_config()
    data["dataset"]["trainning_path"] = "x"
    data["training"]["batch_size"] = "many"
    data["operation_mode"] = "trainig"
    message = errors_of(data)
    assert "training.batch_size: expected an integer, got 'many'" in message
    assert "dataset.trainning_path" in message


def test_unknown_mode_lists_valid_modes() -> None:
    data = default_config()
    data["operation_mode"] = "trainnig"
    message = errors_of(data)
    assert "operation_mode: bad value 'trainnig'; allowed values: training, evaluation, prediction" in message
    assert "did you mean training?" in message


def test_st_style_strings_are_parsed_without_eval() -> None:
    data = default_config()
    data["preprocessing"]["rescaling"] = {"scale": "1/255", "offset": 0}
    data["training"]["model"]["input_shape"] = "(256, 256, 3)"
    cfg = load_config(data)
    assert cfg.preprocessing.rescaling.scale == pytest.approx(1 / 255)
    assert cfg.training.model.input_shape == [256, 256, 3]
    data["preprocessing"]["rescaling"]["scale"] = "__import__('os').getcwd()"
    assert "preprocessing.rescaling.scale: expected a number" in errors_of(data)


def test_class_mapping_targets_checked() -> None:
    data = default_config()
    data["dataset"].update(class_names=["bg", "person"], class_mapping={0: 255, 1: 1, 5: 7}, class_mapping_default=0)
    assert "dataset.class_mapping: targets [7] are neither a class index (0..1)" in errors_of(data)
    data["dataset"]["class_mapping"] = {0: 255, 1: 1}
    cfg = load_config(data)
    assert cfg.dataset.class_mapping == {0: 255, 1: 1}


def test_mode_requirements(tmp_path: Path) -> None:
    data = default_config()
    data["operation_mode"] = "evaluation"
    assert "general.model_path: required for operation_mode evaluation" in errors_of(data)
    data["general"]["model_path"] = str(tmp_path / "missing.tflite")
    assert "general.model_path: " in errors_of(data) and "does not exist" in errors_of(data)
    assert "required for operation_mode" not in errors_of(data)
    (tmp_path / "model.keras").write_bytes(b"")
    data["general"]["model_path"] = str(tmp_path / "model.keras")
    assert load_config(data).general.model_path == str(tmp_path / "model.keras")
    data = default_config()
    data["operation_mode"] = "training"
    data["dataset"] = {"name": "camvid", "training_path": str(tmp_path)}
    message = errors_of(data)
    assert "dataset.training_masks_path: required" in message
    assert "dataset.class_names: required for operation_mode training" in message


def test_input_shape_must_fit_output_stride() -> None:
    data = default_config()
    data["training"]["model"]["input_shape"] = [100, 128, 3]
    assert ("training.model.input_shape: 100x128 must be multiples of output_stride (16) and at least 32 "
            "(nearest valid size: 96x128)") in errors_of(data)


def test_model_section_is_checked_by_the_family_params() -> None:
    data = default_config()
    data["training"]["model"]["asp"] = "v1"
    message = errors_of(data)
    assert "training.model.asp: unknown key for model family deeplab_v3; did you mean training.model.aspp?" in message
    data = default_config()
    data["training"]["model"]["name"] = "deeplab3"
    assert "training.model.name: Unknown model family 'deeplab3'. Did you mean 'deeplab_v3'?" in errors_of(data)
    data = default_config()
    data["training"]["model"]["alpha"] = 1  # an integer for a float choice
    assert load_config(data).training.model.alpha == 1.0
    data["training"]["model"]["alpha"] = 0.6
    assert "training.model.alpha: bad value 0.6; allowed values: 0.35, 0.5, 0.75, 1.0" in errors_of(data)


def test_augmentation_typo_suggested() -> None:
    data = default_config()
    data["data_augmentation"] = {"random_flp": {"mode": "horizontal"}}
    assert "random_flip" in errors_of(data)


def test_overrides_checked_and_forced() -> None:
    assert check_overrides(["general.model_path=m.tflite", "--config-name", "x"]) == [
        "++general.model_path=m.tflite", "--config-name", "x"]
    with pytest.raises(ConfigError, match="dataset.trainning_path: unknown key .*did you mean dataset.training_path"):
        check_overrides(["dataset.trainning_path=/data"])


def test_every_schema_key_is_documented_in_readme() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [key for key in all_key_paths() if f"`{key}`" not in readme]
    assert missing == []


def test_typo_fails_fast_from_the_command_line() -> None:
    """The entry point rejects a typo in a few seconds, before TensorFlow is imported."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "stm32ai_main.py", "dataset.trainning_path=x"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    assert "did you mean dataset.training_path?" in proc.stderr
    assert elapsed < 20


def test_typo_in_yaml_fails_fast(tmp_path: Path) -> None:
    data = default_config()
    data["training"]["epochs"] = "ten"
    data["general"]["projet_name"] = "x"
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    proc = subprocess.run([sys.executable, "stm32ai_main.py", "--config-path", str(tmp_path), "--config-name", "bad",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    output = proc.stdout + proc.stderr
    assert "general.projet_name: unknown key; did you mean general.project_name?" in output
    assert "training.epochs: expected an integer, got 'ten'" in output
    assert "oneDNN" not in output  # TensorFlow never started


def test_board_key_files_checked_up_front(tmp_path: Path) -> None:
    data = default_config()
    data["operation_mode"] = "deployment"
    data["general"]["model_path"] = str(tmp_path / "m.tflite")
    (tmp_path / "m.tflite").write_bytes(b"")
    data["deployment"] = {"hardware_setup": {"ip_address": "10.0.0.2", "identity_file": str(tmp_path / "nokey")}}
    assert "deployment.hardware_setup.identity_file: " in errors_of(data)


def test_a_model_folder_is_refused_for_semantic_segmentation(tmp_path: Path) -> None:
    data = default_config()
    data["operation_mode"] = "evaluation"
    data["general"]["model_path"] = str(tmp_path)
    assert f"general.model_path: {str(tmp_path)!r} is not a file" in errors_of(data)


def sam2_data(tmp_path: Path, mode: str = "evaluation") -> dict:
    """A promptable-segmentation config on instance folders (empty ones: the checks need no content)."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    return {"operation_mode": mode,
            "dataset": {"layout": "yolo_seg", "test_path": str(images), "test_masks_path": str(labels)},
            "training": {"model": {"name": "sam2", "input_shape": [64, 64, 3],
                                   "pretrained_weights": "sam2.1_hiera_tiny"}}}


def test_promptable_segmentation_keys_are_validated(tmp_path: Path) -> None:
    cfg = load_config(sam2_data(tmp_path))
    assert (cfg.evaluation.clicks, cfg.evaluation.min_instance_area, cfg.evaluation.mask_threshold) == (1, 1024, 0.0)
    assert cfg.prediction.prompts_path is None and cfg.prediction.points == []
    data = sam2_data(tmp_path)
    data["evaluation"] = {"clicks": 0, "min_instance_area": 0, "mask_threshold": "high"}
    message = errors_of(data)
    assert "evaluation.clicks: must be at least 1, got 0" in message
    assert "evaluation.min_instance_area: must be at least 1, got 0" in message
    assert "evaluation.mask_threshold: expected a number" in message
    data = sam2_data(tmp_path, "prediction")
    data["prediction"] = {"test_files_path": str(tmp_path), "points": [{"x": 3, "label": 2}, {"x": 1, "y": 2, "z": 0}]}
    message = errors_of(data)
    assert "prediction.points[0]: y required (image pixels)" in message
    assert "prediction.points[0].label: 1 (on the object) or 0 (background), got 2" in message
    assert "prediction.points[1].z: unknown key" in message
    data["prediction"] = {"test_files_path": str(tmp_path), "points": [{"x": 3, "y": 4}]}
    assert load_config(data).prediction.points[0].label == 1
    data["prediction"] = {"test_files_path": str(tmp_path)}
    assert "prediction.prompts_path: prediction needs point prompts" in errors_of(data)
    data["prediction"]["prompts_path"] = str(tmp_path / "missing.json")
    assert "prediction.prompts_path: " in errors_of(data) and "does not exist" in errors_of(data)


def test_promptable_segmentation_modes_and_model_folders(tmp_path: Path) -> None:
    data = sam2_data(tmp_path)
    data["dataset"]["layout"] = "pairs"
    assert "dataset.layout: the promptable_segmentation task evaluates on instance labels" in errors_of(data)
    data = sam2_data(tmp_path, "training")
    assert ("operation_mode: training runs train, which the promptable_segmentation task does not support; its "
            "modes are evaluation, prediction, quantization, chain_eqe, benchmarking, chain_eqeb, chain_qb, deployment, "
            "chain_qd") in errors_of(data)
    folder = tmp_path / "pair"
    folder.mkdir()
    (folder / "encoder_int8.tflite").write_bytes(b"")
    data = sam2_data(tmp_path)
    data["general"] = {"model_path": str(folder)}
    assert "no decoder file" in errors_of(data)
    (folder / "decoder_int8.tflite").write_bytes(b"")
    assert load_config(data).general.model_path == str(folder)
    data["operation_mode"] = "quantization"
    data["dataset"].update(quantization_path=data["dataset"]["test_path"],
                           quantization_masks_path=data["dataset"]["test_masks_path"])
    assert "holds TFLite files; quantization starts from the float Keras pair" in errors_of(data)
    data["quantization"] = {"granularity": "per_channel", "mixed_precision": {"auto": True}, "quantization_type": "qat"}
    assert "quantization.mixed_precision: not available" in errors_of(data)
    assert "quantization.quantization_type: the promptable_segmentation task is never trained" in errors_of(data)
    assert "quantization.granularity: the promptable_segmentation task quantizes per_tensor only" in errors_of(data)
    data = sam2_data(tmp_path)
    data["training"]["model"]["name"] = "deeplab_v3"
    data["training"]["model"].pop("pretrained_weights")
    data["general"] = {"model_path": str(folder / "encoder_int8.tflite")}
    data["dataset"]["class_names"] = ["a", "b"]
    assert "dataset.layout: yolo_seg holds instance polygons for the promptable_segmentation task" in errors_of(data)
