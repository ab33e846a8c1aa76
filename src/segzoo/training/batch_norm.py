"""How BatchNormalization layers compute during training: over the global batch (synchronized across replicas), or
with TensorFlow's fused kernel.

Keras 3's BatchNormalization computes its training statistics and normalization with separate element-wise ops
(``tf.nn.moments`` then ``tf.nn.batch_normalization``, and their gradients): on a CPU these ops take more time than
the convolutions of a MobileNet. TensorFlow's ``FusedBatchNormV3`` (oneDNN on CPU, cuDNN on GPU) computes the same
function in one op with one gradient op. :func:`use_fused_kernel` makes each eligible layer of a network use it in
training; the layers stay Keras BatchNormalization layers (saved models, configs, inference and quantization are
unchanged), and the result is Keras's own up to float rounding (tested): the same batch statistics, the same biased
variance in the moving average, the same epsilon.
"""

from __future__ import annotations

import types
from typing import Any

import tensorflow as tf


def _batch_norm_layers(model: Any) -> list[Any]:
    import keras

    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, keras.layers.BatchNormalization)]


def synchronize_batch_norm(model: Any) -> int:
    """Make every BatchNormalization layer of ``model`` compute its training statistics over the global batch (all
    replicas and workers) rather than over its replica's share; the number of such layers."""
    layers = _batch_norm_layers(model)
    for layer in layers:
        layer.synchronized = True
    return len(layers)


def _eligible(layer: Any) -> bool:
    """Channels-last, per-replica statistics, no renormalization: what the fused kernel computes."""
    axis = layer.axis if isinstance(layer.axis, int) else (layer.axis[0] if len(layer.axis) == 1 else None)
    return axis in (-1, 3) and not layer.synchronized and not layer.renorm


def _fused_call(layer: Any, inputs: tf.Tensor, training: bool | None = None, mask: tf.Tensor | None = None) -> Any:
    """Keras BatchNormalization's ``call``, with the training branch on 4-D inputs in one fused op."""
    if not (training and layer.trainable) or mask is not None or inputs.shape.rank != 4:
        return type(layer).call(layer, inputs, training=training, mask=mask)
    x = tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    gamma = tf.cast(layer.gamma, tf.float32) if layer.scale else tf.ones([channels], tf.float32)
    beta = tf.cast(layer.beta, tf.float32) if layer.center else tf.zeros([channels], tf.float32)
    empty = tf.constant([], tf.float32)
    y, mean, unbiased, *_ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=float(layer.epsilon),
        exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
    variance = unbiased * (count - 1.0) / tf.maximum(count, 1.0)  # the op returns n/(n-1) times Keras's variance
    momentum = layer.momentum
    layer.moving_mean.assign(tf.cast(layer.moving_mean, tf.float32) * momentum + mean * (1.0 - momentum))
    layer.moving_variance.assign(tf.cast(layer.moving_variance, tf.float32) * momentum + variance * (1.0 - momentum))
    return tf.cast(y, layer.compute_dtype)


def use_fused_kernel(model: Any) -> int:
    """Make the eligible BatchNormalization layers of ``model`` train with TensorFlow's fused kernel (the instance's
    ``call`` only: nothing saved changes); the number of layers."""
    layers = [layer for layer in _batch_norm_layers(model) if _eligible(layer)]
    for layer in layers:
        object.__setattr__(layer, "call", types.MethodType(_fused_call, layer))
    return len(layers)
