"""``training.precision``: Keras mixed precision for training, float32 for everything exported.

A network is trained in mixed precision as a copy whose layers compute in float16 or bfloat16 (variables stay
float32), except its final layers: on every output, the layers from the output back to the last layer with weights
(the logits convolution and any resize after it) compute in float32, and so do the losses. Bilinear resizes compute
in float32 everywhere (TensorFlow's bilinear resize computes in float32 whatever its input; with XLA, a resize
between bfloat16 layers gives a gradient of mixed precisions that XLA refuses to compile). ``mixed_float16`` wraps
the optimizer in Keras's ``LossScaleOptimizer`` (dynamic loss scaling; bfloat16 has float32's range and needs
none). What is exported for evaluation, quantization and deployment is rebuilt in float32 with the same weights.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import keras

from segzoo.errors import ModelError

logger = logging.getLogger(__name__)

FLOAT32 = "float32"
LOSS_SCALED = frozenset({"mixed_float16"})


def _weighted(layer: keras.layers.Layer) -> bool:
    return bool(layer.weights)


def output_layers(model: keras.Model) -> set[str]:
    """Names of the layers that stay float32: on each output, back from it to the last layer with weights."""
    names: set[str] = set()
    pending = list(keras.tree.flatten(model.outputs))
    seen: set[int] = set()
    while pending:
        tensor = pending.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        layer, node_index = history[0], history[1]
        if isinstance(layer, keras.layers.InputLayer):
            continue
        names.add(layer.name)
        if not _weighted(layer):
            pending.extend(keras.tree.flatten(layer._inbound_nodes[node_index].input_tensors))
    return names


def _resizes(model: keras.Model) -> set[str]:
    """Names of the layers that resize bilinearly (kept in float32)."""
    kinds = (keras.layers.UpSampling2D, keras.layers.Resizing)
    return {layer.name for layer in _leaf_layers(model) if isinstance(layer, kinds)
            and getattr(layer, "interpolation", "") == "bilinear"}


def policy_names(model: keras.Model) -> dict[str, str]:
    """Each layer's dtype policy name (nested models flattened)."""
    return {layer.name: layer.dtype_policy.name for layer in _leaf_layers(model)}


def _leaf_layers(model: keras.Model) -> Iterable[keras.layers.Layer]:
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            yield layer


def with_precision(model: keras.Model, precision: str) -> keras.Model:
    """``model`` computing in ``precision`` (its output layers in float32), with the same weights.

    The model itself when it already does; otherwise a clone (created in the current ``tf.distribute`` scope).
    """
    keep = output_layers(model) | _resizes(model) if precision != FLOAT32 else set()
    wanted = {name: FLOAT32 if name in keep else precision for name in policy_names(model)}
    if policy_names(model) == wanted:
        return model

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = FLOAT32 if layer.name in keep else precision
        return layer.__class__.from_config(config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
        copy.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for layers that cannot be rebuilt
        raise ModelError(f"training.precision: cannot rebuild {model.name} in {precision} ({exc}); "
                         "train it in float32") from exc
    _check_float32_weights(copy, precision)
    return copy


def _check_float32_weights(model: keras.Model, precision: str) -> None:
    wrong = [w.path for w in model.weights if w.dtype != FLOAT32]
    if wrong:
        raise ModelError(f"training.precision: the {precision} copy of {model.name} has non-float32 weights "
                         f"({', '.join(wrong[:3])})")


def float32_export(model: keras.Model) -> keras.Model:
    """The float32 model to save for evaluation and quantization: weights and computation in float32."""
    exported = with_precision(model, FLOAT32)
    _check_float32_weights(exported, FLOAT32)
    return exported


def wrap_optimizer(optimizer: keras.optimizers.Optimizer, precision: str) -> keras.optimizers.Optimizer:
    """The optimizer with dynamic loss scaling for float16 (once)."""
    if precision in LOSS_SCALED and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
