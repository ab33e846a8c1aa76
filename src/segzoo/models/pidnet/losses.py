"""PIDNet's training losses, as the official ``utils/criterion.py`` and ``FullModel`` (``utils/utils.py``) compute them.

Every output is first resized bilinearly from 1/8 to the label size (``FullModel``; ``loss.align_corners`` picks the
mapping: the official config uses ``align_corners=True``, segzoo's default is ``false`` because evaluation, prediction
and the board restore logits with the half-pixel mapping). Then, with ``t`` the labels (``ignore_index`` and labels
``>= num_classes`` ignored) and ``w`` the optional class weights:

- ``main`` (weight ``loss.main_weight``, 1.0): OHEM cross-entropy on ``logits`` (``OhemCrossEntropy._ohem_forward``):
  among the valid pixels sorted by the softmax probability of their label, the threshold is
  ``max(p[min(min_kept, n - 1)], ohem_threshold)`` and the loss is the plain mean of ``w[t] * CE`` over the pixels
  whose probability is below it. With ``loss.use_ohem: false``: PyTorch's weighted-mean cross-entropy
  ``sum(w[t] * CE) / sum(w[t])`` over valid pixels.
- ``aux`` (``loss.aux_weight``, 0.4): cross-entropy on the P head. With OHEM the official code evaluates it with
  ``reduction='none'`` and averages it over *all* pixels (ignored ones count as 0): ``sum(w[t] * CE) / (B*H*W)``;
  without OHEM it is the weighted mean above.
- ``boundary`` (``loss.boundary_weight``, 20): class-balanced BCE of the D head against the boundary target
  (``weighted_bce``): over the whole batch, boundary pixels weigh ``n_neg / n`` and the others ``n_pos / n``,
  averaged over the ``n = n_pos + n_neg`` pixels; target pixels equal to ``ignore_index`` (ignored labels) weigh 0
  and are not counted (the official edge maps have none, so the numbers are the same there).
- ``boundary_aware`` (``loss.bas_weight``, 1.0): the main loss again (OHEM or plain) on ``logits``, with the labels
  kept only where ``sigmoid(boundary) > loss.bas_threshold`` (0.8) and ignored elsewhere.

Where the official code would divide by zero (no pixel kept) the loss is 0. A term whose weight is 0 is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from segzoo.models.base import LossTerm
from segzoo.models.pidnet.params import PidnetParams


# -------------------------------------------------------------------------------------------- pieces
def resize_to(logits: Any, size: Any, align_corners: bool) -> Any:
    """Bilinear resize of NHWC ``logits`` to ``size`` (H, W), as ``F.interpolate(align_corners=...)`` (the same
    size is an identity)."""
    import tensorflow as tf

    return tf.raw_ops.ResizeBilinear(images=tf.cast(logits, tf.float32), size=tf.cast(size, tf.int32),
                                     align_corners=align_corners, half_pixel_centers=not align_corners)


def _labels(targets: Mapping[str, Any]) -> Any:
    import tensorflow as tf

    labels = tf.cast(targets["labels"], tf.int32)
    return tf.squeeze(labels, -1) if labels.shape.rank == 4 else labels


def pixel_losses(logits: Any, labels: Any, num_classes: int, ignore_index: int,
                 class_weights: Sequence[float] | None) -> tuple[Any, Any, Any, Any]:
    """Per pixel: ``(w[t] * CE, w[t], probability of the label, valid)`` (0 where not valid)."""
    import tensorflow as tf

    valid = tf.logical_and(tf.not_equal(labels, ignore_index), tf.logical_and(labels >= 0, labels < num_classes))
    safe = tf.where(valid, labels, 0)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
    weight = tf.cast(valid, tf.float32)
    if class_weights is not None:
        weight *= tf.gather(tf.constant(list(class_weights), tf.float32), safe)
    return ce * weight, weight, tf.exp(-ce), valid


def ohem_mean(loss: Any, prob: Any, valid: Any, threshold: float, min_kept: int) -> Any:
    """Official OHEM reduction: mean of ``loss`` over valid pixels whose label probability is below
    ``max(kth smallest probability, threshold)`` with ``k = min(min_kept, n_valid - 1)``; 0 if none."""
    import tensorflow as tf

    loss, prob, valid = (tf.reshape(t, [-1]) for t in (loss, prob, valid))
    count = tf.reduce_sum(tf.cast(valid, tf.int32))
    k = tf.minimum(tf.constant(min_kept, tf.int32), count - 1)
    below = tf.reduce_sum(tf.cast(tf.logical_and(valid, prob < threshold), tf.int32))

    def kth_smallest() -> Any:
        ranked = tf.sort(tf.where(valid, prob, tf.fill(tf.shape(prob), 2.0)))
        return ranked[tf.maximum(k, 0)]

    # the k-th smallest probability is below the threshold exactly when more than k probabilities are
    cut = tf.cond(below > k, lambda: tf.constant(threshold, tf.float32), kth_smallest)
    keep = tf.logical_and(valid, prob < cut)
    return tf.math.divide_no_nan(tf.reduce_sum(tf.where(keep, loss, 0.0)), tf.reduce_sum(tf.cast(keep, tf.float32)))


def weighted_mean(loss: Any, weight: Any) -> Any:
    """PyTorch ``CrossEntropyLoss(weight, reduction='mean')``: ``sum(w * CE) / sum(w)``."""
    import tensorflow as tf

    return tf.math.divide_no_nan(tf.reduce_sum(loss), tf.reduce_sum(weight))


def balanced_bce(logits: Any, target: Any, ignore_index: int) -> Any:
    """Official ``weighted_bce`` (class-balanced over the batch); ``ignore_index`` target pixels left out."""
    import tensorflow as tf

    target = tf.cast(target, tf.int32)
    positive = tf.equal(target, 1)
    negative = tf.logical_and(tf.equal(target, 0), tf.not_equal(target, ignore_index))
    n_pos = tf.reduce_sum(tf.cast(positive, tf.float32))
    n_neg = tf.reduce_sum(tf.cast(negative, tf.float32))
    total = n_pos + n_neg
    weight = tf.where(positive, tf.math.divide_no_nan(n_neg, total),
                      tf.where(negative, tf.math.divide_no_nan(n_pos, total), 0.0))
    bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(positive, tf.float32), logits=logits)
    return tf.math.divide_no_nan(tf.reduce_sum(bce * weight), total)


# -------------------------------------------------------------------------------------------- terms
def _semantic(params: PidnetParams, num_classes: int, ignore_index: int, class_weights: Sequence[float] | None,
              logits: Any, labels: Any, reduce_all: bool = False) -> Any:
    """The semantic loss of ``logits`` (already at label size): OHEM, or plain (weighted mean / mean over all)."""
    import tensorflow as tf

    loss, weight, prob, valid = pixel_losses(logits, labels, num_classes, ignore_index, class_weights)
    if reduce_all:
        return tf.reduce_mean(loss)
    if params.loss.use_ohem:
        return ohem_mean(loss, prob, valid, params.loss.ohem_threshold, params.loss.ohem_min_kept)
    return weighted_mean(loss, weight)


def loss_terms(params: PidnetParams, num_classes: int, ignore_index: int,
               class_weights: Sequence[float] | None) -> list[LossTerm]:
    """The four PIDNet losses as weighted :class:`LossTerm` (see the module docstring); zero-weight terms left out."""
    cfg = params.loss
    align = cfg.align_corners
    args = (params, num_classes, ignore_index, class_weights)

    def size_of(labels: Any) -> Any:
        import tensorflow as tf

        return tf.shape(labels)[1:3]

    def main(targets: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        labels = _labels(targets)
        return _semantic(*args, resize_to(outputs["logits"], size_of(labels), align), labels)

    def aux(targets: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        labels = _labels(targets)
        return _semantic(*args, resize_to(outputs["aux"], size_of(labels), align), labels, reduce_all=cfg.use_ohem)

    def boundary(targets: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        import tensorflow as tf

        labels = _labels(targets)
        d = resize_to(outputs["boundary"], size_of(labels), align)[..., 0]
        target = targets["boundary"]
        target = tf.squeeze(target, -1) if target.shape.rank == 4 else target
        return balanced_bce(d, target, ignore_index)

    def boundary_aware(targets: Mapping[str, Any], outputs: Mapping[str, Any]) -> Any:
        import tensorflow as tf

        labels = _labels(targets)
        d = resize_to(outputs["boundary"], size_of(labels), align)[..., 0]
        kept = tf.where(tf.sigmoid(d) > cfg.bas_threshold, labels, tf.fill(tf.shape(labels), ignore_index))
        return _semantic(*args, resize_to(outputs["logits"], size_of(labels), align), tf.stop_gradient(kept))

    terms: list[tuple[str, float, Callable[..., Any]]] = [
        ("main", cfg.main_weight, main), ("aux", cfg.aux_weight, aux), ("boundary", cfg.boundary_weight, boundary),
        ("boundary_aware", cfg.bas_weight, boundary_aware)]
    return [LossTerm(name=name, weight=float(weight), fn=fn) for name, weight, fn in terms if weight > 0]
