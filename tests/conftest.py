"""Shared test fixtures: the real data beside the repository in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
