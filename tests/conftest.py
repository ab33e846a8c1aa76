"""Shared test fixtures: the real data beside the repository in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEGZOO_SHARED", REPO.parent / "shared"))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with a clear reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the repository expects ../shared beside it)")
    return path


@pytest.fixture
def voc_masks_dir() -> Path:
    """Real PASCAL VOC 2012 val masks (palette PNGs)."""
    return shared_path("datasets", "voc2012", "SegmentationClass")


@pytest.fixture
def camvid_dir() -> Path:
    """Real CamVid (11 classes + void 11)."""
    return shared_path("datasets", "camvid", "CamVid")


@pytest.fixture
def coco_dir() -> Path:
    """Real COCO images with COCO-panoptic-id masks."""
    return shared_path("datasets", "coco128_semseg")


@pytest.fixture
def st_model() -> Path:
    """ST's int8 per-tensor DeepLabV3 257 (float I/O, 21 logits)."""
    return shared_path("pretrained", "st_deeplabv3_257_int8_per_tensor", "deeplabv3_257_int8_per_tensor.tflite")


@pytest.fixture
def coral_model() -> Path:
    """Coral uint8 DeepLabV3 dm0.5 513 (uint8 input, ArgMax output)."""
    return shared_path("pretrained", "coral_deeplabv3_mnv2_pascal_quant", "deeplabv3_mnv2_dm05_pascal_quant.tflite")


COCO_TO_VOC = {5: 1, 2: 2, 16: 3, 9: 4, 44: 5, 6: 6, 3: 7, 17: 8, 62: 9, 21: 10, 67: 11, 18: 12, 19: 13, 4: 14,
               1: 15, 64: 16, 20: 17, 63: 18, 7: 19, 72: 20, 0: 255}
"""COCO panoptic id -> VOC class (from ../shared/datasets/coco128_semseg/SOURCE.md); others -> 0."""


def tiny_training_config(tmp: Path, dataset_root: Path, **training) -> dict:
    """The default config shrunk for tests: 64x64 alpha-0.35 DeepLabV3, 3 epochs, 20 evaluation images."""
    cfg = yaml.safe_load((REPO / "user_config.yaml").read_text())
    cfg["operation_mode"] = "training"
    cfg["dataset"]["root"] = str(dataset_root)
    cfg["training"]["model"].update(input_shape=[64, 64, 3], alpha=0.35, aspp="v2")
    cfg["training"].update({"batch_size": 16, "epochs": 3, "tensorboard": False, **training})
    cfg["training"]["lr_schedule"] = {"name": "constant"}
    cfg["mlflow"] = {"uri": str(tmp / "mlruns"), "enabled": True}
    cfg["evaluation"] = {"max_images": 20}
    return cfg


@pytest.fixture(scope="session")
def dataset_root(tmp_path_factory) -> Path:
    """Where the built-in dataset is generated once for the whole test session."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, dataset_root) -> tuple[Path, dict, dict]:
    """A real 3-epoch training run (run directory, results, config), shared by the tests that need a model."""
    from segzoo.cli import run

    tmp = tmp_path_factory.mktemp("train")
    cfg = tiny_training_config(tmp, dataset_root)
    run_dir = tmp / "run1"
    results = run(cfg, run_dir=run_dir)
    return run_dir, results, cfg


@pytest.fixture
def mediapipe_dir() -> Path:
    """MediaPipe Pose's float detector and landmark models."""
    return shared_path("pretrained", "mediapipe_pose")


@pytest.fixture
def keypoints_dir() -> Path:
    """4 real COCO val images with 14 persons' keypoints (COCO json)."""
    return shared_path("datasets", "coco_keypoints_mmpose")


def landmark_crops(photos: int) -> tuple[Path, "np.ndarray"]:
    """MediaPipe's landmark model file and the crops the float pipeline cuts from the first ``photos`` COCO train
    photos with a person (skips when ../shared lacks them)."""
    from segzoo.runtime.litert import LiteRTRunner
    from segzoo.tasks.pose_estimation.calibration import calibration_inputs
    from segzoo.tasks.pose_estimation.evaluation import person_mask_samples
    from segzoo.tasks.pose_estimation.pipeline import PosePipeline
    from segzoo.tasks.pose_estimation.preset import MEDIAPIPE_POSE_FULL

    folder = shared_path("pretrained", "mediapipe_pose")
    coco = shared_path("datasets", "coco128_semseg")
    samples = person_mask_samples(coco / "images" / "train2017", coco / "semantic_segmentation" / "masks" / "train2017")
    detector, landmark = MEDIAPIPE_POSE_FULL.paths(folder)
    pipeline = PosePipeline(MEDIAPIPE_POSE_FULL, LiteRTRunner(detector, 2), LiteRTRunner(landmark, 2))
    return landmark, calibration_inputs(pipeline, [s.image for s in samples[:photos]])["landmark"]
