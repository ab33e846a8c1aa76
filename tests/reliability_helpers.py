"""Shared pieces of the reliability tests: tiny real .tflite models, dataset copies, damage, run-directory checks."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
from tflite_builder import TinyModel

from segzoo.io import TEMP_MARK, SIDECAR_SUFFIX, recorded_sha256, sha256_file

CAMVID_CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
                  "bicyclist"]
VOC_CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor"]


def conv_model(path: Path, classes: int, size: int = 32, seed: int = 0) -> Path:
    """A float .tflite segmentation model: one 3x3 CONV_2D from RGB ``size``x``size`` to ``classes`` logits."""
    rng = np.random.default_rng(seed)
    m = TinyModel()
    x = m.tensor("input", [1, size, size, 3])
    weights = m.constant("w", rng.normal(size=(classes, 3, 3, 3)).astype(np.float32))
    bias = m.constant("b", rng.normal(size=classes).astype(np.float32))
    y = m.tensor("logits", [1, size, size, classes])
    m.op("CONV_2D", [x, weights, bias], [y], "Conv2DOptions", padding=0, strideW=1, strideH=1)
    m.inputs, m.outputs = [x], [y]
    return m.save(path)


def mediapipe_model(path: Path, classes: int = 2, size: int = 16, seed: int = 0) -> Path:
    """A float .tflite with MediaPipe's custom ``Convolution2DTransposeBias`` (as in its selfie segmentation)."""
    rng = np.random.default_rng(seed)
    m = TinyModel()
    x = m.tensor("input", [1, size, size, 3])
    half = m.tensor("half", [1, size // 2, size // 2, 3])
    m.op("AVERAGE_POOL_2D", [x], [half], "Pool2DOptions", padding=0, strideW=2, strideH=2, filterWidth=2,
         filterHeight=2)
    weights = m.constant("w", rng.normal(size=(classes, 2, 2, 3)).astype(np.float32))
    bias = m.constant("b", rng.normal(size=classes).astype(np.float32))
    y = m.tensor("logits", [1, size, size, classes])
    m.op("Convolution2DTransposeBias", [half, weights, bias], [y], custom_options=struct.pack("<iii", 1, 2, 2))
    m.inputs, m.outputs = [x], [y]
    return m.save(path)


def copy_pairs(images: Path, masks: Path, ids: list[str], out: Path, suffix: str = ".png") -> tuple[Path, Path]:
    """Copy the image and mask of each id into ``out/images`` and ``out/masks``; the two folders."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for sample_id in ids:
        shutil.copy(images / f"{sample_id}{suffix}", out / "images")
        shutil.copy(masks / f"{sample_id}.png", out / "masks")
    return out / "images", out / "masks"


def truncate(path: Path, fraction: float) -> Path:
    """Keep only the first ``fraction`` of the file's bytes (a download or copy cut short)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def flip_byte(path: Path, offset: int) -> None:
    """Invert one byte of the file in place (a disk or copy error)."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0xFF
    path.write_bytes(bytes(data))


def run_dir_problems(run_dir: Path, *, allow_temporaries: bool = True) -> list[str]:
    """What is wrong with the files of a run directory: a file whose sha256 differs from its sidecar, a sidecar
    without its file, or (``allow_temporaries=False``) a temporary file left behind. Empty when all is whole."""
    problems = []
    for path in sorted(run_dir.rglob("*")):
        if not path.is_file():
            continue
        if TEMP_MARK in path.name:
            if not allow_temporaries:
                problems.append(f"temporary file left: {path}")
            continue
        if path.name.endswith(SIDECAR_SUFFIX):
            if not path.with_name(path.name[: -len(SIDECAR_SUFFIX)]).exists():
                problems.append(f"checksum without its file: {path}")
            continue
        expected = recorded_sha256(path)
        if expected is not None and sha256_file(path) != expected:
            problems.append(f"damaged (sha256 differs from its sidecar): {path}")
    return problems
