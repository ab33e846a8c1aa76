"""The model the training loop trains: a family's network (one output, or a dict of outputs with training-only
heads) with the family's weighted loss terms, and mIoU on the main output (``logits``).

The network itself is what checkpoints hold (it keeps its training heads); the trainer only adds the losses, the
metrics and the optimizer, so the same network can be exported, evaluated and quantized without it. Its
``train_step`` and ``test_step`` run once per replica under ``tf.distribute`` (``segzoo.training.loop``): the loss of
a replica is its share of the global mean (divided by the replicas, whose gradients are summed); the metrics are
sync-on-read sums, read across replicas and workers at the end of an epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from segzoo.errors import ModelError
from segzoo.models.base import LossTerm
from segzoo.training.losses import IgnoreAwareCrossEntropy
from segzoo.training.metrics import StreamingMeanIoU

MAIN_OUTPUT = "logits"


def default_loss_terms(num_classes: int, ignore_index: int, class_weights: Sequence[float] | None) -> list[LossTerm]:
    """Ignore-aware (optionally class-weighted) cross-entropy on the logits: the loss of single-output families."""
    ce = IgnoreAwareCrossEntropy(num_classes, ignore_index, None if class_weights is None else list(class_weights))
    return [LossTerm("ce", 1.0, lambda targets, outputs: ce.call(targets["labels"], outputs[MAIN_OUTPUT]))]


def as_outputs(value: Any) -> dict[str, Any]:
    """A network's output as a dict: single-output networks give their logits."""
    return dict(value) if isinstance(value, Mapping) else {MAIN_OUTPUT: value}


def as_targets(value: Any) -> dict[str, Any]:
    """A batch's targets as a dict: plain label batches are ``{"labels": ...}``."""
    return dict(value) if isinstance(value, Mapping) else {"labels": value}


class Trainer(keras.Model):
    """``network`` trained with ``terms``: loss = sum of weight x term; mIoU on ``logits``; each term logged as
    ``loss_<name>`` when there are several."""

    def __init__(self, network: keras.Model, terms: Sequence[LossTerm], num_classes: int, ignore_index: int,
                 **kwargs: Any) -> None:
        super().__init__(name=kwargs.pop("name", "trainer"), **kwargs)
        self.network = network
        self.terms = list(terms)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.term_trackers = [keras.metrics.Mean(name=f"loss_{t.name}") for t in self.terms] \
            if len(self.terms) > 1 else []
        self.miou = StreamingMeanIoU(num_classes, ignore_index)

    def call(self, inputs: Any, training: bool = False) -> dict[str, Any]:
        return as_outputs(self.network(inputs, training=training))

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> tf.Tensor:
        targets, outputs = as_targets(y), as_outputs(y_pred)
        total = tf.constant(0.0, tf.float32)
        for index, term in enumerate(self.terms):
            try:
                value = tf.cast(term.fn(targets, outputs), tf.float32)
            except KeyError as exc:
                raise ModelError(f"loss term '{term.name}' needs the output or target {exc} which this network "
                                 f"does not have (outputs: {', '.join(outputs)}; targets: {', '.join(targets)}). "
                                 "Fine-tune from a training checkpoint (saved_models/best_checkpoint.keras), not "
                                 "from an exported model.") from None
            if self.term_trackers:
                self.term_trackers[index].update_state(value)
            total += term.weight * value
        if self.losses:  # regularization added by layers
            total += tf.add_n([tf.cast(loss, tf.float32) for loss in self.losses])
        return total / tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, Any]:
        self.miou.update_state(as_targets(y)["labels"], as_outputs(y_pred)[MAIN_OUTPUT])
        return {}

    def train_step(self, data: Any) -> None:
        """One optimizer step on this replica's batch (loss scaled for float16 when the optimizer does)."""
        x, y = data[0], data[1]
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, training=True)
            scaled = self.optimizer.scale_loss(loss)
        self.loss_tracker.update_state(_unscaled(loss), sample_weight=tf.shape(x)[0])
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        self.compute_metrics(x, y, y_pred)

    def test_step(self, data: Any) -> None:
        """Losses and mIoU on this replica's batch; a third element weights the samples (0: padding)."""
        x, y = data[0], data[1]
        y_pred = self(x, training=False)
        loss = self.compute_loss(x, y, y_pred, training=False)
        count = tf.reduce_sum(tf.cast(data[2], tf.float32)) if len(data) > 2 else tf.shape(x)[0]
        self.loss_tracker.update_state(_unscaled(loss), sample_weight=count)
        self.compute_metrics(x, y, y_pred)

    def metric_results(self) -> dict[str, float]:
        """Every metric's value over all replicas and workers (call in cross-replica context, on every worker)."""
        return {metric.name: float(keras.ops.convert_to_numpy(metric.result())) for metric in self.metrics}


def _unscaled(loss: tf.Tensor) -> tf.Tensor:
    """A replica's loss share back to its own mean (``compute_loss`` divides by the replicas)."""
    return loss * tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, loss.dtype)
