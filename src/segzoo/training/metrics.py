"""Streaming mean IoU for Keras: a dataset-level confusion matrix, ignore-aware."""

from __future__ import annotations

import keras
import tensorflow as tf

from segzoo.training.losses import match_logits_to_labels


class StreamingMeanIoU(keras.metrics.Metric):
    """mIoU over classes whose union is not empty, from a confusion matrix accumulated over batches."""

    def __init__(self, num_classes: int, ignore_index: int = 255, name: str = "miou", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.confusion = self.add_weight(name="confusion", shape=(self.num_classes, self.num_classes),
                                         initializer="zeros", dtype="float64")

    def update_state(self, y_true: tf.Tensor, y_pred: tf.Tensor, sample_weight: tf.Tensor | None = None) -> None:
        labels = tf.cast(y_true, tf.int32)
        if labels.shape.rank == 4:
            labels = tf.squeeze(labels, -1)
        pred = tf.argmax(match_logits_to_labels(y_pred, labels), axis=-1, output_type=tf.int32)
        valid = tf.logical_and(tf.not_equal(labels, self.ignore_index), labels < self.num_classes)
        # A segment sum rather than boolean_mask + bincount: static shapes, so it compiles with XLA too.
        index = tf.reshape(tf.where(valid, labels * self.num_classes + pred, 0), [-1])
        counts = tf.math.unsorted_segment_sum(tf.reshape(tf.cast(valid, tf.int32), [-1]), index,
                                              self.num_classes ** 2)
        self.confusion.assign_add(tf.reshape(tf.cast(counts, tf.float64), (self.num_classes, self.num_classes)))

    def result(self) -> tf.Tensor:
        cm = self.confusion
        tp = tf.linalg.diag_part(cm)
        union = tf.reduce_sum(cm, 0) + tf.reduce_sum(cm, 1) - tp
        present = union > 0
        iou = tf.math.divide_no_nan(tp, union)
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(tf.where(present, iou, 0.0)),
                                             tf.reduce_sum(tf.cast(present, tf.float64))), tf.float32)

    def reset_state(self) -> None:
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_index": self.ignore_index}
