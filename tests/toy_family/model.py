"""The toy family's network, export, losses and edge target."""

import keras
import tensorflow as tf

from segzoo.models.base import LossTerm
from segzoo.training.losses import IgnoreAwareCrossEntropy


def build(params, num_classes):
    inputs = keras.Input(params.input_shape, name="input")
    x = keras.layers.Conv2D(params.width, 3, padding="same", activation="relu", name="body")(inputs)
    logits = keras.layers.Conv2D(num_classes, 1, name="logits")(x)
    aux = keras.layers.Conv2D(num_classes, 1, name="aux")(inputs)
    edge = keras.layers.Conv2D(1, 3, padding="same", name="edge")(x)
    return keras.Model(inputs, {"logits": logits, "aux": aux, "edge": edge}, name="toy")


def export(model, params):
    return keras.Model(model.input, model.output["logits"], name="toy_exported")


def loss_terms(params, num_classes, ignore_index, class_weights):
    ce = IgnoreAwareCrossEntropy(num_classes, ignore_index)

    def edge_bce(targets, outputs):
        valid = tf.cast(tf.not_equal(targets["labels"], ignore_index), tf.float32)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(targets["edge"], outputs["edge"][..., 0])
        return tf.math.divide_no_nan(tf.reduce_sum(bce * valid), tf.reduce_sum(valid))

    return [LossTerm("main", 1.0, lambda t, o: ce.call(t["labels"], o["logits"])),
            LossTerm("aux", params.aux_weight, lambda t, o: ce.call(t["labels"], o["aux"])),
            LossTerm("edge", params.edge_weight, edge_bce)]


def edge_target(params, ignore_index):
    def fn(labels):
        right = tf.concat([labels[:, 1:], labels[:, -1:]], axis=1)
        return tf.cast(tf.not_equal(labels, right), tf.float32)

    return fn
