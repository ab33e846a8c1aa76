"""Pairing images with masks: VOC layout, CamVid folder pairs with path lists, COCO folder pairs."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segzoo.data.layouts import Sample, list_samples, read_id_list, split_samples
from segzoo.errors import DataError


def _make_voc(root: Path, voc_masks_dir: Path, ids: list[str]) -> Path:
    """A VOC layout with real masks and generated JPEGs of the same size."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    for sample_id in ids:
        shutil.copy(voc_masks_dir / f"{sample_id}.png", root / "SegmentationClass")
        width, height = Image.open(voc_masks_dir / f"{sample_id}.png").size
        cv2.imwrite(str(root / "JPEGImages" / f"{sample_id}.jpg"), np.full((height, width, 3), 90, np.uint8))
    return root


@pytest.fixture
def voc_ids(voc_masks_dir: Path) -> list[str]:
    return read_id_list(voc_masks_dir.parent / "ImageSets" / "Segmentation" / "val.txt")[:6]


def test_voc_layout_with_files_list_keeps_list_order(tmp_path, voc_masks_dir, voc_ids):
    root = _make_voc(tmp_path / "voc", voc_masks_dir, voc_ids)
    listed = [voc_ids[3], voc_ids[0], voc_ids[5]]
    files = root / "ImageSets" / "Segmentation" / "val.txt"
    files.write_text(f"# a comment\n{listed[0]}\n\n{listed[1]}  # trailing comment\n{listed[2]}\n")
    samples = list_samples(root / "JPEGImages", root / "SegmentationClass", files, role="dataset.validation_path")
    assert [s.id for s in samples] == listed
    assert all(s.image_path == root / "JPEGImages" / f"{s.id}.jpg" for s in samples)
    assert all(s.mask_path == root / "SegmentationClass" / f"{s.id}.png" for s in samples)


def test_voc_layout_without_list_pairs_sorted_and_warns_once(tmp_path, voc_masks_dir, voc_ids, caplog):
    root = _make_voc(tmp_path / "voc", voc_masks_dir, voc_ids)
    cv2.imwrite(str(root / "JPEGImages" / "zz_unlabelled.jpg"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(root / "JPEGImages" / "zz_other.png"), np.zeros((8, 8, 3), np.uint8))
    with caplog.at_level(logging.WARNING, logger="segzoo.data.layouts"):
        samples = list_samples(root / "JPEGImages", root / "SegmentationClass")
    assert [s.id for s in samples] == sorted(voc_ids)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 of 8 images" in warnings[0].getMessage()


def test_suffixes_are_case_insensitive_and_prediction_has_no_masks(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.JPG"), np.zeros((4, 4, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "img" / "b.Jpeg"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    cv2.imwrite(str(tmp_path / "msk" / "a.PNG"), np.zeros((4, 4), np.uint8))
    cv2.imwrite(str(tmp_path / "msk" / "b.bmp"), np.zeros((4, 4), np.uint8))
    pairs = list_samples(tmp_path / "img", tmp_path / "msk")
    assert [(s.id, s.image_path.name, s.mask_path.name) for s in pairs] == [("a", "a.JPG", "a.PNG"),
                                                                           ("b", "b.Jpeg", "b.bmp")]
    assert list_samples(tmp_path / "img") == [Sample("a", tmp_path / "img" / "a.JPG", None),
                                              Sample("b", tmp_path / "img" / "b.Jpeg", None)]


def test_camvid_val_pairs_from_path_lines(camvid_dir):
    samples = list_samples(camvid_dir / "val", camvid_dir / "valannot", camvid_dir / "val.txt")
    lines = [line.split()[0] for line in (camvid_dir / "val.txt").read_text().splitlines() if line.strip()]
    assert len(samples) >= 100
    assert [s.id for s in samples] == [Path(line).stem for line in lines]
    assert all(s.image_path.parent.name == "val" and s.mask_path.parent.name == "valannot" for s in samples)
    assert all(s.image_path.is_file() and s.mask_path.is_file() for s in samples)


def test_coco_folder_pairs(coco_dir):
    samples = list_samples(coco_dir / "images" / "train2017",
                           coco_dir / "semantic_segmentation" / "masks" / "train2017")
    assert len(samples) == 100
    assert [s.id for s in samples] == sorted(s.id for s in samples)
    assert all(s.image_path.suffix == ".jpg" and s.mask_path.suffix == ".png" for s in samples)


def test_listed_id_without_mask_is_named(tmp_path, voc_masks_dir, voc_ids):
    root = _make_voc(tmp_path / "voc", voc_masks_dir, voc_ids)
    (root / "SegmentationClass" / f"{voc_ids[2]}.png").unlink()
    files = root / "list.txt"
    files.write_text("\n".join(voc_ids))
    with pytest.raises(DataError, match=rf"1 id\(s\).*no mask.*SegmentationClass.*{voc_ids[2]}"):
        list_samples(root / "JPEGImages", root / "SegmentationClass", files, role="dataset.training_path")


def test_many_missing_images_are_counted_and_shortened(tmp_path, voc_masks_dir, voc_ids):
    root = _make_voc(tmp_path / "voc", voc_masks_dir, voc_ids)
    files = root / "list.txt"
    files.write_text("\n".join(f"missing_{i}" for i in range(8)))
    with pytest.raises(DataError) as info:
        list_samples(root / "JPEGImages", root / "SegmentationClass", files)
    message = str(info.value)
    assert "8 id(s)" in message and "missing_0" in message and "missing_7" not in message and "..." in message
    assert str(root / "JPEGImages") in message


def test_missing_folder_names_role_and_path(tmp_path):
    with pytest.raises(DataError, match=r"dataset\.validation_path: images folder not found: .*nowhere"):
        list_samples(tmp_path / "nowhere", tmp_path, role="dataset.validation_path")
    (tmp_path / "img").mkdir()
    with pytest.raises(DataError, match=r"dataset\.training_path: masks folder not found"):
        list_samples(tmp_path / "img", tmp_path / "no_masks", role="dataset.training_path")


def test_no_pairs_says_what_was_looked_for(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "a.jpg"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"no samples found: looked for images .*with a mask of the same name"):
        list_samples(tmp_path / "img", tmp_path / "msk")


def test_split_samples_is_deterministic_and_disjoint():
    samples = [Sample(f"s{i:03d}", Path(f"{i}.jpg"), Path(f"{i}.png")) for i in range(50)]
    remaining, split_off = split_samples(samples, 0.2, seed=7)
    assert len(split_off) == 10 and len(remaining) == 40
    assert sorted(remaining + split_off, key=lambda s: s.id) == samples
    assert (remaining, split_off) == split_samples(samples, 0.2, seed=7)
    assert split_off != split_samples(samples, 0.2, seed=8)[1]
    assert len(split_samples(samples[:3], 0.01, seed=0)[1]) == 1
    assert split_samples(samples[:3], 0.0, seed=0) == (samples[:3], [])


# ----------------------------------------------------------------------------------------------- Cityscapes
def _cityscapes_tree(root: Path) -> Path:
    """The real pseudo-Cityscapes sample under the official folder structure (leftImg8bit|gtFine/val/<city>/)."""
    from conftest import shared_path

    source = shared_path("datasets", "cityscapes_samples", "mmseg_pseudo_val_256x128")
    for kind in ("leftImg8bit", "gtFine"):
        city = root / kind / "val" / "frankfurt"
        city.mkdir(parents=True)
        for file in (source / kind).iterdir():
            (city / file.name).symlink_to(file)
    return root


def test_cityscapes_layout_pairs_by_id_in_city_folders(tmp_path):
    root = _cityscapes_tree(tmp_path / "cityscapes")
    samples = list_samples(root / "leftImg8bit" / "val", root / "gtFine" / "val", role="dataset.validation_path",
                           layout="cityscapes")
    assert [s.id for s in samples] == ["frankfurt_000000_000294"]
    assert samples[0].mask_path.name == "frankfurt_000000_000294_gtFine_labelTrainIds.png"
    ids = tmp_path / "val.txt"
    ids.write_text("leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png\n")
    assert list_samples(root / "leftImg8bit" / "val", root / "gtFine" / "val", ids, layout="cityscapes") == samples
    plain = list_samples(root / "leftImg8bit" / "val", root / "gtFine" / "val", layout="cityscapes_label_ids")
    assert plain[0].mask_path.name.endswith("_gtFine_labelIds.png")
    with pytest.raises(DataError, match="no samples found.*<id>_leftImg8bit.*<id>_gtFine_labelTrainIds.*subfolders"):
        list_samples(root / "leftImg8bit" / "val", root / "leftImg8bit" / "val", layout="cityscapes")


def test_cityscapes_label_ids_map_to_the_official_train_ids(tmp_path):
    import yaml

    from segzoo.config import load_config
    from segzoo.data.loader import load_pair
    from segzoo.data.resolve import data_spec, evaluation_samples

    root = _cityscapes_tree(tmp_path / "cityscapes")
    cfg = yaml.safe_load((Path(__file__).parents[1] / "user_config.yaml").read_text())
    cfg["operation_mode"] = "evaluation"
    cfg["general"] = {"model_path": str(tmp_path / "m.keras")}
    (tmp_path / "m.keras").write_bytes(b"")
    cfg["dataset"] = {"name": "cityscapes", "layout": "cityscapes_label_ids",
                      "validation_path": str(root / "leftImg8bit" / "val"),
                      "validation_masks_path": str(root / "gtFine" / "val")}
    spec = data_spec(load_config(cfg))
    assert len(spec.class_names) == 19 and spec.class_names[0] == "road" and spec.class_names[-1] == "bicycle"
    _, samples = evaluation_samples(spec)
    _, mapped = load_pair(samples[0], spec.mapper)
    label_ids = np.array(Image.open(samples[0].mask_path))
    train_ids = np.array(Image.open(samples[0].mask_path.with_name(
        "frankfurt_000000_000294_gtFine_labelTrainIds.png")))
    # The two files of this downscaled sample were resized separately, so borders differ; for every labelId the
    # file's dominant trainId is the official one, and the mapped mask agrees with the trainIds file elsewhere.
    for label_id in np.unique(label_ids):
        values, counts = np.unique(train_ids[label_ids == label_id], return_counts=True)
        assert np.unique(mapped[label_ids == label_id]).tolist() == [values[np.argmax(counts)]], label_id
    assert (mapped == train_ids).mean() > 0.97
