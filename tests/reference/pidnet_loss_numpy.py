"""NumPy transcription of the official PIDNet training loss semantics (``utils/criterion.py``, ``FullModel``).

Independent of segzoo's TensorFlow losses: NCHW float64 arrays, PyTorch's bilinear ``F.interpolate`` with either
``align_corners``, ``nn.CrossEntropyLoss(weight, ignore_index, reduction)``, ``OhemCrossEntropy._ohem_forward``
(sort, k-th probability, keep ``pred < threshold``, plain mean), ``weighted_bce`` and the boundary-aware label
``where(sigmoid(d) > 0.8, labels, ignore)``.
"""

from __future__ import annotations

import numpy as np


def _axis(n_in: int, n_out: int, align_corners: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if align_corners:
        src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    else:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def interpolate(x: np.ndarray, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """``F.interpolate(x, size, mode='bilinear', align_corners=...)`` for NCHW ``x``."""
    y0, y1, ly = _axis(x.shape[2], size[0], align_corners)
    x0, x1, lx = _axis(x.shape[3], size[1], align_corners)
    rows = x[:, :, y0] * (1 - ly)[None, None, :, None] + x[:, :, y1] * ly[None, None, :, None]
    return rows[:, :, :, x0] * (1 - lx) + rows[:, :, :, x1] * lx


def cross_entropy_none(score: np.ndarray, target: np.ndarray, weight, ignore: int) -> np.ndarray:
    """``CrossEntropyLoss(weight, ignore_index, reduction='none')``: ``-w[t] log softmax[t]``, 0 where ignored."""
    shifted = score - score.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    safe = np.where(target == ignore, 0, target)
    picked = np.take_along_axis(log_softmax, safe[:, None], axis=1)[:, 0]
    w = np.ones(score.shape[1]) if weight is None else np.asarray(weight, np.float64)
    return np.where(target == ignore, 0.0, -w[safe] * picked)


def cross_entropy_mean(score, target, weight, ignore) -> float:
    """``CrossEntropyLoss(weight, ignore_index)`` with the default 'mean': ``sum(w[t] l) / sum(w[t])``."""
    safe = np.where(target == ignore, 0, target)
    w = np.ones(score.shape[1]) if weight is None else np.asarray(weight, np.float64)
    weights = np.where(target == ignore, 0.0, w[safe])
    return float(cross_entropy_none(score, target, weight, ignore).sum() / weights.sum())


def ohem(score, target, weight, ignore, thresh, min_kept) -> float:
    """``OhemCrossEntropy._ohem_forward``."""
    shifted = score - score.max(axis=1, keepdims=True)
    pred = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    pixel_losses = cross_entropy_none(score, target, weight, ignore).reshape(-1)
    mask = target.reshape(-1) != ignore
    tmp = np.where(target == ignore, 0, target)
    pred = np.take_along_axis(pred, tmp[:, None], axis=1).reshape(-1)[mask]
    ind = np.argsort(pred, kind="stable")
    pred = pred[ind]
    min_value = pred[min(max(1, min_kept), pred.size - 1)]
    threshold = max(min_value, thresh)
    kept = pixel_losses[mask][ind][pred < threshold]
    return float(kept.mean())


def weighted_bce(bd_pre: np.ndarray, target: np.ndarray) -> float:
    """Official ``weighted_bce`` (N1HW logits, NHW 0/1 target), ``reduction='mean'`` over every element."""
    log_p = bd_pre.transpose(0, 2, 3, 1).reshape(1, -1)
    t = target.reshape(1, -1).astype(np.float64)
    pos, neg = t == 1, t == 0
    pos_num, neg_num = pos.sum(), neg.sum()
    total = pos_num + neg_num
    weight = np.zeros_like(log_p)
    weight[pos] = neg_num / total
    weight[neg] = pos_num / total
    bce = np.maximum(log_p, 0) - log_p * t + np.log1p(np.exp(-np.abs(log_p)))
    return float((bce * weight).mean())


def full_model_losses(outputs: dict[str, np.ndarray], labels: np.ndarray, boundary: np.ndarray, *, weight=None,
                      ignore: int = 255, thresh: float = 0.9, min_kept: int = 131072, bas_threshold: float = 0.8,
                      use_ohem: bool = True, align_corners: bool = True) -> dict[str, float]:
    """The four unweighted terms of ``FullModel.forward`` for NCHW ``outputs`` {"aux", "logits", "boundary"}."""
    size = labels.shape[1:]
    up = {k: interpolate(v, size, align_corners) for k, v in outputs.items()}
    if use_ohem:
        # CrossEntropy terms of OhemCrossEntropy.forward are per-pixel tensors averaged by losses.mean()
        aux = float(cross_entropy_none(up["aux"], labels, weight, ignore).mean())
        main = ohem(up["logits"], labels, weight, ignore, thresh, min_kept)
    else:
        aux = cross_entropy_mean(up["aux"], labels, weight, ignore)
        main = cross_entropy_mean(up["logits"], labels, weight, ignore)
    d = up["boundary"]
    bd_label = np.where(1 / (1 + np.exp(-d[:, 0])) > bas_threshold, labels, ignore)
    if use_ohem:
        bas = ohem(up["logits"], bd_label, weight, ignore, thresh, min_kept)
    else:
        bas = cross_entropy_mean(up["logits"], bd_label, weight, ignore)
    return {"main": main, "aux": aux, "boundary": weighted_bce(d, boundary), "boundary_aware": bas}
