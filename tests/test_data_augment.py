"""Augmentation: image and mask move together, masks keep their values, photometric leaves masks alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from segzoo.data.augment import build_augmenter
from segzoo.data.augment_spec import AUGMENTATIONS, GEOMETRIC, validate_augmentations
from segzoo.data.loader import load_pair
from segzoo.data.layouts import list_samples
from segzoo.data.masks import ClassMapper
from segzoo.errors import ConfigError

IGNORE = 255
PHOTOMETRIC = sorted(set(AUGMENTATIONS) - GEOMETRIC)


@pytest.fixture
def camvid_pair(camvid_dir):
    sample = list_samples(camvid_dir / "val", camvid_dir / "valannot", camvid_dir / "val.txt")[0]
    image, mask = load_pair(sample, ClassMapper(11, ignore_index=11))
    return image.astype(np.float32), mask


def _always(*names: str, **params: dict) -> list[tuple[str, dict]]:
    return validate_augmentations({name: {"change_rate": 1.0, **params.get(name, {})} for name in names})


def _run(augmentations, image, mask, seed=(1, 2)):
    fn = build_augmenter(augmentations, IGNORE)
    out_image, out_mask = fn(tf.constant(image), tf.constant(mask), seed=tf.constant(seed, tf.int64))
    return out_image.numpy(), out_mask.numpy()


@pytest.mark.parametrize("name", sorted(GEOMETRIC) + ["all"])
def test_geometric_keeps_mask_values(camvid_pair, name):
    image, mask = camvid_pair
    names = sorted(GEOMETRIC) if name == "all" else [name]
    augmentations = _always(*names, random_rotation={"factor": 0.1})
    allowed = set(np.unique(mask).tolist()) | {IGNORE}
    changed = False
    for seed in range(4):
        out_image, out_mask = _run(augmentations, image, mask, seed=(seed, 9))
        assert out_image.shape == image.shape and out_image.dtype == np.float32
        assert out_mask.shape == mask.shape and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask).tolist()) <= allowed
        changed |= not np.array_equal(out_mask, mask)
    assert changed


def test_rotation_fills_outside_with_ignore_and_crop_never_does(camvid_pair):
    image, mask = camvid_pair
    _, rotated = _run(_always("random_rotation", random_rotation={"factor": 0.1}), image, mask, seed=(3, 3))
    assert IGNORE in rotated
    for seed in range(4):
        _, cropped = _run(_always("random_crop"), image, mask, seed=(seed, 0))
        assert IGNORE not in cropped


@pytest.mark.parametrize("mode, axes", [("horizontal", (1,)), ("vertical", (0,)), ("horizontal_and_vertical", (0, 1))])
def test_flip_moves_image_and_mask_together(camvid_pair, mode, axes):
    image, mask = camvid_pair
    out_image, out_mask = _run(_always("random_flip", random_flip={"mode": mode}), image, mask)
    assert np.array_equal(out_image, np.flip(image, axes))
    assert np.array_equal(out_mask, np.flip(mask, axes))


def test_change_rate_zero_is_identity_and_half_flips_some(camvid_pair):
    image, mask = camvid_pair
    never = validate_augmentations({"random_flip": {"change_rate": 0.0}, "random_brightness": {"change_rate": 0.0}})
    out_image, out_mask = _run(never, image, mask)
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)
    half = validate_augmentations({"random_flip": None})
    flipped = [not np.array_equal(_run(half, image, mask, seed=(s, 0))[1], mask) for s in range(16)]
    assert 0 < sum(flipped) < 16


@pytest.mark.parametrize("name", PHOTOMETRIC + ["all"])
def test_photometric_changes_image_only(camvid_pair, name):
    image, mask = camvid_pair
    names = PHOTOMETRIC if name == "all" else [name]
    out_image, out_mask = _run(_always(*names), image, mask, seed=(5, 6))
    assert np.array_equal(out_mask, mask)
    assert out_image.dtype == np.float32 and out_image.shape == image.shape
    assert out_image.min() >= 0.0 and out_image.max() <= 255.0
    assert not np.allclose(out_image, image)


def test_graph_mode_repeatable_per_seed(camvid_pair):
    image, mask = camvid_pair
    fn = build_augmenter(_always("random_crop", "random_rotation", "random_gaussian_noise"), IGNORE, seed=0)
    ds = tf.data.Dataset.from_tensors((image, mask)).repeat(3).enumerate()
    ds = ds.map(lambda i, pair: fn(pair[0], pair[1], seed=tf.stack([i, i])), num_parallel_calls=2)
    first = [m.numpy() for _, m in ds]
    second = [m.numpy() for _, m in ds]
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert not np.array_equal(first[0], first[1])
    unseeded = tf.data.Dataset.from_tensors((image, mask)).map(fn)  # seeds from the augmenter's generator
    assert next(iter(unseeded))[1].shape == mask.shape


def test_validate_fills_defaults_and_keeps_order():
    result = validate_augmentations({"random_zoom": None, "random_flip": {"mode": "vertical"},
                                     "random_gamma": {"gamma": [0.9, 1.1]}})
    assert [name for name, _ in result] == ["random_zoom", "random_flip", "random_gamma"]
    assert result[0][1] == {"factor": 0.2, "change_rate": 1.0}
    assert result[1][1] == {"mode": "vertical", "change_rate": 0.5}
    assert result[2][1]["gamma"] == (0.9, 1.1)
    assert validate_augmentations(None) == []


@pytest.mark.parametrize("config, pattern", [
    ({"random_flp": None}, r"data_augmentation\.random_flp: unknown augmentation; did you mean 'random_flip'"),
    ({"random_flip": {"mode": "diagonal"}},
     r"data_augmentation\.random_flip\.mode: 'diagonal' .*allowed: horizontal, vertical, horizontal_and_vertical"),
    ({"random_zoom": {"factr": 0.1}}, r"data_augmentation\.random_zoom\.factr: unknown parameter .*'factor'"),
    ({"random_hue": {"change_rate": 1.5}}, r"random_hue\.change_rate: expected a number in \[0, 1\], got 1\.5"),
    ({"random_gamma": {"gamma": [1.2, 0.8]}}, r"random_gamma\.gamma: expected \[low, high\]"),
    ({"random_blur": {"sigma": [1.0]}}, r"random_blur\.sigma: expected \[low, high\]"),
    ({"random_crop": {"crop_scale": [0.0, 1.0]}}, r"random_crop\.crop_scale: .*\(0, 1\]"),
    ({"random_brightness": {"factor": True}}, r"random_brightness\.factor: expected a number"),
    ({"random_contrast": 0.3}, r"random_contrast: expected a mapping of parameters"),
])
def test_validate_errors_name_key_and_fix(config, pattern):
    with pytest.raises(ConfigError, match=pattern):
        validate_augmentations(config)


def test_validation_and_numpy_modules_do_not_import_tensorflow():
    code = ("import sys, segzoo.data.augment_spec, segzoo.data.layouts, segzoo.data.masks, segzoo.data.loader, "
            "segzoo.data.synthetic; assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
