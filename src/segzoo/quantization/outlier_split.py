"""Outlier channel splitting (``quantization.split_outliers``): exact channel duplication that narrows a weight
tensor's per-tensor range.

Per-tensor int8 gives a whole kernel one step, ``max|w| / 127``. When one channel holds weights several times
larger than every other channel (cross-layer equalization cannot always move them: ReLU6 caps, residual streams,
channels whose other side is an outlier too), the other channels are left with a few levels or none. Outlier
channel splitting (Zhao et al. 2019, "Improving Neural Network Quantization without Retraining using Outlier
Channel Splitting") replaces that channel by ``k`` copies carrying ``1/k`` of it, so the kernel's range shrinks
while the function stays exactly the same. Here the split is made exact through whole subgraphs:

* a **tensor channel** ``c`` is split into ``k`` channels (inserted right after ``c``), either *divided* (each
  copy holds ``x_c / k``) or *duplicated* (each copy holds ``x_c``);
* the split travels through every channel-wise, positively homogeneous op it meets, in both directions: ReLU
  (a ReLU6 cap becomes ``cap / k`` on divided copies: a :class:`~segzoo.quantization.formatting.ChannelReLU`),
  depthwise convolutions (their channel copied, bias ``/ k`` on divided copies), Adds (every operand splits the
  same way), zero padding, pooling, bilinear upsampling, concatenation (at the channel's offset);
* it stops at full convolutions: a convolution writing the tensor duplicates its output channel (weights and bias
  ``/ k`` for divided copies), one reading it duplicates its input channel (for duplicated copies: ``/ k`` on
  each copy for the layer being narrowed, the whole weight on the first copy and 0 on the others for any other
  reader, so that no rounding error is repeated ``k`` times). A model output, a fused nonlinearity or any other
  layer on the way makes the split impossible.

Three targets come out of this: a convolution's **output** channel (its output tensor divided: the outlier is
divided among ``k`` output channels), a convolution's **input** channel (its input tensor duplicated: the outlier
is divided among ``k`` input channels), and a depthwise convolution's channel (input duplicated, output divided:
the depthwise weights of that channel are divided by ``k``). No other kernel's range grows (copies are exact or
smaller), and activation ranges stay or shrink. Copies of a divided channel round alike, so another convolution
that has to write divided copies puts that channel on a ``k`` times coarser weight grid, and so does every tensor
carrying them on its activation grid: a split is refused when that leaves fewer than ``MIN_COPY_LEVELS`` weight
steps or ``MIN_ACTIVATION_LEVELS`` activation steps (calibration peaks) per copy. The cost is ``k - 1`` more
channels per split in every tensor of the subgraph (each tensor grows by at most ``MAX_GROWTH`` or ``MIN_BUDGET``
channels), and, for divided copies through a plain ReLU6, one per-channel cap.

:func:`split_outliers` splits greedily, the layer with the largest outlier ratio first, until each layer's widest
channel is within ``TARGET_RATIO`` of its median channel, the next split would gain less than ``MIN_GAIN`` or a
tensor it touches has used its budget; the widest channel becomes ``ceil(widest / next widest)`` copies. It runs
after cross-layer equalization (:mod:`.formatting`), which is not repeated: equalizing again moves range from the
narrowed kernels into their neighbours, including kernels whose own range is set by an outlier left in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from segzoo.quantization.formatting import (_concat_offset, _ensure_caps, _Graph, _Invalid, _kernel, _Node,
                                             _relu_kind)

log = logging.getLogger(__name__)

TARGET_RATIO = 4.0
"""Stop splitting a layer once its widest channel is at most this many times its median channel."""
MIN_GAIN = 1.25
"""Split a channel only when it is at least this many times wider than the next widest on the same axis (else the
per-tensor range would hardly shrink)."""
MAX_GROWTH = 0.25
"""A tensor grows by at most this fraction of its channels (or ``MIN_BUDGET`` channels, whichever is more)."""
MIN_BUDGET = 24
"""A small tensor may grow by this many channels. MediaPipe's 8-channel segmentation stream needed 18 (8 or 16 left
its splits half done, which was worse than none: mask IoU 37-39 instead of 56 unsplit and 67 split)."""
MIN_COPY_LEVELS = 8
"""A split that makes another convolution divide one of its channels keeps at least this many steps per copy."""
MIN_ACTIVATION_LEVELS = 8
"""The same for the activation grid of every tensor carrying divided copies (calibration peaks)."""
MAX_TOP = 8
"""At most this many channels of one layer are split together (the widest ones, when they are alike)."""
MAX_COPIES = 8
"""A channel is split into ``ceil(gain)`` copies (so that it is no longer the widest), at most this many."""
MAX_SPLITS = 400
"""Bound on the splits of one call (each split is one channel of one subgraph)."""

_CHANNELWISE = frozenset({"ReLU", "ChannelReLU", "Activation", "LeakyReLU", "ZeroPadding2D", "UpSampling2D",
                          "MaxPooling2D", "AveragePooling2D", "Dropout", "SpatialDropout2D", "Identity"})
DIVIDED, DUPLICATED = "divided", "duplicated"


@dataclass
class _Split:
    """The subgraph one channel split touches: ``(tensor, channel) -> mode`` (a tensor can hold the channel at
    several places, e.g. a concatenation of a tensor with its own upsampled copy), the boundary convolutions."""

    tensors: dict[tuple[str, int], str] = field(default_factory=dict)
    writers: list[tuple[str, int, str]] = field(default_factory=list)
    readers: list[tuple[str, int, str]] = field(default_factory=list)
    switch: str | None = None
    target: str | None = None
    """The layer whose kernel the split narrows (its copies share the channel's weights evenly)."""


def _full_conv(node: _Node) -> bool:
    cfg = node.config
    return (node.kind == "Conv2D" and int(cfg.get("groups", 1)) == 1
            and cfg.get("data_format", "channels_last") == "channels_last")


def _depthwise(node: _Node) -> bool:
    cfg = node.config
    return (node.kind == "DepthwiseConv2D" and int(cfg.get("depth_multiplier", 1)) == 1
            and cfg.get("data_format", "channels_last") == "channels_last")


def _homogeneous(node: _Node, mode: str, new_caps: bool) -> bool:
    """Whether ``node`` (an activation or a layer with a fused activation) commutes with the split's mode."""
    activation = node.config.get("activation", "linear") if node.kind != "Activation" else node.config["activation"]
    if node.kind in ("ReLU", "ChannelReLU", "LeakyReLU"):
        try:
            kind = _relu_kind(node, "clip")
        except _Invalid:
            return False
        return kind != "capped" or mode == DUPLICATED or new_caps or node.caps is not None \
            or node.kind == "ChannelReLU"
    return activation in ("linear", None, "relu")


class _Closure:
    """Builds a :class:`_Split` by following one tensor channel through the graph."""

    def __init__(self, graph: _Graph, consumers: dict[str, list[str]], new_caps: bool) -> None:
        self.graph, self.consumers, self.new_caps = graph, consumers, new_caps
        self.split = _Split()

    def visit(self, name: str, channel: int, mode: str) -> None:
        """Add tensor ``name`` (its producer's name) with ``channel`` in ``mode``; _Invalid when impossible."""
        seen = self.split.tensors.get((name, channel))
        if seen is not None:
            if seen != mode:
                raise _Invalid(name)
            return
        graph = self.graph
        self.split.tensors[(name, channel)] = mode
        node = graph.nodes[name]
        if graph.is_output(name):
            raise _Invalid(name)
        self._backward(node, channel, mode)
        self._forward(name, channel, mode)

    def _backward(self, node: _Node, channel: int, mode: str) -> None:
        if node.name == self.split.switch:
            return
        if _full_conv(node):
            if mode == DIVIDED and not _homogeneous(node, mode, False):
                raise _Invalid(node.name)
            self.split.writers.append((node.name, channel, mode))
            return
        sources = self.graph.inputs_of(node)
        if node.kind == "Concatenate":
            if node.config.get("axis", -1) not in (-1, 3):
                raise _Invalid(node.name)
            offset = 0
            for src in sources:
                size = self.graph.nodes[src].channels
                if offset <= channel < offset + size:
                    self.visit(src, channel - offset, mode)
                    return
                offset += size
            raise _Invalid(node.name)
        if node.kind == "Add" or (node.kind in _CHANNELWISE and _homogeneous(node, mode, self.new_caps)) \
                or (_depthwise(node) and _homogeneous(node, mode, False)):
            for src in sources:
                self.visit(src, channel, mode)
            return
        raise _Invalid(node.name)

    def _forward(self, name: str, channel: int, mode: str) -> None:
        counts: dict[str, int] = {}
        for cname in self.consumers[name]:
            occurrence = counts.get(cname, 0)
            counts[cname] = occurrence + 1
            node = self.graph.nodes[cname]
            if cname == self.split.switch:
                continue
            if _full_conv(node):
                if (cname, channel, mode) not in self.split.readers:
                    self.split.readers.append((cname, channel, mode))
            elif node.kind == "Concatenate":
                self.visit(cname, channel + _concat_offset(self.graph, node, name, occurrence), mode)
            elif node.kind == "Add" or node.kind in _CHANNELWISE or _depthwise(node):
                self.visit(cname, channel, mode)
            else:
                raise _Invalid(cname)


def plan(graph: _Graph, layer: str, axis: str, channel: int, new_caps: bool) -> _Split:
    """The subgraph splitting ``layer``'s ``axis`` (``"out"``, ``"in"`` or, for a depthwise layer, ``"dw"``)
    channel touches; _Invalid when the split cannot be exact."""
    closure = _Closure(graph, graph.consumers(), new_caps)
    closure.split.target = layer
    node = graph.nodes[layer]
    if axis == "out":
        closure.visit(layer, channel, DIVIDED)
    elif axis == "in":
        sources = graph.inputs_of(node)
        if len(sources) != 1:
            raise _Invalid(layer)
        closure.visit(sources[0], channel, DUPLICATED)
    else:
        closure.split.switch = layer
        closure.visit(layer, channel, DIVIDED)
        closure.visit(graph.inputs_of(node)[0], channel, DUPLICATED)
    return closure.split


def _insert(array: np.ndarray, axis: int, channel: int, copies: int, factor: float) -> np.ndarray:
    """``array`` with channel ``channel`` of ``axis`` replaced by ``copies`` copies of it times ``factor``."""
    moved = np.moveaxis(array, axis, 0)
    part = moved[channel:channel + 1] * factor
    out = np.concatenate([moved[:channel], np.repeat(part, copies, axis=0), moved[channel + 1:]], axis=0)
    return np.moveaxis(out, 0, axis)


def _descending(entries: list[tuple[str, int, str]]) -> list[tuple[str, int, str]]:
    """Entries by layer, highest channel first: inserting copies there leaves the lower channel indices valid."""
    return sorted(entries, key=lambda entry: (entry[0], -entry[1]))


def apply(graph: _Graph, split: _Split, copies: int, peaks: dict[str, np.ndarray] | None = None) -> None:
    """Rewrite the IR's weights and channel counts for ``split`` into ``copies`` channels (see module docstring);
    ``peaks`` (per-channel activation peaks) follows the new channels."""
    share = 1.0 / copies
    for name, channel, mode in _descending(split.writers):
        node = graph.nodes[name]
        factor = share if mode == DIVIDED else 1.0
        node.weights[0] = _insert(_kernel(node), 3, channel, copies, factor)
        if node.config.get("use_bias", True) and len(node.weights) > 1:
            node.weights[1] = _insert(node.weights[1], 0, channel, copies, factor)
        node.config = {**node.config, "filters": int(node.weights[0].shape[3])}
    for name, channel, mode in _descending(split.readers):
        node = graph.nodes[name]
        if mode == DUPLICATED and name != split.target:  # all of it on the first copy: no rounding repeated k times
            kernel = _insert(_kernel(node), 2, channel, copies, 1.0)
            kernel[:, :, channel + 1:channel + copies, :] = 0.0
            node.weights[0] = kernel
        else:
            node.weights[0] = _insert(_kernel(node), 2, channel, copies, share if mode == DUPLICATED else 1.0)
    for name, channel, mode in _descending([(n, c, m) for (n, c), m in split.tensors.items()]):
        node = graph.nodes[name]
        factor = share if mode == DIVIDED else 1.0
        if peaks is not None and name in peaks:
            peaks[name] = _insert(peaks[name], 0, channel, copies, factor)
        if _depthwise(node):
            weight_factor = share if name == split.switch else 1.0
            node.weights[0] = _insert(_kernel(node), 2, channel, copies, weight_factor)
            if node.config.get("use_bias", True) and len(node.weights) > 1:
                node.weights[1] = _insert(node.weights[1], 0, channel, copies, factor)
        elif node.kind in ("ReLU", "ChannelReLU") and (node.caps is not None or node.kind == "ChannelReLU"
                                                       or (mode == DIVIDED and _relu_kind(node, "clip") == "capped")):
            caps = _ensure_caps(node)
            node.caps = _insert(caps, 0, channel, copies, factor)
            node.base_caps = _insert(node.base_caps, 0, channel, copies, factor)
        node.channels += copies - 1
        if node.kind == "ChannelReLU":
            node.config = {**node.config, "channels": node.channels}


def channel_ranges(node: _Node) -> tuple[np.ndarray, np.ndarray | None]:
    """Per output channel and (full convolutions) per input channel largest ``|w|`` of a kernel."""
    kernel = np.abs(_kernel(node))
    if _depthwise(node):
        return kernel.max(axis=(0, 1, 3)), None
    return kernel.max(axis=(0, 1, 2)), kernel.max(axis=(0, 1, 3))


def outlier_ratio(node: _Node) -> float:
    """A kernel's largest ``|w|`` over its median output channel's: how badly one per-tensor step fits it (the
    input-channel axis is split too, but ranking layers by it split worse on MediaPipe's landmark model)."""
    out, _ = channel_ranges(node)
    median = float(np.median(out))
    return float(out.max()) / median if median > 0 else 0.0


def _candidates(node: _Node, target: float) -> list[tuple[float, str, list[tuple[int, int]]]]:
    """``(gain, axis, [(channel, copies), ...])`` splits that would narrow ``node``'s kernel, best first.

    On each axis the widest channels down to the first one ``MIN_GAIN`` times narrower than the widest (at most
    ``MAX_TOP`` of them) are split together, each into as many copies as bring it to that level (or to ``target``
    times the median channel, whichever is higher); gain: how much the kernel's range shrinks.
    """
    out, inp = channel_ranges(node)
    found = []
    for axis, ranges in (("dw" if inp is None else "out", out), ("in", inp)):
        if ranges is None or ranges.size < 2:
            continue
        order = np.argsort(ranges)[::-1]
        top = float(ranges[order[0]])
        below = [i for i in range(1, min(len(order), MAX_TOP + 1)) if ranges[order[i]] <= top / MIN_GAIN]
        if not below:
            continue
        level = max(float(ranges[order[below[0]]]), target * float(np.median(ranges)))
        if level <= 0 or top / level < MIN_GAIN:
            continue
        picks = [(int(c), min(MAX_COPIES, int(np.ceil(ranges[c] / level - 1e-9)))) for c in order[:below[0]]]
        gain = top / max(level, max(float(ranges[c]) / k for c, k in picks))
        found.append((gain, axis, sorted(picks, reverse=True)))
    return sorted(found, key=lambda item: item[0], reverse=True)


def _fine_enough(graph: _Graph, split: _Split, copies: int, peaks: dict[str, np.ndarray] | None) -> bool:
    """Whether every divided copy keeps enough int8 steps of each per-tensor grid it lies on.

    Copies of a divided channel hold the same value and round alike, so that channel is effectively on a
    ``copies`` times coarser grid: the weight grid of every other convolution that writes it (at least
    ``MIN_COPY_LEVELS`` steps per copy), the activation grid of every tensor that carries it (at least
    ``MIN_ACTIVATION_LEVELS``; ``peaks``: per-channel largest ``|value|`` on the calibration images, not checked
    without them; a channel at 0 on every calibration image costs nothing).
    """
    for name, channel, mode in split.writers:
        if mode != DIVIDED or name == split.target:
            continue
        kernel = np.abs(_kernel(graph.nodes[name]))
        if kernel[..., channel].max() / copies < MIN_COPY_LEVELS * kernel.max() / 127:
            return False
    for (name, channel), mode in split.tensors.items():
        peak = None if peaks is None else peaks.get(name)
        if mode == DIVIDED and peak is not None \
                and 0 < peak[channel] / copies < MIN_ACTIVATION_LEVELS * peak.max() / 255:
            return False
    return True


def _limits(graph: _Graph) -> dict[str, int]:
    """The most channels each tensor may reach: ``MAX_GROWTH`` more, at least ``MIN_BUDGET`` more."""
    return {node.name: node.channels + max(MIN_BUDGET, int(MAX_GROWTH * node.channels)) for node in graph.live()}


def _affordable(graph: _Graph, plans: list[_Split], picks: list[tuple[int, int]], limits: dict[str, int]) -> bool:
    """Whether every tensor the splits touch stays within its growth limit (:func:`_limits`)."""
    extra: dict[str, int] = {}
    for split, (_, copies) in zip(plans, picks):
        for name, _ in split.tensors:
            extra[name] = extra.get(name, 0) + copies - 1
    return all(graph.nodes[name].channels + more <= limits[name] for name, more in extra.items())


def has_outliers(graph: _Graph, target: float = TARGET_RATIO) -> bool:
    """Whether some convolution's widest channel is more than ``target`` times its median channel."""
    return any((_full_conv(n) or _depthwise(n)) and outlier_ratio(n) > target for n in graph.live())


def split_outliers(graph: _Graph, new_caps: bool, peaks: dict[str, np.ndarray] | None = None,
                   target: float = TARGET_RATIO) -> dict[str, int]:
    """Split outlier channels greedily (module docstring); layer name -> channels added for it.

    ``peaks``: per-channel largest ``|activation|`` of each layer's output on calibration images (updated as
    channels are split), so that no divided copy falls below ``MIN_ACTIVATION_LEVELS`` activation steps.
    """
    added: dict[str, int] = {}
    blocked: set[tuple[str, str]] = set()
    limits = _limits(graph)
    for _ in range(MAX_SPLITS):
        layers = [n for n in graph.live() if (_full_conv(n) or _depthwise(n)) and outlier_ratio(n) > target
                  and (n.name, "all") not in blocked]
        done = False
        for node in sorted(layers, key=outlier_ratio, reverse=True):
            for gain, axis, picks in _candidates(node, target):
                if (node.name, axis) in blocked:
                    continue
                try:
                    plans = [plan(graph, node.name, axis, channel, new_caps) for channel, _ in picks]
                    if not _affordable(graph, plans, picks, limits) \
                            or not all(_fine_enough(graph, p, k, peaks) for p, (_, k) in zip(plans, picks)):
                        raise _Invalid(node.name)
                except _Invalid:
                    blocked.add((node.name, axis))
                    continue
                for channel, copies in picks:  # highest channel first: the others keep their index
                    apply(graph, plan(graph, node.name, axis, channel, new_caps), copies, peaks)
                added[node.name] = added.get(node.name, 0) + sum(k - 1 for _, k in picks)
                done = True
                break
            if done:
                break
            blocked.add((node.name, "all"))
        if not done:
            break
    if added:
        log.info("outlier channel splitting: %d channels added for %d layers", sum(added.values()), len(added))
    return added
