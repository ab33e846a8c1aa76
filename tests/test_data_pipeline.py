"""tf.data pipeline on real data: shapes, dtypes, value ranges, ignore padding, augmentation, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tensorflow as tf

from conftest import COCO_TO_VOC
from segzoo.data.augment import build_augmenter
from segzoo.data.augment_spec import validate_augmentations
from segzoo.data.layouts import Sample, list_samples
from segzoo.data.loader import load_pair
from segzoo.data.masks import ClassMapper
from segzoo.data.pipeline import data_errors, make_dataset
from segzoo.errors import DataError
from segzoo.preprocess import Preprocessing, resize_mask, to_model_input

CAMVID = ClassMapper(11, ignore_index=11)


@pytest.fixture
def camvid_samples(camvid_dir):
    return list_samples(camvid_dir / "val", camvid_dir / "valannot", camvid_dir / "val.txt")[:10]


@pytest.fixture
def coco_samples(coco_dir):
    masks_dir = coco_dir / "semantic_segmentation" / "masks" / "train2017"
    return list_samples(coco_dir / "images" / "train2017", masks_dir)[:8]


def _all(ds):
    images, masks = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return images, masks


def test_batches_shapes_dtypes_and_ranges(camvid_samples):
    ds = make_dataset(camvid_samples, CAMVID, (96, 128), Preprocessing(scale=1 / 127.5, offset=-1.0), 4)
    images, masks = _all(ds)
    assert [x.shape for x in images] == [(4, 96, 128, 3), (4, 96, 128, 3), (2, 96, 128, 3)]
    assert [y.shape for y in masks] == [(4, 96, 128), (4, 96, 128), (2, 96, 128)]
    assert all(x.dtype == np.float32 for x in images) and all(y.dtype == np.int32 for y in masks)
    stacked = np.concatenate(images)
    assert stacked.min() >= -1.0 and stacked.max() <= 1.0 and stacked.min() < -0.9 and stacked.max() > 0.9
    assert set(np.unique(np.concatenate(masks)).tolist()) == set(range(12))
    assert ds.element_spec[0].shape.as_list() == [None, 96, 128, 3]
    dropped = make_dataset(camvid_samples, CAMVID, (96, 128), Preprocessing(), 4, drop_remainder=True)
    assert dropped.element_spec[0].shape.as_list() == [4, 96, 128, 3] and len(_all(dropped)[0]) == 2


@pytest.mark.parametrize("color_mode, channels", [("rgb", 3), ("bgr", 3), ("grayscale", 1)])
def test_values_match_shared_preprocessing(camvid_samples, color_mode, channels):
    pp = Preprocessing(scale=1 / 255.0, offset=0.0, color_mode=color_mode, aspect_ratio="crop")
    images, masks = _all(make_dataset(camvid_samples[:3], CAMVID, (64, 64), pp, 3, cache=False))
    for sample, image, mask in zip(camvid_samples, images[0], masks[0]):
        raw_image, raw_mask = load_pair(sample, CAMVID)
        expected, _ = to_model_input(raw_image, (64, 64), pp)
        assert image.shape == (64, 64, channels)
        np.testing.assert_allclose(image, expected, atol=1e-6)
        assert np.array_equal(mask, resize_mask(raw_mask, (64, 64), pp, CAMVID.ignore_index))


def test_padding_pads_masks_with_ignore(coco_samples):
    mapper = ClassMapper(21, mapping=COCO_TO_VOC, default=0)
    pp = Preprocessing(aspect_ratio="padding")
    images, masks = _all(make_dataset(coco_samples, mapper, (128, 128), pp, 8))
    image, mask = images[0], masks[0]
    assert set(np.unique(mask).tolist()) <= set(range(21)) | {255}
    landscape = [i for i, s in enumerate(coco_samples) if np.subtract(*load_pair(s, mapper)[0].shape[:2]) < 0]
    assert landscape
    for i in landscape:
        assert np.all(mask[i, 0] == 255) and np.all(mask[i, -1] == 255)  # rows above and below the content
        assert np.all(image[i, 0] == -1.0)  # padded pixels are 0, rescaled
        assert (mask[i, 64] != 255).any()


def test_shuffle_and_augment_repeatable_and_masks_valid(camvid_samples):
    augment = build_augmenter(validate_augmentations(
        {"random_flip": None, "random_crop": None, "random_rotation": None, "random_brightness": None}),
        ignore_index=CAMVID.ignore_index)

    def epochs(seed):
        ds = make_dataset(camvid_samples, CAMVID, (64, 96), Preprocessing(), 5, shuffle=True, augment=augment,
                          seed=seed)
        return [_all(ds) for _ in range(2)]

    (im1, m1), (im2, m2) = epochs(seed=1)
    (im3, m3), _ = epochs(seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(m1, m3)) and all(np.array_equal(a, b) for a, b in zip(im1, im3))
    assert not all(np.array_equal(a, b) for a, b in zip(m1, m2))  # reshuffled and re-augmented every epoch
    values = np.concatenate(m1 + m2)
    assert set(np.unique(values).tolist()) <= set(range(12))
    images = np.concatenate(im1 + im2)
    assert images.min() >= -1.0 and images.max() <= 1.0


def test_corrupt_image_error_names_file(tmp_path, camvid_samples):
    sample = camvid_samples[0]
    broken = tmp_path / "broken.png"
    data = sample.image_path.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    shutil.copy(sample.mask_path, tmp_path / "mask.png")
    samples = [camvid_samples[1], Sample("broken", broken, tmp_path / "mask.png")]
    ds = make_dataset(samples, CAMVID, (32, 32), Preprocessing(), 2)
    with pytest.raises(tf.errors.OpError, match="broken.png"):
        _all(ds)
    with pytest.raises(DataError, match=r"broken.png: cannot read image"), data_errors():
        _all(ds)
