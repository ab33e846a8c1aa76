"""Cross-entropy on logits that ignores ``ignore_index`` pixels, with optional class weights."""

from __future__ import annotations

from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf


def match_logits_to_labels(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Bilinearly resize logits to the label resolution when a model ends below full resolution."""
    if logits.shape[1:3] == labels.shape[1:3] and logits.shape[1] is not None:
        return logits
    return tf.image.resize(logits, tf.shape(labels)[1:3], method="bilinear")


class IgnoreAwareCrossEntropy(keras.losses.Loss):
    """Mean softmax cross-entropy over the pixels whose label is a class (not ``ignore_index``).

    With ``class_weights`` (one per class, any number of classes) it is the weighted mean.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_weights: list[float] | None = None,
                 name: str = "ignore_aware_cross_entropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        if self.class_weights is not None and len(self.class_weights) != self.num_classes:
            raise ValueError(f"{len(self.class_weights)} class weights for {self.num_classes} classes")

    def call(self, y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        labels = tf.cast(y_true, tf.int32)
        if labels.shape.rank == 4:
            labels = tf.squeeze(labels, -1)
        logits = tf.cast(match_logits_to_labels(y_pred, labels), tf.float32)
        valid = tf.logical_and(tf.not_equal(labels, self.ignore_index), labels < self.num_classes)
        safe = tf.where(valid, labels, 0)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
        weights = tf.cast(valid, tf.float32)
        if self.class_weights is not None:
            weights *= tf.gather(tf.constant(self.class_weights, tf.float32), safe)
        return tf.math.divide_no_nan(tf.reduce_sum(ce * weights), tf.reduce_sum(weights))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index,
                "class_weights": self.class_weights}


def median_frequency_weights(masks: Iterable[np.ndarray], num_classes: int) -> list[float]:
    """SegNet's median-frequency balancing: weight_c = median(freq) / freq_c.

    freq_c is the pixel count of class c divided by the pixel count of the images where c appears
    (ignored pixels excluded). A class never seen gets weight 0 (it cannot be learned anyway).
    """
    pixels = np.zeros(num_classes, np.float64)
    image_pixels = np.zeros(num_classes, np.float64)
    for mask in masks:
        counts = np.bincount(mask[mask < num_classes].ravel(), minlength=num_classes)[:num_classes]
        pixels += counts
        image_pixels[counts > 0] += counts.sum()
    seen = pixels > 0
    if not seen.any():
        raise ValueError("no labelled pixel in the training masks")
    freq = np.zeros(num_classes)
    freq[seen] = pixels[seen] / image_pixels[seen]
    weights = np.zeros(num_classes)
    weights[seen] = np.median(freq[seen]) / freq[seen]
    return weights.round(6).tolist()
