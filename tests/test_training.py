"""Training pieces: ignore-aware loss, class weights, streaming mIoU, schedules."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from segzoo.config.schema import LRScheduleConfig  # noqa: E402
from segzoo.data.masks import ClassMapper, read_mask  # noqa: E402
from segzoo.evaluation.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402
from segzoo.training.losses import IgnoreAwareCrossEntropy, median_frequency_weights  # noqa: E402
from segzoo.training.metrics import StreamingMeanIoU  # noqa: E402
from segzoo.training.schedules import lr_schedule  # noqa: E402


def random_batch(rng: np.random.Generator, n: int = 2, hw: int = 8, classes: int = 4):
    labels = rng.integers(0, classes, size=(n, hw, hw)).astype(np.int32)
    logits = rng.normal(size=(n, hw, hw, classes)).astype(np.float32)
    return labels, logits


def test_ignored_pixels_do_not_change_the_loss() -> None:
    rng = np.random.default_rng(0)
    labels, logits = random_batch(rng)
    labels[:, :2] = 255
    loss = IgnoreAwareCrossEntropy(4, 255)
    base = float(loss(labels, logits))
    logits2 = logits.copy()
    logits2[:, :2] = rng.normal(size=logits2[:, :2].shape) * 50  # what the model says on void does not matter
    assert float(loss(labels, logits2)) == pytest.approx(base, rel=1e-6)
    valid = labels != 255
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(np.where(valid, labels, 0), logits).numpy()
    assert base == pytest.approx(ce[valid].mean(), rel=1e-5)


def test_class_weights_any_number_of_classes() -> None:
    rng = np.random.default_rng(1)
    labels, logits = random_batch(rng, classes=7)
    weights = [0.0, 1, 1, 1, 1, 1, 3.0]
    value = float(IgnoreAwareCrossEntropy(7, 255, weights)(labels, logits))
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits).numpy()
    w = np.asarray(weights)[labels]
    assert value == pytest.approx((ce * w).sum() / w.sum(), rel=1e-5)
    with pytest.raises(ValueError, match="3 class weights for 7 classes"):
        IgnoreAwareCrossEntropy(7, 255, [1.0, 1.0, 1.0])


def test_low_resolution_logits_are_upsampled_for_the_loss() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=(1, 16, 16)).astype(np.int32)
    logits = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
    assert np.isfinite(float(IgnoreAwareCrossEntropy(3)(labels, logits)))


def test_streaming_miou_matches_dataset_confusion_matrix() -> None:
    rng = np.random.default_rng(3)
    metric = StreamingMeanIoU(5, 255)
    cm = np.zeros((5, 5), np.int64)
    for _ in range(3):
        labels, logits = random_batch(rng, classes=5)
        labels[0, 0] = 255
        metric.update_state(labels, logits)
        cm += confusion_matrix(labels, logits.argmax(-1), 5, 255)
    expected = metrics_from_confusion(cm, [str(i) for i in range(5)])["miou"]
    assert float(metric.result()) == pytest.approx(expected, abs=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_median_frequency_weights_on_real_camvid(camvid_dir) -> None:
    mapper = ClassMapper(num_classes=11, ignore_index=255, mapping={11: 255})
    masks = [mapper.apply(read_mask(p)) for p in sorted((camvid_dir / "trainannot").glob("*.png"))[:40]]
    weights = median_frequency_weights(masks, 11)
    assert len(weights) == 11
    # Rare classes (pole 2, sign 6, pedestrian 9, bicyclist 10) weigh more than road (3) and sky (0),
    # as in SegNet's published weights for the same data.
    assert min(weights[2], weights[6], weights[9]) > max(weights[3], weights[0])
    assert sorted(weights)[len(weights) // 2] == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("name", ["constant", "cosine", "polynomial", "step"])
def test_schedules_start_at_base_and_never_go_below_min(name: str) -> None:
    cfg = LRScheduleConfig(name=name, warmup_epochs=2, min_lr=1e-5, step_epochs=3, factor=0.5)
    lr = lr_schedule(cfg, 1e-3, 20)
    values = [lr(e) for e in range(20)]
    assert values[0] < values[1] < values[2] == pytest.approx(1e-3)
    assert all(v >= 1e-5 - 1e-12 for v in values)
    if name != "constant":
        assert values[-1] < values[2]
        assert all(b <= a + 1e-12 for a, b in zip(values[2:], values[3:]))
