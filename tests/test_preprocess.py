"""Geometry of preprocessing and of mapping predictions back onto the original image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from segzoo.preprocess import (Preprocessing, compute_placement, resize_argmax, resize_mask, restore_argmax,
                               restore_logits, to_model_input)


def smooth_scores(rng: np.random.Generator, hw: tuple[int, int], classes: int) -> np.ndarray:
    """Scores with region structure, like a segmentation model's (plus a little noise)."""
    coarse = rng.normal(size=(max(2, hw[0] // 8), max(2, hw[1] // 8), classes)).astype(np.float32)
    return cv2.resize(coarse, hw[::-1]) + rng.normal(scale=0.02, size=(*hw, classes)).astype(np.float32)


@pytest.mark.parametrize(("src", "dst"), [((64, 64), (480, 640)), ((257, 257), (333, 500)),
                                          ((512, 512), (480, 640)), ((100, 80), (50, 40))])
def test_resize_argmax_equals_argmax_of_opencv_bilinear(src, dst) -> None:
    scores = smooth_scores(np.random.default_rng(0), src, 21)
    reference = np.argmax(cv2.resize(scores, dst[::-1], interpolation=cv2.INTER_LINEAR), axis=-1)
    labels = resize_argmax(scores, dst)
    assert labels.shape == dst and labels.dtype == np.int32
    assert np.count_nonzero(labels != reference) <= 1e-4 * labels.size  # float round-off at exact ties only


@pytest.mark.parametrize("aspect_ratio", ["fit", "crop", "padding"])
def test_restore_argmax_matches_restoring_every_channel(aspect_ratio) -> None:
    scores = smooth_scores(np.random.default_rng(1), (128, 128), 5)
    placement = compute_placement((300, 400), (128, 128), aspect_ratio)
    fast = restore_argmax(scores, placement)
    slow = np.argmax(restore_logits(scores, placement), axis=-1)
    assert fast.shape == slow.shape == placement.crop[2:]
    assert np.count_nonzero(fast != slow) <= 1e-4 * fast.size


def test_padding_pads_masks_with_ignore_and_images_with_zero() -> None:
    pp = Preprocessing(aspect_ratio="padding", scale=1.0, offset=0.0)
    image = np.full((100, 200, 3), 200, np.uint8)
    x, placement = to_model_input(image, (64, 64), pp)
    y, _, h, _ = placement.content
    assert (h, x.shape[:2]) == (32, (64, 64)) and y == 16
    assert x[0, 0, 0] == 0.0 and x[32, 32, 0] == 200.0
    mask = resize_mask(np.ones((100, 200), np.uint8), (64, 64), pp, 255)
    assert set(np.unique(mask[:16])) == {255} and set(np.unique(mask[16:48])) == {1}


def test_scores_with_more_channels_than_one_opencv_call_takes() -> None:
    """150 classes (ADE20K): OpenCV 5 resizes at most 128 channels per call; the result is per-channel bilinear."""
    rng = np.random.default_rng(3)
    scores = np.concatenate([smooth_scores(rng, (16, 24), 100), smooth_scores(rng, (16, 24), 50)], axis=-1)
    placement = compute_placement((90, 120), (64, 96), "fit")
    restored = restore_logits(scores, placement)
    per_channel = np.stack([restore_logits(scores[..., c : c + 1], placement)[..., 0] for c in range(150)], -1)
    assert restored.shape == (90, 120, 150)
    np.testing.assert_allclose(restored, per_channel, atol=1e-5)  # OpenCV SIMD paths round differently
    labels = restore_argmax(scores, placement)
    assert np.count_nonzero(labels != np.argmax(per_channel, axis=-1)) <= 1e-4 * labels.size
