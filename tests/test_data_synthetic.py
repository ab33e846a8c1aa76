"""The built-in synthetic_shapes dataset: deterministic, idempotent, atomic, VOC layout, VOC-like masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from segzoo.data import synthetic
from segzoo.data.layouts import list_samples
from segzoo.data.loader import load_pair
from segzoo.data.masks import ClassMapper
from segzoo.data.synthetic import SYNTHETIC_CLASSES, ensure_synthetic_dataset
from segzoo.errors import DataError
from segzoo.palette import flat_palette

SMALL = {"num_train": 16, "num_val": 4, "image_size": (72, 96), "seed": 3}


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), **SMALL)


def test_voc_layout_readable(small_dataset):
    root = small_dataset
    assert root.name == "synthetic_shapes"
    train = list_samples(root / "JPEGImages", root / "SegmentationClass", root / "ImageSets/Segmentation/train.txt")
    val = list_samples(root / "JPEGImages", root / "SegmentationClass", root / "ImageSets/Segmentation/val.txt")
    assert len(train) == 16 and len(val) == 4 and not {s.id for s in train} & {s.id for s in val}
    image, mask = load_pair(train[0], ClassMapper(len(SYNTHETIC_CLASSES)))
    assert image.shape == (72, 96, 3) and mask.shape == (72, 96)
    assert json.loads((root / "dataset.json").read_text())["classes"] == list(SYNTHETIC_CLASSES)


def test_masks_are_voc_palette_pngs_with_all_classes_and_void_borders(small_dataset):
    seen = set()
    for path in sorted((small_dataset / "SegmentationClass").glob("*.png")):
        with Image.open(path) as im:
            assert im.mode == "P" and im.getpalette()[:3 * 21] == flat_palette()[:3 * 21]
            mask = np.array(im)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(len(SYNTHETIC_CLASSES))) | {255}
        assert 255 in values and len(values - {0, 255}) >= 1  # every image has a shape, outlined in void
        seen |= values
    assert seen == set(range(len(SYNTHETIC_CLASSES))) | {255}


def test_void_border_separates_shapes_from_background(small_dataset):
    mask = np.array(Image.open(sorted((small_dataset / "SegmentationClass").glob("*.png"))[0]))
    labels = mask.astype(int)
    right = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] != 255) & (labels[:, :-1] != 255)
    down = (labels[1:] != labels[:-1]) & (labels[1:] != 255) & (labels[:-1] != 255)
    assert not right.any() and not down.any()  # no two classes touch without void between them


def test_deterministic(tmp_path):
    first = ensure_synthetic_dataset(tmp_path / "a", **SMALL)
    second = ensure_synthetic_dataset(tmp_path / "b", **SMALL)
    assert _files(first) == _files(second)
    other = ensure_synthetic_dataset(tmp_path / "c", **{**SMALL, "seed": 4})
    assert _files(other) != _files(first)


def test_idempotent_and_regenerated_when_parameters_change(tmp_path):
    root = ensure_synthetic_dataset(tmp_path, **SMALL)
    mtimes = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert ensure_synthetic_dataset(tmp_path, **SMALL) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == mtimes
    ensure_synthetic_dataset(tmp_path, **{**SMALL, "num_val": 2})
    assert (root / "ImageSets/Segmentation/val.txt").read_text().split() == ["val_0000", "val_0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_shapes"]  # no temporary folders left


def test_crash_leaves_no_dataset_that_looks_complete(tmp_path, monkeypatch):
    calls = []

    def failing(*args):
        calls.append(args)
        if len(calls) == 5:
            raise OSError("disk full")
        return real(*args)

    real = synthetic._write_sample
    monkeypatch.setattr(synthetic, "_write_sample", failing)
    with pytest.raises(OSError, match="disk full"):
        ensure_synthetic_dataset(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(synthetic, "_write_sample", real)
    assert (ensure_synthetic_dataset(tmp_path, **SMALL) / "dataset.json").is_file()


def test_foreign_folder_is_never_replaced(tmp_path):
    (tmp_path / "synthetic_shapes").mkdir()
    (tmp_path / "synthetic_shapes" / "my_notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="is not a generated synthetic_shapes dataset"):
        ensure_synthetic_dataset(tmp_path, **SMALL)
    assert (tmp_path / "synthetic_shapes" / "my_notes.txt").read_text() == "keep me"
