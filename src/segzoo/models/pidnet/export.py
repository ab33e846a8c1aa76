"""The inference graph of a trained PIDNet: one ``logits`` output, training heads dropped, BatchNorm folded.

:func:`export` rebuilds the network with :class:`~segzoo.models.pidnet.model.Builder` in its folded form and fills
it from the training model (the training graph keeps Keras BatchNormalization layers because they must update their
statistics while training; folding belongs to the inference graph):

- a conv followed by BatchNorm: ``kernel * g``, bias ``beta + (bias - mean) * g`` with ``g = gamma / sqrt(var + eps)``;
- a standalone BatchNorm (``BN -> ReLU -> conv``): a 1x1 DepthwiseConv2D with kernel ``g`` and bias ``beta - mean*g``;
- every other weighted layer (convs without BatchNorm, Pag's fixed channel-sum kernel): copied.

With ``params.upsample`` the logits are upsampled x8 (bilinear, half-pixel) in the model, otherwise they stay at 1/8
and the host restores them (segzoo's ``upsample: false`` path).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from segzoo.errors import ModelError
from segzoo.models.pidnet.model import OUTPUT_STRIDE, Builder, build_graph
from segzoo.models.pidnet.params import PidnetParams

if TYPE_CHECKING:  # pragma: no cover
    import keras

log = logging.getLogger(__name__)


def bn_scale_shift(bn: "keras.layers.BatchNormalization") -> tuple[np.ndarray, np.ndarray]:
    """``(g, h)`` such that ``bn(x) == g * x + h`` at inference (float64)."""
    gamma, beta, mean, var = (np.asarray(w, np.float64) for w in bn.get_weights())
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale


def fold_conv_bn(kernel: np.ndarray, bias: np.ndarray | None, bn: "keras.layers.BatchNormalization"
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of the conv ``bn(conv(x))`` (HWIO kernel)."""
    scale, shift = bn_scale_shift(bn)
    bias = np.zeros(kernel.shape[-1]) if bias is None else np.asarray(bias, np.float64)
    return (kernel * scale).astype(np.float32), (shift + bias * scale).astype(np.float32)


def depthwise_from_bn(bn: "keras.layers.BatchNormalization") -> tuple[np.ndarray, np.ndarray]:
    """Kernel ``[1, 1, C, 1]`` and bias of the 1x1 depthwise conv equal to ``bn`` at inference."""
    scale, shift = bn_scale_shift(bn)
    return scale.reshape(1, 1, -1, 1).astype(np.float32), shift.astype(np.float32)


def _source_layer(model: "keras.Model", name: str) -> "keras.layers.Layer":
    try:
        return model.get_layer(name)
    except ValueError as exc:
        raise ModelError(f"Cannot export PIDNet: the trained model '{model.name}' has no layer '{name}' (is it a "
                         f"PIDNet training model of the same variant?).") from exc


def _fill(inference: "keras.Model", trained: "keras.Model", builder: Builder) -> None:
    """Set every weighted layer of ``inference`` from ``trained`` (folding BatchNorm as ``builder`` recorded)."""
    standalone = set(builder.standalone)
    for layer in inference.layers:
        if not layer.weights:
            continue
        if layer.name in builder.folded:
            conv = _source_layer(trained, layer.name)
            weights = conv.get_weights()
            bias = weights[1] if len(weights) > 1 else None
            layer.set_weights(list(fold_conv_bn(weights[0], bias, _source_layer(trained, builder.folded[layer.name]))))
        elif layer.name in standalone:
            layer.set_weights(list(depthwise_from_bn(_source_layer(trained, layer.name))))
        else:
            source = _source_layer(trained, layer.name)
            shapes = [tuple(w.shape) for w in source.weights]
            if shapes != [tuple(w.shape) for w in layer.weights]:
                raise ModelError(f"Cannot export PIDNet: layer '{layer.name}' has weights {shapes} in the trained "
                                 f"model but {[tuple(w.shape) for w in layer.weights]} in the inference graph.")
            layer.set_weights(source.get_weights())


def _num_classes(trained: "keras.Model") -> int:
    return int(_source_layer(trained, "final_layer.conv2").get_weights()[0].shape[-1])


def export(model: "keras.Model", params: PidnetParams) -> "keras.Model":
    """The inference model of the trained ``model``: one ``logits`` output (x8 upsampled when ``params.upsample``)."""
    import keras

    trained_shape = list(model.inputs[0].shape[1:])
    if trained_shape != list(params.input_shape):
        log.info("exporting %s at input %s (trained at %s)", model.name, params.input_shape, trained_shape)
    builder = Builder(fold=True)
    graph = build_graph(params, _num_classes(model), fold=True, heads=False, builder=builder)
    _fill(graph, model, builder)
    logits = graph.output
    if params.upsample:
        logits = keras.layers.UpSampling2D(size=OUTPUT_STRIDE, interpolation="bilinear",
                                           name="upsampled_logits")(logits)
    exported = keras.Model(graph.input, logits, name=graph.name)
    log.info("exported %s: %d layers, logits %s", exported.name, len(exported.layers), tuple(logits.shape[1:]))
    return exported
