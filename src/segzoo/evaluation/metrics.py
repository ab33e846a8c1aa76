"""Confusion matrix and segmentation metrics (NumPy only).

Conventions (mmsegmentation): rows are ground truth, columns are predictions; pixels whose truth is the
ignore index are excluded; mIoU averages the IoU of the classes whose union (truth or prediction) is not
empty, so a class absent from both truth and prediction does not count.
"""

from __future__ import annotations

import numpy as np

from segzoo.errors import ConfigError, DataError, ModelError


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """int64 ``[N,N]`` pixel counts, rows = truth, columns = prediction; ignored truth pixels are excluded."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    n = int(num_classes)
    truth, pred = truth.ravel(), pred.ravel()
    if pred.size:
        low, high = int(pred.min()), int(pred.max())
        if high >= n or low < 0:
            bad = high if high >= n else low
            raise ModelError(f"model predicts class {bad} but dataset has {n} classes")
    valid = truth != ignore_index
    if not valid.all():
        truth, pred = truth[valid], pred[valid]
    if truth.size and int(truth.max()) >= n:
        raise DataError(f"mask holds class {int(truth.max())} but dataset has {n} classes "
                        f"(ignore index {ignore_index})")
    index = truth.astype(np.int64) * n + pred
    return np.bincount(index, minlength=n * n).reshape(n, n).astype(np.int64, copy=False)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is 0."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _mean(values: np.ndarray) -> float | None:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else None


def _per_class(names: list[str], values: np.ndarray) -> dict[str, float | None]:
    return {name: None if np.isnan(v) else float(v) for name, v in zip(names, values)}


def metrics_from_confusion(cm: np.ndarray, class_names: list[str]) -> dict:
    """mIoU, pixel/mean accuracy, frequency-weighted IoU and per-class values from a confusion matrix.

    Per-class IoU is None for a class with an empty union, per-class accuracy None for a class absent from
    the truth; both are left out of their means. Dataset-level values are None when no pixel was counted.
    """
    cm = np.asarray(cm, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(class_names):
        raise ConfigError(f"{len(class_names)} class names for a {cm.shape} confusion matrix")
    tp = np.diag(cm).astype(np.float64)
    truth_count = cm.sum(axis=1)
    union = truth_count + cm.sum(axis=0) - tp
    total = int(cm.sum())
    iou = _ratio(tp, union)
    accuracy = _ratio(tp, truth_count)
    defined = ~np.isnan(iou)
    return {
        "miou": _mean(iou),
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "mean_accuracy": _mean(accuracy),
        "fwiou": float((truth_count[defined] * iou[defined]).sum() / total) if total else None,
        "per_class_iou": _per_class(class_names, iou),
        "per_class_accuracy": _per_class(class_names, accuracy),
        "per_class_pixels": {name: int(c) for name, c in zip(class_names, truth_count)},
        "num_pixels": total,
    }
