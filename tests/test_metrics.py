"""Confusion matrix and metrics on hand-built cases and against a naive loop."""

from __future__ import annotations

import numpy as np
import pytest

from segzoo.errors import DataError, ModelError
from segzoo.evaluation.metrics import confusion_matrix, metrics_from_confusion

NAMES3 = ["background", "cat", "dog"]


def test_perfect_prediction() -> None:
    truth = np.array([[0, 1], [2, 2]], dtype=np.uint8)
    cm = confusion_matrix(truth, truth.astype(np.int32), 3)
    assert cm.dtype == np.int64
    np.testing.assert_array_equal(cm, np.diag([1, 1, 2]))
    m = metrics_from_confusion(cm, NAMES3)
    assert m["miou"] == m["pixel_accuracy"] == m["mean_accuracy"] == m["fwiou"] == 1.0
    assert m["per_class_pixels"] == {"background": 1, "cat": 1, "dog": 2}
    assert m["num_pixels"] == 4


def test_class_absent_from_truth_and_prediction_is_left_out_of_the_mean() -> None:
    truth = np.array([0, 0, 1, 1], dtype=np.uint8)
    pred = np.array([0, 1, 1, 1], dtype=np.int32)
    m = metrics_from_confusion(confusion_matrix(truth, pred, 3), NAMES3)
    # background: tp 1, union 2 -> 0.5; cat: tp 2, union 3 -> 2/3; dog: empty union -> None, not 0
    assert m["per_class_iou"] == {"background": 0.5, "cat": pytest.approx(2 / 3), "dog": None}
    assert m["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m["per_class_accuracy"] == {"background": 0.5, "cat": 1.0, "dog": None}
    assert m["mean_accuracy"] == pytest.approx(0.75)
    assert m["pixel_accuracy"] == pytest.approx(0.75)
    assert m["fwiou"] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_class_only_predicted_counts_with_iou_zero() -> None:
    truth = np.array([0, 0, 0, 0], dtype=np.uint8)
    pred = np.array([0, 0, 0, 2], dtype=np.int32)
    m = metrics_from_confusion(confusion_matrix(truth, pred, 3), NAMES3)
    assert m["per_class_iou"] == {"background": 0.75, "cat": None, "dog": 0.0}
    assert m["miou"] == pytest.approx(0.375)
    assert m["per_class_accuracy"]["dog"] is None  # absent from the truth


def test_ignored_pixels_are_excluded() -> None:
    truth = np.array([0, 255, 1, 255], dtype=np.uint8)
    pred = np.array([0, 2, 1, 1], dtype=np.int32)  # wrong predictions only on ignored pixels
    cm = confusion_matrix(truth, pred, 3, ignore_index=255)
    assert cm.sum() == 2
    m = metrics_from_confusion(cm, NAMES3)
    assert m["miou"] == 1.0 and m["pixel_accuracy"] == 1.0 and m["per_class_iou"]["dog"] is None
    # another ignore index: 255 then is a class value out of range, 1 is ignored
    truth = np.array([0, 1, 2], dtype=np.uint8)
    assert confusion_matrix(truth, np.array([0, 0, 2]), 3, ignore_index=1).sum() == 2


def test_all_ignored_gives_undefined_metrics() -> None:
    cm = confusion_matrix(np.full((2, 2), 255, np.uint8), np.zeros((2, 2), np.int32), 3)
    m = metrics_from_confusion(cm, NAMES3)
    assert m["miou"] is None and m["pixel_accuracy"] is None and m["num_pixels"] == 0


def test_prediction_out_of_range_is_a_model_error() -> None:
    truth = np.zeros((2, 2), np.uint8)
    with pytest.raises(ModelError, match="model predicts class 21 but dataset has 21 classes"):
        confusion_matrix(truth, np.full((2, 2), 21, np.int32), 21)
    with pytest.raises(ModelError, match="class -1"):
        confusion_matrix(truth, np.full((2, 2), -1, np.int32), 21)


def test_truth_out_of_range_is_a_data_error() -> None:
    with pytest.raises(DataError, match="mask holds class 5"):
        confusion_matrix(np.array([0, 5], np.uint8), np.array([0, 0]), 3)


def test_class_names_must_match_the_matrix() -> None:
    with pytest.raises(Exception, match="2 class names"):
        metrics_from_confusion(np.zeros((3, 3), np.int64), ["a", "b"])


def _naive_confusion(truth: np.ndarray, pred: np.ndarray, n: int, ignore: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    for t, p in zip(truth.ravel().tolist(), pred.ravel().tolist()):
        if t != ignore:
            cm[t, p] += 1
    return cm


def _naive_miou(cm: np.ndarray) -> float:
    ious = []
    for c in range(cm.shape[0]):
        inter = cm[c, c]
        union = cm[c, :].sum() + cm[:, c].sum() - inter
        if union > 0:
            ious.append(inter / union)
    return sum(ious) / len(ious)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matches_a_naive_loop_on_random_data(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 21
    truth = rng.integers(0, n, size=(37, 53)).astype(np.uint8)
    truth[rng.random(truth.shape) < 0.1] = 255
    truth[truth == 7] = 3  # class 7 never in the truth
    pred = rng.integers(0, n, size=truth.shape).astype(np.int32)
    pred[pred == 9] = 0  # class 9 never predicted
    cm = confusion_matrix(truth, pred, n)
    np.testing.assert_array_equal(cm, _naive_confusion(truth, pred, n, 255))
    m = metrics_from_confusion(cm, [f"c{i}" for i in range(n)])
    assert m["miou"] == pytest.approx(_naive_miou(cm), abs=1e-12)
    assert m["num_pixels"] == int((truth != 255).sum())
    assert m["pixel_accuracy"] == pytest.approx(((truth == pred) & (truth != 255)).sum() / (truth != 255).sum())
