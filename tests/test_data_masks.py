"""Mask reading, class mapping, pair loading and dataset scanning on real VOC, COCO and CamVid files."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import COCO_TO_VOC
from segzoo.data.layouts import Sample, list_samples, read_id_list
from segzoo.data.loader import load_pair, read_image, scan_samples
from segzoo.data.masks import ClassMapper, read_mask
from segzoo.errors import DataError

VOC_VALUES = set(range(21)) | {255}


@pytest.fixture
def coco_samples(coco_dir: Path) -> list[Sample]:
    return list_samples(coco_dir / "images" / "train2017", coco_dir / "semantic_segmentation" / "masks" / "train2017")


@pytest.fixture
def camvid_samples(camvid_dir: Path) -> list[Sample]:
    return list_samples(camvid_dir / "val", camvid_dir / "valannot", camvid_dir / "val.txt")


def test_voc_palette_masks_read_as_indices_with_void(voc_masks_dir):
    ids = read_id_list(voc_masks_dir.parent / "ImageSets" / "Segmentation" / "val.txt")[:25]
    mapper = ClassMapper(21, mapping={}, default=0)  # even a default class never swallows the void 255
    for sample_id in ids:
        mask = read_mask(voc_masks_dir / f"{sample_id}.png")
        assert mask.ndim == 2 and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= VOC_VALUES and 255 in mask
        mapped = mapper.apply(mask)
        assert np.array_equal(mapped == 255, mask == 255)
        assert mapper.invalid_values(mapped) == []
    first = read_mask(voc_masks_dir / "2007_000033.png")  # aeroplanes
    assert set(np.unique(first)) == {0, 1, 255}


def test_coco_ids_map_to_voc_classes(coco_samples):
    mapper = ClassMapper(21, mapping=COCO_TO_VOC, default=0)
    with_person = 0
    for sample in coco_samples:
        raw = read_mask(sample.mask_path)
        mapped = mapper.apply(raw)
        mapper.check(mapped, sample.mask_path)
        assert set(np.unique(mapped)) <= VOC_VALUES
        assert np.all(mapped[raw == 1] == 15) and np.all(mapped[raw == 0] == 255)
        assert np.all(mapped[raw == 189] == 0)  # table-merged (stuff) is background
        with_person += int((mapped == 15).any())
    assert with_person == 51  # SOURCE.md: person appears in 51 of the 100 images


def test_grayscale_coco_jpeg_loads_as_rgb(coco_dir):
    path = coco_dir / "images" / "train2017" / "000000000086.jpg"
    assert Image.open(path).mode == "L"
    image = read_image(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert np.array_equal(image[..., 0], image[..., 2]) and np.array_equal(image[..., 0], np.array(Image.open(path)))


def test_bad_values_error_names_file_and_values(camvid_samples):
    sample = camvid_samples[0]
    with pytest.raises(DataError) as info:
        load_pair(sample, ClassMapper(8))  # CamVid holds 0..11
    message = str(info.value)
    assert str(sample.mask_path) in message
    assert "[8, 9, 10, 11]" in message and "0..7" in message and "dataset.ignore_index (255)" in message
    image, mask = load_pair(sample, ClassMapper(11, ignore_index=11))
    assert image.shape == (360, 480, 3) and mask.shape == (360, 480) and mask.dtype == np.uint8


def test_other_mask_formats(tmp_path):
    gray_rgb = np.repeat(np.array([[0, 1], [2, 255]], np.uint8)[..., None], 3, axis=2)
    Image.fromarray(gray_rgb).save(tmp_path / "rgb_gray.png")
    assert np.array_equal(read_mask(tmp_path / "rgb_gray.png"), gray_rgb[..., 0])
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (128, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match=r"colour.png: mask is a colour image.*palette"):
        read_mask(tmp_path / "colour.png")
    wide = np.array([[0, 300], [1, 1000]], np.uint16)
    cv2.imwrite(str(tmp_path / "wide.png"), wide)
    mask = read_mask(tmp_path / "wide.png")
    assert mask.dtype == np.uint16 and np.array_equal(mask, wide)
    mapper = ClassMapper(3, mapping={300: 2})
    mapped = mapper.apply(mask)
    assert mapper.invalid_values(mapped) == [1000]
    assert ClassMapper(3, mapping={300: 2, 1000: 255}).apply(mask).tolist() == [[0, 2], [1, 255]]
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"junk.png: cannot read mask"):
        read_mask(tmp_path / "junk.png")


def test_size_mismatch_names_both_files_and_sizes(tmp_path, camvid_samples):
    sample = camvid_samples[0]
    small = tmp_path / "small.png"
    Image.fromarray(read_mask(sample.mask_path)[:300, :400]).save(small)
    bad = Sample(sample.id, sample.image_path, small)
    with pytest.raises(DataError) as info:
        load_pair(bad, ClassMapper(11, ignore_index=11))
    message = str(info.value)
    assert str(small) in message and str(sample.image_path) in message
    assert "400x300" in message and "480x360" in message


def test_scan_skips_bad_samples_with_one_warning(tmp_path, camvid_samples, caplog):
    good = camvid_samples[:4]
    mask = read_mask(good[0].mask_path)
    Image.fromarray(mask[:100]).save(tmp_path / "short.png")
    Image.fromarray(np.where(mask == 3, 200, mask).astype(np.uint8)).save(tmp_path / "value.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    bad = [Sample(f"bad{i}", good[0].image_path, tmp_path / name)
           for i, name in enumerate(["short.png", "value.png", "broken.png"])]
    samples = [good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3]]
    mapper = ClassMapper(11, ignore_index=11)
    with caplog.at_level(logging.WARNING, logger="segzoo.data.loader"):
        kept = scan_samples(samples, mapper, on_bad_sample="skip")
    assert kept == good
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Skipped 3 of 7" in warnings[0]
    assert "short.png" in warnings[0] and "[200]" in warnings[0] and "broken.png" in warnings[0]
    with pytest.raises(DataError, match=r"short.png: mask size"):  # the first bad one in list order
        scan_samples(samples, mapper)
    with pytest.raises(DataError, match=r"all 3 samples are unusable"):
        scan_samples(bad, mapper, on_bad_sample="skip")


def test_scan_accepts_real_datasets(camvid_samples, coco_samples):
    assert scan_samples(camvid_samples, ClassMapper(11, ignore_index=11)) == camvid_samples
    assert scan_samples(coco_samples, ClassMapper(21, mapping=COCO_TO_VOC, default=0)) == coco_samples
