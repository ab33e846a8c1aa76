"""Quantization-aware fine-tuning with per-tensor fake quantization (``quantization.quantization_type: qat``).

A Keras clone of the (formatted: BN folded, constant channels folded, equalized) float model in which

- every Conv2D / DepthwiseConv2D / Dense uses its kernel **fake-quantized per tensor**, symmetric, as the TFLite
  quantizer will (``scale = max|w| / 127``, levels -127..127), with straight-through gradients
  (``tf.quantization.fake_quant_with_min_max_vars``);
- every activation tensor that TFLite quantizes (the output of a layer, after its fused ReLU/ReLU6; not the
  outputs of pass-through ops that share their input's scale) goes through a :class:`ActivationFakeQuant`:
  asymmetric 8-bit with a range tracked as an exponential moving average of the batch min/max while training;

is fine-tuned for a few epochs on the training set (``quantization.qat.epochs``, ``learning_rate``). The
conversion then keeps what was learned: the fine-tuned float weights go back into the plain model (stock layers),
which the converter calibrates as usual; the calibrated activation ranges are then replaced by the learned EMA
ranges (the range rewrite of :mod:`segzoo.quantization.ranges`, shared-scale groups united), and the quantizer
rounds the weights exactly as the fake quantization did (nearest level, same per-tensor scale). No
tensorflow-model-optimization (it does not support Keras 3).
"""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

from segzoo.quantization.converter import tensor_layers
from segzoo.quantization.flatbuffer import FlatModel

log = logging.getLogger(__name__)

EMA_MOMENTUM = 0.99
FUSED_ACTIVATIONS = frozenset({"ReLU", "Activation", "ChannelReLU"})
SHARED_SCALE = frozenset({"ZeroPadding2D", "Dropout", "SpatialDropout2D", "Identity", "UpSampling2D",
                          "MaxPooling2D", "AveragePooling2D", "Concatenate", "Reshape", "Resizing", "InputLayer"})
"""Layers whose output TFLite quantizes with their input's scale (no quantization point of their own)."""


def _fake_quant_kernel(kernel: Any) -> Any:
    import tensorflow as tf

    top = tf.stop_gradient(tf.maximum(tf.reduce_max(tf.abs(kernel)), 1e-8))
    return tf.quantization.fake_quant_with_min_max_vars(kernel, -top, top, num_bits=8, narrow_range=True)


@keras.saving.register_keras_serializable(package="segzoo")
class ActivationFakeQuant(keras.layers.Layer):
    """Asymmetric 8-bit fake quantization with an EMA-tracked range (updated only while training)."""

    def __init__(self, source: str = "", momentum: float = EMA_MOMENTUM, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source, self.momentum = source, float(momentum)

    def build(self, input_shape: tuple) -> None:
        self.range_min = self.add_weight(name="range_min", shape=(), initializer="zeros", trainable=False)
        self.range_max = self.add_weight(name="range_max", shape=(), initializer="zeros", trainable=False)

    def set_range(self, low: float, high: float) -> None:
        self.range_min.assign(min(float(low), 0.0))
        self.range_max.assign(max(float(high), 0.0))

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        import tensorflow as tf

        if training:
            low = tf.minimum(tf.reduce_min(inputs), 0.0)
            high = tf.maximum(tf.reduce_max(inputs), 0.0)
            self.range_min.assign(self.momentum * self.range_min + (1.0 - self.momentum) * low)
            self.range_max.assign(self.momentum * self.range_max + (1.0 - self.momentum) * high)
        high = tf.maximum(self.range_max, self.range_min + 1e-6)
        return tf.quantization.fake_quant_with_min_max_vars(inputs, self.range_min, high, num_bits=8)

    def get_config(self) -> dict:
        return {**super().get_config(), "source": self.source, "momentum": self.momentum}


class _FakeQuantConv(keras.layers.Conv2D):
    def call(self, inputs: Any) -> Any:
        out = keras.ops.conv(inputs, _fake_quant_kernel(self.kernel), strides=self.strides, padding=self.padding,
                             dilation_rate=self.dilation_rate, data_format=self.data_format)
        out = out + self.bias if self.use_bias else out
        return self.activation(out) if self.activation is not None else out


class _FakeQuantDepthwise(keras.layers.DepthwiseConv2D):
    def call(self, inputs: Any) -> Any:
        out = keras.ops.depthwise_conv(inputs, _fake_quant_kernel(self.kernel), strides=self.strides,
                                       padding=self.padding, dilation_rate=self.dilation_rate,
                                       data_format=self.data_format)
        out = out + self.bias if self.use_bias else out
        return self.activation(out) if self.activation is not None else out


class _FakeQuantDense(keras.layers.Dense):
    def call(self, inputs: Any) -> Any:
        out = keras.ops.matmul(inputs, _fake_quant_kernel(self.kernel))
        out = out + self.bias if self.use_bias else out
        return self.activation(out) if self.activation is not None else out


_SWAPS: dict[str, type] = {"Conv2D": _FakeQuantConv, "DepthwiseConv2D": _FakeQuantDepthwise,
                           "Dense": _FakeQuantDense}


def _quantization_points(model: keras.Model) -> set[str]:
    """Layers whose output is a TFLite activation tensor of its own (module docstring)."""
    from segzoo.quantization.formatting import _graph_calls, _producer

    consumers: dict[str, list[Any]] = {}
    layers: dict[str, Any] = {}
    for call in _graph_calls(model):
        layers[call.operation.name] = call.operation
        for tensor in call.arguments.keras_tensors:
            consumers.setdefault(_producer(tensor), []).append(call.operation)
    points = set()
    for name, layer in layers.items():
        kind = type(layer).__name__
        if kind in SHARED_SCALE:
            continue
        after = consumers.get(name, [])
        if len(after) == 1 and type(after[0]).__name__ in FUSED_ACTIVATIONS and kind in _SWAPS:
            continue  # the activation fuses into this layer: the quantization point is after it
        points.add(name)
    return points


def fake_quant_model(model: keras.Model) -> keras.Model:
    """The QAT clone of a functional ``model`` (same weights, same layer names; fake-quant layers named
    ``<layer>_fq``)."""
    points = _quantization_points(model)

    def clone(layer: Any) -> Any:
        kind = type(layer).__name__
        if kind in _SWAPS and (kind != "Conv2D" or int(layer.get_config().get("groups", 1)) == 1):
            new = _SWAPS[kind].from_config(layer.get_config())
            return new
        return layer.__class__.from_config(layer.get_config())

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        out = layer(*args, **kwargs)
        if layer.name in points:
            out = ActivationFakeQuant(source=layer.name, name=f"{layer.name}_fq")(out)
        return out

    qat = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            qat.get_layer(layer.name).set_weights(weights)
    return qat


def initialise_ranges(qat: keras.Model, model: keras.Model, images: np.ndarray, batch_size: int = 8) -> None:
    """Start every activation range at the min/max of its tensor over ``images`` in the float ``model`` (the
    clone's own upstream fake quantization has no range yet)."""
    fq = [layer for layer in qat.layers if isinstance(layer, ActivationFakeQuant)]
    probe = keras.Model(model.inputs, [model.get_layer(layer.source).output for layer in fq])
    lows = np.full(len(fq), np.inf)
    highs = np.full(len(fq), -np.inf)
    for start in range(0, len(images), batch_size):
        outs = probe(np.asarray(images[start:start + batch_size], np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        lows = np.minimum(lows, [float(np.min(o)) for o in outs])
        highs = np.maximum(highs, [float(np.max(o)) for o in outs])
    for layer, low, high in zip(fq, lows, highs):
        layer.set_range(low, high)


def learned_ranges(qat: keras.Model) -> dict[str, tuple[float, float]]:
    """Keras layer name -> the EMA range of its output."""
    return {layer.source: (float(layer.range_min.numpy()), float(layer.range_max.numpy()))
            for layer in qat.layers if isinstance(layer, ActivationFakeQuant)}


def plain_weights(qat: keras.Model, model: keras.Model) -> None:
    """Copy the fine-tuned float weights of the QAT clone back into ``model`` (stock layers), in place."""
    for layer in model.layers:
        if layer.get_weights():
            layer.set_weights(qat.get_layer(layer.name).get_weights())


def apply_ranges(calibrated: bytes, ranges: dict[str, tuple[float, float]]) -> tuple[bytes, dict]:
    """Write learned ranges into the calibrated model: each op output whose last fused Keras layer has one.

    Shared-scale groups (:func:`ranges.tied_groups`) get the union of their members' ranges. Report:
    ``tensors`` (ranges written), ``unmatched`` (learned ranges with no tensor).
    """
    from segzoo.quantization.ranges import tied_groups

    flat = FlatModel(calibrated)
    written, used = 0, set()
    for op in flat.ops:
        for tensor in op.outputs:
            layers = tensor_layers(flat.tensor_name(tensor))
            source = next((name for name in layers if name in ranges), None)
            if source is None or flat.min_max(tensor) is None:
                continue
            flat.set_min_max(tensor, *ranges[source])
            used.add(source)
            written += 1
    for group in tied_groups(flat):
        spans = [flat.min_max(t) for t in group if flat.min_max(t) is not None]
        if len(group) > 1 and len(spans) == len(group) and tensor_groups_written(flat, group, ranges):
            low, high = min(s[0] for s in spans), max(s[1] for s in spans)
            for t in group:
                flat.set_min_max(t, low, high)
    report = {"tensors": written, "unmatched": sorted(set(ranges) - used)}
    log.info("QAT ranges: %d tensors from learned ranges, %d learned ranges unmatched", written,
             len(report["unmatched"]))
    return flat.to_bytes(), report


def tensor_groups_written(flat: FlatModel, group: list[int], ranges: dict[str, tuple[float, float]]) -> bool:
    """Whether any member of a shared-scale group got a learned range."""
    return any(any(name in ranges for name in tensor_layers(flat.tensor_name(t))) for t in group)


def fine_tune(qat: keras.Model, dataset: Any, *, epochs: int, learning_rate: float, loss: Any,
              steps_per_epoch: int | None = None) -> list[float]:
    """Fine-tune the QAT clone with Adam; the loss per epoch."""
    qat.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, jit_compile=False)  # XLA: minutes
    history = qat.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=2)
    return [float(v) for v in history.history.get("loss", [])]
