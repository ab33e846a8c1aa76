"""Constant ("dead") channels: fold their effect into the consumers' biases and zero the weights they feed.

A convolution output channel that is constant carries no signal, yet the consumer weights it feeds still count
in the consumer's per-tensor weight range. ImageNet MobileNetV2 has such channels: after BatchNorm folding, 5 of
the 16 ``Conv1`` channels have weights ~1e-21 (BN gamma ~ 0), and the depthwise channels they feed have weights
up to 37 where the live ones stay below 0.5, so the per-tensor scale of ``expanded_conv_depthwise`` is 80x too
coarse for every live channel.

Two kinds of constant channel are handled:

- **weight-dead**: every folded weight of the channel is zero, or below ``DEAD_WEIGHT_RATIO`` of the layer's
  largest channel (its contribution is below float32 resolution): the channel outputs ``act(bias)`` for every
  input. Folding is **exact on all inputs** where the constant reaching a consumer is 0 or the consumer sees no
  zero padding (a padded border would mix the constant with zeros); other channels are left as they are.
- **calibration-dead** (only with calibration images): a channel whose pre-activation stays below 0 on every
  calibration pixel, with the margin ``max + ABSORB_MARGIN * (max - mean) < 0`` (and at least
  ``MIN_DEAD_SAMPLES`` values per channel), and that reaches every consumer
  through a ReLU: its output is 0 on the calibration images. Exact on them, statistically exact elsewhere (the
  channel would have to exceed its calibration maximum by more than its spread to fire).

- **dead inputs** (only with calibration images): an input channel of a convolution that comes straight from a
  ReLU (through zero padding or pooling) whose pre-activation is calibration-dead by the same margin. This
  catches what the producer-side fold cannot follow: a channel that also enters a residual Add (MediaPipe's
  pose landmark model has depthwise weights up to 245 on such channels, where its live ones stay below 10).
  The input is 0 there, so zeroing the consumer's weights for it needs no bias change (zero padding included);
  exact on the calibration images, statistically exact elsewhere. The weights zeroed this way can make the
  consumer's own channel weight-dead, which the producer-side fold then handles.

For each handled channel ``i`` of a producer, every consumer gets ``bias += sum over taps of w[:, :, i, :] * c_i``
(``c_i``: the constant that reaches it, after the activations on the path), its input-channel ``i`` weights
become 0, and the producer's channel ``i`` gets weights 0 and bias 0 (its value no longer matters, and 0 keeps it
out of the activation range).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segzoo.quantization import formatting as fmt

log = logging.getLogger(__name__)

DEAD_WEIGHT_RATIO = 1e-12
"""A channel whose largest |folded weight| is below this fraction of the layer's largest channel is weight-dead."""

MIN_DEAD_SAMPLES = 4096
"""Calibration values per channel needed to call a channel calibration-dead (a pooled branch sees one per image)."""

MIN_DEAD_INPUT_SAMPLES = 1024
"""The same for a dead input (:func:`fold_dead_inputs`): 16 calibration crops of an 8x8 feature map."""

_CONSTANT_KEEPERS = frozenset({"Dropout", "SpatialDropout2D", "Identity", "UpSampling2D", "AveragePooling2D",
                               "GlobalAveragePooling2D", "MaxPooling2D", "GlobalMaxPooling2D"})
"""Ops that map a constant channel to the same constant (TF's 'same' pooling ignores the padded cells)."""


class _Unfoldable(Exception):
    """A path from the producer reaches something a constant channel cannot be folded through."""


@dataclass
class _Use:
    """One consumer convolution reached by the producer's channels: input offset, constants, zero padding seen."""

    consumer: str
    offset: int
    values: np.ndarray
    padded: bool


@dataclass
class DeadChannelReport:
    """What :func:`fold_dead_channels` did, for the quantization report."""

    weight_dead: int = 0
    calibration_dead: int = 0
    left: int = 0
    consumers_zeroed: int = 0
    layers: dict[str, int] = field(default_factory=dict)
    dead_inputs: int = 0
    """Consumer input channels zeroed because a ReLU feeds them 0 on every calibration pixel."""
    dead_input_layers: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"weight_dead": self.weight_dead, "calibration_dead": self.calibration_dead, "left": self.left,
                "consumers_zeroed": self.consumers_zeroed, "layers": dict(self.layers),
                "dead_inputs": self.dead_inputs, "dead_input_layers": dict(self.dead_input_layers)}


def _activate(node: fmt._Node, values: np.ndarray, offset: int) -> np.ndarray:
    """The activation ``node`` applied to per-channel constants (raises _Unfoldable for anything else)."""
    if node.kind == "ChannelReLU" or node.caps is not None:
        caps = node.caps if node.caps is not None else np.asarray(node.weights[0], np.float64)
        return np.minimum(np.maximum(values, 0.0), caps[offset:offset + values.size])
    try:
        kind = fmt._relu_kind(node, "clip")
    except fmt._Invalid as exc:
        raise _Unfoldable(node.name) from exc
    if kind == "linear":
        return values
    cfg = node.config
    if node.kind == "LeakyReLU":
        slope = float(cfg.get("negative_slope", cfg.get("alpha", 0.3)))
        return np.where(values >= 0, values, slope * values)
    out = np.maximum(values, 0.0)
    if kind == "capped":
        out = np.minimum(out, float(cfg["max_value"]))
    return out


def _uses(graph: fmt._Graph, consumers: dict[str, list[str]], name: str, values: np.ndarray, offset: int,
          padded: bool, found: list[_Use]) -> None:
    """Follow ``name``'s output to the consumer convolutions, carrying the per-channel constants."""
    if graph.is_output(name):
        raise _Unfoldable(name)
    counts: dict[str, int] = {}
    for cname in consumers[name]:
        occurrence = counts.get(cname, 0)
        counts[cname] = occurrence + 1
        node = graph.nodes[cname]
        if fmt._is_conv(node):
            ksize = tuple(fmt._kernel(node).shape[:2])
            own_pad = ksize != (1, 1) and node.config.get("padding") == "same"
            found.append(_Use(cname, offset, values, padded or own_pad))
        elif node.kind == "ZeroPadding2D":
            _uses(graph, consumers, cname, values, offset, True, found)
        elif node.kind in _CONSTANT_KEEPERS:
            _uses(graph, consumers, cname, values, offset, padded, found)
        elif node.kind == "Concatenate":
            try:
                extra = fmt._concat_offset(graph, node, name, occurrence)
            except fmt._Invalid as exc:
                raise _Unfoldable(cname) from exc
            _uses(graph, consumers, cname, values, offset + extra, padded, found)
        else:
            activated = _activate(node, values, offset)
            _uses(graph, consumers, cname, activated, offset, padded, found)


def _weight_dead(node: fmt._Node) -> np.ndarray:
    """Boolean mask of the producer's output channels whose folded weights are (numerically) zero."""
    view = fmt._out_view(node)
    ranges = np.abs(view).reshape(-1, view.shape[-1]).max(axis=0)
    top = float(ranges.max(initial=0.0))
    return ranges <= DEAD_WEIGHT_RATIO * top if top > 0 else np.zeros(ranges.size, bool)


def _fold_into(consumer: fmt._Node, use: _Use, channels: np.ndarray) -> None:
    """Add the constants of ``channels`` (producer indices) into the consumer's bias; zero their weights."""
    kernel = fmt._kernel(consumer).copy()
    idx = use.offset + channels
    const = use.values[channels]
    bias = fmt._bias(consumer)
    if consumer.kind == "DepthwiseConv2D":
        multiplier = kernel.shape[3]
        delta = np.zeros((kernel.shape[2], multiplier))
        delta[idx] = kernel[:, :, idx, :].sum(axis=(0, 1)) * const[:, None]
        consumer.weights[1] = bias + delta.reshape(-1)
    else:
        consumer.weights[1] = bias + np.einsum("hwio,i->o", kernel[:, :, idx, :], const)
    kernel[:, :, idx, :] = 0.0
    consumer.weights[0] = kernel


def _silence(producer: fmt._Node, channels: np.ndarray) -> None:
    """Producer output channels -> weights 0, bias 0."""
    kernel = fmt._kernel(producer)
    if producer.kind == "DepthwiseConv2D":
        flat = kernel.reshape(*kernel.shape[:2], -1).copy()
        flat[..., channels] = 0.0
        producer.weights[0] = flat.reshape(kernel.shape)
    else:
        kernel = kernel.copy()
        kernel[..., channels] = 0.0
        producer.weights[0] = kernel
    bias = fmt._bias(producer).copy()
    bias[channels] = 0.0
    producer.weights[1] = bias


def _handle_producer(graph: fmt._Graph, consumers: dict[str, list[str]], node: fmt._Node,
                     stats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]] | None,
                     report: DeadChannelReport) -> None:
    exact = _weight_dead(node)
    calib = np.zeros_like(exact)
    if stats is not None and node.name in stats and stats[node.name][3] >= MIN_DEAD_SAMPLES:
        _, high, mean, _ = stats[node.name]
        calib = (high + fmt.ABSORB_MARGIN * (high - mean) < 0) & ~exact
    if not np.any(exact | calib):
        return
    bias = fmt._bias(node)
    values = np.where(exact, bias, 0.0)
    # a calibration-dead channel is represented by a negative value: only a ReLU on the path turns it into 0
    values = np.where(calib, -1.0, values)
    found: list[_Use] = []
    try:
        _uses(graph, consumers, node.name, values, 0, False, found)
    except _Unfoldable:
        report.left += int(np.count_nonzero(exact))
        return
    if not found:
        return
    ok = exact | calib
    for use in found:
        zero = use.values == 0.0
        ok &= np.where(calib, zero, zero | (not use.padded))
    channels = np.flatnonzero(ok)
    report.left += int(np.count_nonzero(exact & ~ok))
    if channels.size == 0:
        return
    for use in found:
        _fold_into(graph.nodes[use.consumer], use, channels)
        report.consumers_zeroed += 1
    _silence(node, channels)
    report.weight_dead += int(np.count_nonzero(exact[channels]))
    report.calibration_dead += int(np.count_nonzero(calib[channels]))
    report.layers[node.name] = int(channels.size)


_ZERO_KEEPERS = frozenset({"ZeroPadding2D", "MaxPooling2D", "AveragePooling2D", "UpSampling2D", "Dropout",
                           "SpatialDropout2D", "Identity"})
"""Ops that keep a channel that is 0 everywhere at 0."""


def _zeroing_relu(node: fmt._Node) -> bool:
    """A plain ReLU (or ReLU6, or a per-channel capped ReLU): negative pre-activations become exactly 0."""
    if node.kind == "ChannelReLU":
        return True
    cfg = node.config
    if node.kind == "ReLU":
        return float(cfg.get("threshold", 0.0) or 0.0) == 0.0 and float(cfg.get("negative_slope", 0.0) or 0.0) == 0
    return node.kind == "Activation" and cfg.get("activation") in ("relu", "relu6")


def _relu_source(graph: fmt._Graph, node: fmt._Node) -> str | None:
    """The layer computing the pre-activation of the ReLU that feeds convolution ``node`` (through zero-keeping
    ops), or None."""
    name = graph.inputs_of(node)[0] if graph.inputs_of(node) else None
    while name is not None:
        source = graph.nodes[name]
        if _zeroing_relu(source):
            inputs = graph.inputs_of(source)
            return inputs[0] if len(inputs) == 1 else None
        if source.kind not in _ZERO_KEEPERS or len(graph.inputs_of(source)) != 1:
            return None
        name = graph.inputs_of(source)[0]
    return None


def _zero_inputs(consumer: fmt._Node, channels: np.ndarray) -> None:
    """Input channels ``channels`` of the consumer get weights 0 (their input is 0: the bias stays)."""
    kernel = fmt._kernel(consumer).copy()
    kernel[:, :, channels, :] = 0.0
    consumer.weights[0] = kernel


def fold_dead_inputs(graph: fmt._Graph, calls: dict[str, Any], calibration: np.ndarray,
                     report: DeadChannelReport) -> None:
    """Zero the weights that read calibration-dead ReLU channels (module docstring, "dead inputs")."""
    readers = {}
    for node in graph.live():
        if fmt._is_conv(node):
            source = _relu_source(graph, node)
            if source is not None and graph.nodes[source].channels == fmt._kernel(node).shape[2]:
                readers[node.name] = source
    if not readers:
        return
    stats = fmt.channel_statistics(graph, calls, sorted(set(readers.values())), calibration)
    for name, source in readers.items():
        _, high, mean, count = stats[source]
        if count < MIN_DEAD_INPUT_SAMPLES:
            continue
        node = graph.nodes[name]
        live = np.abs(fmt._kernel(node)).transpose(2, 0, 1, 3).reshape(fmt._kernel(node).shape[2], -1).max(axis=1)
        dead = np.flatnonzero((high + fmt.ABSORB_MARGIN * (high - mean) < 0) & (live > 0))
        if dead.size:
            _zero_inputs(node, dead)
            report.dead_inputs += int(dead.size)
            report.dead_input_layers[name] = int(dead.size)


def fold_dead_channels(graph: fmt._Graph, calls: dict[str, Any], calibration: np.ndarray | None, *,
                       dead_inputs: bool = False) -> DeadChannelReport:
    """Fold every constant channel of every convolution (module docstring); the graph is changed in place.

    With ``dead_inputs`` and ``calibration`` images, the dead inputs (:func:`fold_dead_inputs`) are zeroed first."""
    report = DeadChannelReport()
    if calibration is not None and dead_inputs:
        fold_dead_inputs(graph, calls, calibration, report)
    producers = [n for n in graph.live() if fmt._is_conv(n) and fmt._linear_activation(n)]
    stats = None
    if calibration is not None and producers:
        stats = fmt.channel_statistics(graph, calls, [n.name for n in producers], calibration)
    consumers = graph.consumers()
    for node in producers:
        _handle_producer(graph, consumers, node, stats, report)
    log.info("dead channels: %d weight-dead, %d calibration-dead folded into %d consumers, %d left",
             report.weight_dead, report.calibration_dead, report.consumers_zeroed, report.left)
    return report
