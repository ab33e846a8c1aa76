"""Function-preserving rewrites that make 8-bit **per-tensor** quantization lose little ("quantization.optimize").

Per-tensor quantization gives a whole weight tensor one scale. After BatchNorm folding the output channels of a
(depthwise) convolution can have ranges that differ by 100x or more; the small channels are then rounded to a
few levels, or to zero. The rewrites below change the weights, not the function (Nagel et al. 2019, "Data-Free
Quantization Through Weight Equalization and Bias Correction"; ST's per-tensor formatting, arXiv 2201.08442):

1. **BatchNorm folding**: ``conv -> BN`` becomes one convolution with a bias (Conv2D and DepthwiseConv2D).
2. **Cross-layer equalization (CLE)**: for a producer convolution P whose output channels reach consumer
   convolutions only through channel-wise, positively homogeneous ops (ReLU, zero padding, dropout, pooling,
   bilinear upsampling, concatenation), output channel ``i`` of P is divided by ``s_i`` and the matching input
   channel of every consumer multiplied by ``s_i``, with ``s_i = sqrt(r1_i / r2_i)`` (``r1_i``: range of P's
   channel ``i``, ``r2_i``: range of the consumers' input channel ``i``). Both then have the range
   ``sqrt(r1_i * r2_i)``. Depthwise convolutions are consumers too (input channel ``i`` = their channel ``i``).
   Iterated over the network until the scales converge.

   ReLU6 is not scale-equivariant (``relu6(x / s) != relu6(x) / s``). ``relu6="clip"`` (default) keeps the model
   exact by replacing the ReLU6 of an equalized path by :class:`ChannelReLU`, ``min(max(x, 0), cap)`` with the
   per-channel cap ``6 / s_i`` (TFLite: the ReLU fuses into the convolution, the cap is one int8 MINIMUM with a
   constant vector). Scaling a channel up raises its cap and so the per-tensor range of that activation: ``s_i``
   is bounded so that no cap grows beyond ``MAX_CAP_GROWTH`` (2x) its original value. ``relu6="skip"`` only
   equalizes paths without a bounded activation (the ASPP head, the linear
   ``expanded_conv_project -> block_1_expand``), leaving the graph's op set unchanged (but gaining little:
   MobileNetV2's depthwise layers, the worst per-tensor offenders, sit between ReLU6s).
   ``relu6="headroom"`` (needs calibration images) equalizes across ReLU6 too and keeps every ReLU6 as it is
   (no new op; the NPU placement is unchanged), within the headroom the calibration images leave: after the
   rewrite channel ``i`` is clipped at ``6 * C_i`` in the original units (``C_i``: the product of its scales), so
   the model is unchanged wherever the pre-activation ``z_i`` stays at or below ``min(6, 6 * C_i)``. With ``m_i``
   the channel's calibration maximum times ``1 + HEADROOM_MARGIN``: ``C_i >= m_i / 6`` always, and ``C_i > 1``
   only when ``m_i <= 6``; a channel that reaches its cap on the calibration images keeps ``C_i = 1``. Exact on
   the calibration images (report ``exact: false``; tested on held-out images).
   ``residual=True`` (``quantization.residual_equalization``) also equalizes **residual streams**, which plain
   CLE stops at: the tensors tied by Adds, ReLUs and channel-wise pass-through ops (e.g. ``x_{k+1} =
   relu6(x_k + project_k(x_k))``) share one scale per channel; every convolution writing into the stream divides
   its output channel ``i`` by ``s_i`` and every one reading from it multiplies its input channel ``i`` by
   ``s_i`` (producers' range: the largest over all of them). Exact for linear and ReLU streams, and across
   ReLU6 as the ``relu6`` mode says (``headroom`` bounds come from each ReLU6's own input, the Add).
3. **Bias absorption** (Nagel §4.2), only when ``calibration`` images are given: when a ReLU channel's
   pre-activation stays above ``c_i > 0`` on the calibration set, ``c_i`` is moved out of the producer's bias and
   into the consumers' biases (``relu(z) = relu(z - c) + c`` when ``z >= c``), shrinking that activation's range.
   ``c_i = min_i - ABSORB_MARGIN * (mean_i - min_i)`` (calibration statistics of the pre-activation, with a
   safety margin). Done only where the shift is otherwise exact: every path goes through exactly one ReLU and
   reaches 1x1 (or ``valid``) consumers without zero padding. The model is exact on every input whose
   pre-activations stay above ``c`` (the calibration images, within round-off); it is *statistically* exact
   elsewhere (held-out images: logits within 0.2% of their maximum, see ``ABSORB_MARGIN``). Without
   ``calibration`` every step is exact for all inputs.
4. **Outlier channel splitting** (``split_outliers``, opt-in), after equalization: the channels that still hold a
   kernel's widest weights become several channels carrying a part each, exactly
   (:mod:`segzoo.quantization.outlier_split`).
5. **Activation ranges**: nothing here clips activations (that would change the float model). The TFLite
   converter calibrates each tensor with the absolute min/max over the representative set (no percentile or
   MSE option in TF 2.21). What is done instead: ReLU6 caps are kept exactly (so bounded activations keep a
   [0, 6]-style range, at most [0, 12] after CLE), and bias absorption shrinks ReLU ranges. Not done: percentile
   or MSE range selection (would need rewriting the calibrated model's min/max), bias correction of the
   quantization error (Nagel §4.2; changes the quantized, not the float, model).

Measured (tests/test_quantization_core.py, 64x64 alpha-0.35 models with randomized BN statistics, mean
``|int8 logit - float logit| / mean |float logit|``): per-tensor v1 0.33 -> 0.10, v2 0.20 -> 0.045,
none 0.12 -> 0.03 with ``optimize_for_per_tensor(model, calibration)``, i.e. at the per-channel level
(0.11, 0.045, 0.03); ``relu6="skip"``: 0.36, 0.15, 0.09.

The result is a new functional Keras model of stock layers plus :class:`ChannelReLU`; it saves and loads as
``.keras`` with ``custom_objects=CUSTOM_OBJECTS`` (the class is also registered as ``segzoo>ChannelReLU``, so an
import of this module is enough) and converts to a TFLite model of builtin int8 ops.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from segzoo.errors import ModelError

log = logging.getLogger(__name__)

RELU6_MODES: tuple[str, ...] = ("clip", "skip", "headroom")
DEAD_CHANNEL_MODES: tuple[str, ...] = ("off", "exact", "calibration")
CLE_MAX_ITERATIONS = 30
CLE_TOLERANCE = 1e-3
SCALE_LIMITS = (1e-3, 1e3)
MAX_CAP_GROWTH = 2.0
HEADROOM_MARGIN = 0.25
"""``relu6="headroom"``: a channel's calibration maximum is taken ``1 + HEADROOM_MARGIN`` times larger (unseen
images reach a little further than the calibration ones) before deciding how far it may be scaled."""
ABSORB_MARGIN = 1.0
"""Bias absorption shifts channel ``i`` by ``max(0, min_i - ABSORB_MARGIN * (mean_i - min_i))`` (calibration stats).

With 0 (the plain calibration minimum) held-out images of the same distribution moved the float logits by up to
3% of their maximum; with 1.0 by at most 0.2% (argmax agreement 99.99%), keeping most of the gain."""
"""Equalization may raise a ReLU6 channel's cap (``6 / s_i``) to at most 12: its activation range at most doubles.

Unbounded growth (plain Nagel CLE) trades weight resolution for activation resolution; on the randomized-BN test
models, bounding the growth at 2x lowered the per-tensor logit error by a further 5-40% (1x, i.e. never scaling
a capped channel up, was worse than unbounded)."""


# ----------------------------------------------------------------------------------------- custom layer
@keras.saving.register_keras_serializable(package="segzoo")
class ChannelReLU(keras.layers.Layer):
    """``min(max(x, 0), cap)`` with a per-channel ``cap`` (last axis): an exact stand-in for a scaled ReLU6."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels = int(channels)

    def build(self, input_shape: tuple) -> None:
        self.cap = self.add_weight(name="cap", shape=(self.channels,), initializer=keras.initializers.Constant(6.0),
                                   trainable=False)

    def call(self, inputs: Any) -> Any:
        return keras.ops.minimum(keras.ops.relu(inputs), self.cap)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "channels": self.channels}


CUSTOM_OBJECTS: dict[str, type] = {"ChannelReLU": ChannelReLU, "segzoo>ChannelReLU": ChannelReLU}
"""Pass to ``keras.saving.load_model(..., custom_objects=CUSTOM_OBJECTS)`` for optimized models."""


# -------------------------------------------------------------------------------------------- graph IR
@dataclass
class _Node:
    """One layer call of the functional graph, with weights that the rewrites may change."""

    name: str
    layer: Any
    inputs: list[str]
    weights: list[np.ndarray]
    config: dict
    channels: int
    removed: bool = False
    caps: np.ndarray | None = None  # per-channel ReLU cap once a bounded ReLU becomes a ChannelReLU
    base_caps: np.ndarray | None = None  # the caps before any equalization

    @property
    def kind(self) -> str:
        return type(self.layer).__name__


@dataclass
class _Graph:
    """Nodes in topological order, aliases of removed nodes, model outputs (producer names)."""

    nodes: dict[str, _Node]
    outputs: list[str]
    model: Any
    alias: dict[str, str] = field(default_factory=dict)
    cap_growth: float = 2.0
    """``relu6="clip"``: how far equalization may raise a ReLU6 channel's cap (``MAX_CAP_GROWTH`` by default)."""

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def inputs_of(self, node: _Node) -> list[str]:
        return [self.resolve(n) for n in node.inputs]

    def consumers(self) -> dict[str, list[str]]:
        """Producer name -> consumer names (a name repeats when a consumer takes the tensor twice)."""
        table: dict[str, list[str]] = {name: [] for name in self.nodes}
        for node in self.live():
            for src in self.inputs_of(node):
                table[src].append(node.name)
        return table

    def live(self) -> Iterator[_Node]:
        return (node for node in self.nodes.values() if not node.removed)

    def is_output(self, name: str) -> bool:
        return name in {self.resolve(o) for o in self.outputs}


def _producer(tensor: Any) -> str:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise ModelError("optimize_for_per_tensor: a layer input is not a symbolic Keras tensor of the model graph.")
    if history.tensor_index != 0:
        raise ModelError(f"optimize_for_per_tensor: layer '{history.operation.name}' has several outputs; "
                         f"only single-output layers are supported.")
    return history.operation.name


def _graph_calls(model: keras.Model) -> Iterator[Any]:
    graph = model if getattr(model, "_nodes_by_depth", None) is not None else getattr(model, "_functional", None)
    if graph is None or getattr(graph, "_nodes_by_depth", None) is None:
        raise ModelError(f"optimize_for_per_tensor needs a functional Keras model; '{model.name}' is "
                         f"{type(model).__name__}.")
    for depth in sorted(graph._nodes_by_depth, reverse=True):  # noqa: SLF001 - Keras' functional graph
        yield from graph._nodes_by_depth[depth]  # noqa: SLF001


def _as_work_array(weight: Any) -> np.ndarray:
    """Float weights in float64 for the rewrites; other weights (e.g. RNG state) unchanged."""
    array = np.asarray(weight)
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array


def _read_graph(model: keras.Model) -> tuple[_Graph, dict[str, Any]]:
    """The IR of ``model`` and each layer name's Keras call node (for rebuilding with the same arguments)."""
    nodes: dict[str, _Node] = {}
    calls: dict[str, Any] = {}
    for call in _graph_calls(model):
        layer = call.operation
        if layer.name in nodes:
            raise ModelError(f"optimize_for_per_tensor: layer '{layer.name}' is called more than once (shared "
                             f"layers are not supported).")
        if isinstance(layer, keras.Model):
            raise ModelError(f"optimize_for_per_tensor: nested model '{layer.name}' is not supported; rebuild "
                             f"the model flat (segzoo's registry models are flat).")
        if not isinstance(layer, keras.layers.Layer):
            raise ModelError(f"optimize_for_per_tensor: graph operation '{layer.name}' "
                             f"({type(layer).__name__}) is not a Keras layer and cannot be rebuilt.")
        inputs = [_producer(t) for t in call.arguments.keras_tensors]
        channels = int(call.outputs[0].shape[-1]) if call.outputs and call.outputs[0].shape else 0
        weights = [_as_work_array(w) for w in layer.get_weights()]
        nodes[layer.name] = _Node(layer.name, layer, inputs, weights, layer.get_config(), channels)
        calls[layer.name] = call
    outputs = [_producer(t) for t in model.outputs]
    return _Graph(nodes, outputs, model), calls


# ------------------------------------------------------------------------------------------ layer kinds
def _is_conv(node: _Node) -> bool:
    """A channels-last Conv2D (groups 1) or DepthwiseConv2D: the layers BN folding and CLE rewrite."""
    cfg = node.config
    if cfg.get("data_format", "channels_last") != "channels_last":
        return False
    if node.kind == "Conv2D":
        return int(cfg.get("groups", 1)) == 1
    return node.kind == "DepthwiseConv2D"


def _linear_activation(node: _Node) -> bool:
    return node.config.get("activation", "linear") in ("linear", None)


def _kernel(node: _Node) -> np.ndarray:
    return node.weights[0]


def _bias(node: _Node) -> np.ndarray:
    """The node's bias, creating a zero one (and ``use_bias``) when the layer had none."""
    if not node.config.get("use_bias", True) or len(node.weights) < 2:
        out_channels = _out_channels(node)
        node.weights = [node.weights[0], np.zeros(out_channels)]
        node.config = {**node.config, "use_bias": True}
    return node.weights[1]


def _out_channels(node: _Node) -> int:
    kernel = _kernel(node)
    return kernel.shape[2] * kernel.shape[3] if node.kind == "DepthwiseConv2D" else kernel.shape[3]


def _out_view(node: _Node) -> np.ndarray:
    """Producer weights as ``[..., out_channel]`` (a depthwise ``[h,w,c,m]`` kernel flattened to ``c*m``)."""
    kernel = _kernel(node)
    if node.kind == "DepthwiseConv2D":
        return kernel.reshape(kernel.shape[0], kernel.shape[1], -1)
    return kernel


def _scale_outputs(node: _Node, factor: np.ndarray) -> None:
    """Multiply output channel ``i`` (weights and bias) by ``factor[i]``."""
    kernel = _kernel(node)
    if node.kind == "DepthwiseConv2D":
        node.weights[0] = (kernel.reshape(*kernel.shape[:2], -1) * factor).reshape(kernel.shape)
    else:
        node.weights[0] = kernel * factor
    if node.config.get("use_bias", True) and len(node.weights) > 1:
        node.weights[1] = node.weights[1] * factor


def _in_slice(node: _Node, offset: int, size: int) -> np.ndarray:
    """Consumer kernel restricted to input channels ``[offset, offset+size)``: ``[h, w, size, out]``."""
    return _kernel(node)[:, :, offset:offset + size, :]


def _scale_inputs(node: _Node, offset: int, factor: np.ndarray) -> None:
    kernel = _kernel(node).copy()
    kernel[:, :, offset:offset + factor.size, :] *= factor[:, None]
    node.weights[0] = kernel


# --------------------------------------------------------------------------------------------- BN fold
def _bn_params(node: _Node) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` of an inference BatchNorm: ``y = x * scale + shift``."""
    layer = node.layer
    mean = np.asarray(layer.moving_mean.numpy(), np.float64)
    var = np.asarray(layer.moving_variance.numpy(), np.float64)
    gamma = np.asarray(layer.gamma.numpy(), np.float64) if layer.scale else np.ones_like(mean)
    beta = np.asarray(layer.beta.numpy(), np.float64) if layer.center else np.zeros_like(mean)
    scale = gamma / np.sqrt(var + float(layer.epsilon))
    return scale, beta - mean * scale


def _foldable(graph: _Graph, bn: _Node, consumers: dict[str, list[str]]) -> _Node | None:
    """The convolution ``bn`` can be folded into, or None."""
    axis = bn.config.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    if axis not in (-1, 3) or len(bn.inputs) != 1:
        return None
    conv = graph.nodes[graph.resolve(bn.inputs[0])]
    if not _is_conv(conv) or not _linear_activation(conv) or graph.is_output(conv.name):
        return None
    return conv if consumers[conv.name] == [bn.name] else None


def fold_batch_norms(graph: _Graph) -> tuple[int, list[str]]:
    """Fold every ``conv -> BatchNormalization`` pair; the number folded and the BN layers left unfolded."""
    folded, left = 0, []
    for bn in [n for n in graph.live() if n.kind == "BatchNormalization"]:
        conv = _foldable(graph, bn, graph.consumers())
        if conv is None:
            left.append(bn.name)
            continue
        scale, shift = _bn_params(bn)
        bias = _bias(conv).copy()
        _scale_outputs(conv, scale)
        conv.weights[1] = bias * scale + shift
        bn.removed = True
        graph.alias[bn.name] = conv.name
        folded += 1
    return folded, left


# ------------------------------------------------------------------------------------------ CLE groups
_PASS_THROUGH = frozenset({"ZeroPadding2D", "Dropout", "SpatialDropout2D", "UpSampling2D", "GlobalAveragePooling2D",
                           "AveragePooling2D", "MaxPooling2D", "GlobalMaxPooling2D", "Identity"})
_SHIFT_BREAKERS = frozenset({"ZeroPadding2D", "MaxPooling2D", "GlobalMaxPooling2D"})


@dataclass
class _Group:
    """A producer, its consumers ``(name, input-channel offset)`` and the ReLUs in between."""

    producer: str
    consumers: list[tuple[str, int]]
    relus: list[tuple[str, int]]
    shift_exact: bool
    relu_on_every_path: bool
    bounds: tuple[np.ndarray, np.ndarray] | None = None
    """``relu6="headroom"``: per-channel bounds of the total scale ``C_i`` (see the module docstring)."""
    total: np.ndarray | None = None
    """``relu6="headroom"``: the product of the scales applied so far."""
    extra_producers: list[str] = field(default_factory=list)
    """A residual stream (:func:`find_residual_groups`): the other convolutions whose outputs are added into it."""

    @property
    def producers(self) -> list[str]:
        """Every convolution whose output channels this group rescales."""
        return [self.producer, *self.extra_producers]


class _Invalid(Exception):
    """A path from the producer reaches something channel scaling cannot pass."""


def _relu_kind(node: _Node, relu6: str) -> str:
    """``"linear"``, ``"relu"`` (scale-equivariant) or ``"capped"`` (bounded: needs a per-channel cap)."""
    if node.kind == "ChannelReLU":
        return "capped"
    cfg = node.config
    if node.kind == "ReLU" and float(cfg.get("threshold", 0.0) or 0.0) == 0.0:
        if cfg.get("max_value") is None:
            return "relu"
        if float(cfg.get("negative_slope", 0.0) or 0.0) == 0.0 and relu6 in ("clip", "headroom"):
            return "capped"
    if node.kind == "LeakyReLU":
        return "relu"
    if node.kind == "Activation" and cfg.get("activation") in ("relu", "linear"):
        return "relu" if cfg["activation"] == "relu" else "linear"
    raise _Invalid(node.name)


def _concat_offset(graph: _Graph, concat: _Node, source: str, occurrence: int) -> int:
    axis = concat.config.get("axis", -1)
    if axis not in (-1, 3):
        raise _Invalid(concat.name)
    offset, seen = 0, 0
    for src in graph.inputs_of(concat):
        if src == source:
            if seen == occurrence:
                return offset
            seen += 1
        offset += graph.nodes[src].channels
    raise _Invalid(concat.name)


def _walk(graph: _Graph, consumers: dict[str, list[str]], name: str, offset: int, relus_seen: int,
          group: _Group, relu6: str) -> None:
    """Follow ``name``'s output to the consumer convolutions, filling ``group``; _Invalid when impossible."""
    if graph.is_output(name):
        raise _Invalid(name)
    counts: dict[str, int] = {}
    for cname in consumers[name]:
        occurrence = counts.get(cname, 0)
        counts[cname] = occurrence + 1
        node = graph.nodes[cname]
        if _is_conv(node):
            group.consumers.append((cname, offset))
            group.relu_on_every_path &= relus_seen == 1
            ksize = _kernel(node).shape[:2]
            group.shift_exact &= tuple(ksize) == (1, 1) or node.config.get("padding") == "valid"
        elif node.kind in _PASS_THROUGH:
            group.shift_exact &= node.kind not in _SHIFT_BREAKERS
            _walk(graph, consumers, cname, offset, relus_seen, group, relu6)
        elif node.kind == "Concatenate":
            _walk(graph, consumers, cname, offset + _concat_offset(graph, node, name, occurrence), relus_seen,
                  group, relu6)
        else:
            kind = _relu_kind(node, relu6)
            if kind != "linear":
                group.relus.append((cname, offset))
            _walk(graph, consumers, cname, offset, relus_seen + (kind != "linear"), group, relu6)


def find_groups(graph: _Graph, relu6: str) -> list[_Group]:
    """Every producer convolution whose output channels can be rescaled exactly (see module docstring)."""
    consumers = graph.consumers()
    groups = []
    for node in graph.live():
        if not _is_conv(node) or not _linear_activation(node):
            continue
        group = _Group(node.name, [], [], True, True)
        try:
            _walk(graph, consumers, node.name, 0, 0, group, relu6)
        except _Invalid:
            continue
        if group.consumers:
            groups.append(group)
    return groups


_STREAM_OPS = _PASS_THROUGH - {"GlobalAveragePooling2D", "GlobalMaxPooling2D"}
"""Channel-wise, positively homogeneous ops that keep the spatial layout inside a residual stream."""
_ACTIVATIONS = frozenset({"ReLU", "LeakyReLU", "Activation", "ChannelReLU"})


def _stream_members(graph: _Graph, consumers: dict[str, list[str]], start: str,
                    relu6: str) -> tuple[set[str], set[str]]:
    """The tensors (producer names) that must share ``start``'s channel scales, and the convolutions reading them.

    Two tensors share scales when one is a pass-through, ReLU or Add of the other (an Add ties all its inputs and
    its output). _Invalid when the set reaches something a channel scaling cannot pass (a model output, a
    concatenation, a fused or nonlinear activation, another kind of layer) or has no Add.
    """
    members, readers, todo, adds = set(), set(), [start], 0
    while todo:
        name = todo.pop()
        if name in members:
            continue
        members.add(name)
        node = graph.nodes[name]
        if graph.is_output(name) or node.kind == "InputLayer":
            raise _Invalid(name)
        if node.kind == "Add":
            adds += 1
            todo.extend(graph.inputs_of(node))
        elif node.kind in _STREAM_OPS or node.kind in _ACTIVATIONS:
            if node.kind in _ACTIVATIONS:
                _relu_kind(node, relu6)  # _Invalid for a nonlinear or (relu6="skip") a capped activation
            todo.extend(graph.inputs_of(node))
        elif not (_is_conv(node) and _linear_activation(node)):
            raise _Invalid(name)
        for cname in consumers[name]:
            kind = graph.nodes[cname].kind
            if _is_conv(graph.nodes[cname]):
                readers.add(cname)
            elif kind == "Add" or kind in _STREAM_OPS or kind in _ACTIVATIONS:
                todo.append(cname)
            else:
                raise _Invalid(cname)
    if not adds:
        raise _Invalid(start)
    if len({graph.nodes[m].channels for m in members}) != 1:
        raise _Invalid(start)
    return members, readers


def find_residual_groups(graph: _Graph, relu6: str) -> list[_Group]:
    """Residual streams as CLE groups (``quantization.residual_equalization``).

    A residual stream is the set of tensors that Adds, ReLUs and channel-wise pass-through ops tie together
    (e.g. ``x_{k+1} = relu6(x_k + project_k(x_k))`` over several blocks): channel ``i`` of every one of them can
    be divided by the same ``s_i`` when every convolution writing into the stream divides its output channel
    ``i`` by ``s_i`` and every convolution reading from it multiplies its input channel ``i`` by ``s_i``.
    The producers' range is the largest over all of them, the consumers' over all readers. Exact for ReLU and
    linear streams; across ReLU6 it is exact with ``relu6="clip"`` and within the calibration headroom with
    ``relu6="headroom"`` (the bounds come from each ReLU6's own input). Streams that :func:`find_groups` already
    covers (no Add) are not returned.
    """
    consumers = graph.consumers()
    groups, seen = [], set()
    for node in graph.live():
        if node.name in seen or not _is_conv(node) or not _linear_activation(node):
            continue
        if not any(graph.nodes[c].kind == "Add" or graph.nodes[c].kind in _STREAM_OPS | _ACTIVATIONS
                   for c in consumers[node.name]):
            continue
        try:
            members, readers = _stream_members(graph, consumers, node.name, relu6)
        except _Invalid:
            continue
        seen |= members
        producers = [n for n in graph.nodes if n in members and _is_conv(graph.nodes[n])]
        relus = [(n, 0) for n in graph.nodes if n in members and graph.nodes[n].kind in _ACTIVATIONS
                 and _relu_kind(graph.nodes[n], relu6) != "linear"]
        if not readers or any(r in members for r in readers):
            continue
        groups.append(_Group(producers[0], [(r, 0) for r in sorted(readers)], relus, shift_exact=False,
                             relu_on_every_path=False, extra_producers=producers[1:]))
    return groups


# ------------------------------------------------------------------------------------------------- CLE
def _producer_range(node: _Node) -> np.ndarray:
    return np.abs(_out_view(node)).reshape(-1, _out_view(node).shape[-1]).max(axis=0)


def _group_producer_range(graph: _Graph, group: _Group) -> np.ndarray:
    """Per-channel largest ``|w|`` over every producer of the group."""
    return np.max([_producer_range(graph.nodes[name]) for name in group.producers], axis=0)


def _consumer_range(graph: _Graph, group: _Group, size: int) -> np.ndarray:
    ranges = np.zeros(size)
    for cname, offset in group.consumers:
        part = np.abs(_in_slice(graph.nodes[cname], offset, size))
        ranges = np.maximum(ranges, part.transpose(2, 0, 1, 3).reshape(size, -1).max(axis=1))
    return ranges


def _ensure_caps(node: _Node) -> np.ndarray:
    if node.caps is None:
        if node.kind == "ChannelReLU":
            node.caps = np.asarray(node.weights[0], np.float64).copy()
        else:
            node.caps = np.full(node.channels, float(node.config["max_value"]))
        node.base_caps = node.caps.copy()
    return node.caps


def _min_scales(graph: _Graph, group: _Group, size: int) -> np.ndarray:
    """Lower bound of ``s_i``: a capped channel's cap may grow to at most ``MAX_CAP_GROWTH`` times its original."""
    low = np.full(size, SCALE_LIMITS[0])
    for rname, offset in group.relus:
        relu = graph.nodes[rname]
        if _relu_kind(relu, "clip") == "capped":
            caps = _ensure_caps(relu)[offset:offset + size]
            low = np.maximum(low, caps / (relu.base_caps[offset:offset + size] * graph.cap_growth))
    return low


def equalize_group(graph: _Graph, group: _Group) -> float:
    """One CLE step on ``group``; the largest ``|log s_i|`` applied (0 when already equalized)."""
    r1 = _group_producer_range(graph, group)
    r2 = _consumer_range(graph, group, r1.size)
    scale = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    if group.bounds is not None:  # headroom: the ReLU6 stay, the total scale stays within the calibration bounds
        total = group.total if group.total is not None else np.ones_like(r1)
        low, high = group.bounds
        scale[ok] = np.clip(np.sqrt(r1[ok] / r2[ok]), low[ok] / total[ok], high[ok] / total[ok])
        group.total = total * scale
    else:
        scale[ok] = np.clip(np.sqrt(r1[ok] / r2[ok]), _min_scales(graph, group, r1.size)[ok], SCALE_LIMITS[1])
    for name in group.producers:
        _scale_outputs(graph.nodes[name], 1.0 / scale)
    for cname, offset in group.consumers:
        _scale_inputs(graph.nodes[cname], offset, scale)
    if group.bounds is not None:
        return float(np.max(np.abs(np.log(scale)))) if scale.size else 0.0
    for rname, offset in group.relus:
        relu = graph.nodes[rname]
        if _relu_kind(relu, "clip") == "capped":
            caps = _ensure_caps(relu)
            caps[offset:offset + scale.size] /= scale
    return float(np.max(np.abs(np.log(scale)))) if scale.size else 0.0


def equalize(graph: _Graph, groups: list[_Group]) -> int:
    """Iterate CLE over all groups until the scales converge; the number of sweeps."""
    for sweep in range(1, CLE_MAX_ITERATIONS + 1):
        change = max((equalize_group(graph, g) for g in groups), default=0.0)
        if change < CLE_TOLERANCE:
            return sweep
    return CLE_MAX_ITERATIONS


# ----------------------------------------------------------------------------------------------- rebuild
def _new_layer(node: _Node) -> keras.layers.Layer:
    if node.caps is not None and node.kind != "ChannelReLU":
        return ChannelReLU(node.channels, name=node.name)
    config = dict(node.config)
    return type(node.layer).from_config(config)


def _layer_weights(node: _Node) -> list[np.ndarray]:
    if node.caps is not None:
        return [node.caps.astype(np.float32)]
    return [w.astype(np.float32) if np.issubdtype(w.dtype, np.floating) else w for w in node.weights]


def rebuild(graph: _Graph, calls: dict[str, Any]) -> keras.Model:
    """A new functional model from the IR: fresh layers, the IR's weights, removed nodes bypassed."""
    tensors: dict[str, Any] = {}
    for node in graph.nodes.values():
        if node.removed:
            continue
        if isinstance(node.layer, keras.layers.InputLayer):
            cfg = node.config
            tensors[node.name] = keras.Input(batch_shape=cfg["batch_shape"], dtype=cfg.get("dtype"), name=node.name)
            continue
        call = calls[node.name]

        def swap(value: Any) -> Any:
            if isinstance(value, keras.KerasTensor):
                return tensors[graph.resolve(_producer(value))]
            return value

        args = keras.tree.map_structure(swap, call.arguments.args)
        kwargs = keras.tree.map_structure(swap, call.arguments.kwargs)
        layer = _new_layer(node)
        tensors[node.name] = layer(*args, **kwargs)
        weights = _layer_weights(node)
        if weights:
            layer.set_weights(weights)
    inputs = [tensors[_producer(t)] for t in graph.model.inputs]
    outputs = [tensors[graph.resolve(name)] for name in graph.outputs]
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, outputs[0] if len(outputs) == 1 else outputs,
                       name=graph.model.name)


# ------------------------------------------------------------------------------------------ bias absorb
def channel_statistics(graph: _Graph, calls: dict[str, Any], names: list[str], calibration: np.ndarray,
                       batch_size: int = 8) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Per-channel ``(min, max, mean, count)`` of each named layer's output over all calibration pixels (current
    IR's model; ``count``: values per channel)."""
    model = rebuild(graph, calls)
    probe = keras.Model(model.inputs[0], [model.get_layer(n).output for n in names])
    minima: dict[str, np.ndarray] = {}
    maxima: dict[str, np.ndarray] = {}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for start in range(0, len(calibration), batch_size):
        outs = probe(np.asarray(calibration[start:start + batch_size], np.float32), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for name, out in zip(names, outs):
            flat = np.asarray(out, np.float64).reshape(-1, np.shape(out)[-1])
            minima[name] = np.minimum(minima.get(name, np.inf), flat.min(axis=0))
            maxima[name] = np.maximum(maxima.get(name, -np.inf), flat.max(axis=0))
            sums[name] = sums.get(name, 0.0) + flat.sum(axis=0)
            counts[name] = counts.get(name, 0) + flat.shape[0]
    return {name: (minima[name], maxima[name], sums[name] / counts[name], counts[name]) for name in names}


def _pre_activation_floor(graph: _Graph, calls: dict[str, Any], names: list[str],
                          calibration: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel shift each named producer's output can safely lose: ``min - ABSORB_MARGIN * (mean - min)``.

    ``min`` and ``mean`` are over all calibration pixels, computed on the current IR's model.
    """
    stats = channel_statistics(graph, calls, names, calibration)
    return {name: low - ABSORB_MARGIN * (mean - low) for name, (low, _, mean, _) in stats.items()}


def _consumer_bias_delta(node: _Node, offset: int, shift: np.ndarray) -> np.ndarray:
    """How much the consumer's bias grows when its input channels ``[offset, offset+len)`` grow by ``shift``."""
    if node.kind == "DepthwiseConv2D":
        full = np.zeros(_kernel(node).shape[2])
        full[offset:offset + shift.size] = shift
        return np.einsum("hwcm,c->cm", _kernel(node), full).reshape(-1)
    return np.einsum("hwio,i->o", _in_slice(node, offset, shift.size), shift)


def absorb_biases(graph: _Graph, calls: dict[str, Any], groups: list[_Group], calibration: np.ndarray) -> int:
    """Nagel §4.2 on the groups where it is exact (see module docstring); the number of channels absorbed."""
    candidates = [g for g in groups if g.shift_exact and g.relu_on_every_path and g.relus and g.bounds is None]
    if not candidates:
        return 0
    floors = _pre_activation_floor(graph, calls, [g.producer for g in candidates], calibration)
    absorbed = 0
    for group in candidates:
        shift = np.maximum(floors[group.producer], 0.0)
        for rname, offset in group.relus:
            relu = graph.nodes[rname]
            if relu.caps is not None or _relu_kind(relu, "clip") == "capped":
                shift = np.minimum(shift, _ensure_caps(relu)[offset:offset + shift.size])
        if not np.any(shift > 0):
            continue
        producer = graph.nodes[group.producer]
        _bias(producer)
        producer.weights[1] = producer.weights[1] - shift
        for rname, offset in group.relus:
            relu = graph.nodes[rname]
            if relu.caps is not None:
                relu.caps[offset:offset + shift.size] -= shift
        for cname, offset in group.consumers:
            consumer = graph.nodes[cname]
            delta = _consumer_bias_delta(consumer, offset, shift)
            consumer.weights[1] = _bias(consumer) + delta
        absorbed += int(np.count_nonzero(shift > 0))
    return absorbed


def headroom_bounds(graph: _Graph, calls: dict[str, Any], groups: list[_Group],
                    calibration: np.ndarray | None) -> list[_Group]:
    """``relu6="headroom"``: the groups that pass a ReLU6 get per-channel bounds of their total scale from the
    calibration maxima of their producer (module docstring); without calibration images they are dropped."""
    capped = [g for g in groups if any(_relu_kind(graph.nodes[r], "headroom") == "capped" for r, _ in g.relus)]
    if not capped:
        return groups
    if calibration is None:
        return [g for g in groups if g not in capped]
    probes = {id(g): _headroom_probes(graph, g) for g in capped}
    stats = channel_statistics(graph, calls, sorted({p for names in probes.values() for p in names}), calibration)
    for group in capped:
        peak = np.max([np.maximum(stats[p][1], 0.0) for p in probes[id(group)]], axis=0) * (1.0 + HEADROOM_MARGIN)
        cap = min(_cap_of(graph.nodes[r]) for r, _ in group.relus if _relu_kind(graph.nodes[r], "headroom")
                  == "capped")
        low = np.clip(peak / cap, SCALE_LIMITS[0], 1.0)
        high = np.where(peak <= cap, SCALE_LIMITS[1], 1.0)
        group.bounds = (low, high)
    return groups


def _headroom_probes(graph: _Graph, group: _Group) -> list[str]:
    """The layers whose calibration maxima bound a group's scales: the producer of a plain group; the input of
    every capped ReLU of a residual stream (an Add of several producers, whose sum the ReLU6 clips)."""
    if not group.extra_producers:
        return [group.producer]
    return [graph.inputs_of(graph.nodes[r])[0] for r, _ in group.relus
            if _relu_kind(graph.nodes[r], "headroom") == "capped"]


def _cap_of(relu: _Node) -> float:
    """The cap of a bounded ReLU (its smallest, for a per-channel one)."""
    if relu.kind == "ChannelReLU":
        return float(np.min(relu.weights[0]))
    return float(relu.config["max_value"])


# -------------------------------------------------------------------------------------------------- API
def _validate_calibration(calibration: np.ndarray | None, model: keras.Model) -> np.ndarray | None:
    if calibration is None:
        return None
    array = np.asarray(calibration, np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    if array.ndim != 4 or tuple(array.shape[1:]) != expected or len(array) == 0:
        dims = ",".join(map(str, expected))
        raise ModelError(f"optimize_for_per_tensor: calibration must be a float32 array [N,{dims}] of preprocessed "
                         f"images; got shape {list(array.shape)}.")
    return array


def _activation_peaks(graph: _Graph, calls: dict[str, Any],
                      calibration: np.ndarray | None) -> dict[str, np.ndarray] | None:
    """Per-channel largest ``|value|`` of every channels-last layer output on the calibration images (None without)."""
    if calibration is None:
        return None
    names = [n.name for n in graph.live() if n.kind != "InputLayer" and n.channels
             and len(calls[n.name].outputs[0].shape) == 4]
    stats = channel_statistics(graph, calls, names, calibration, batch_size=2)
    return {name: np.maximum(np.abs(low), np.abs(high)) for name, (low, high, _, _) in stats.items()}


def _equalization_groups(graph: _Graph, calls: dict[str, Any], calibration: np.ndarray | None, relu6: str,
                         residual: bool) -> tuple[list[_Group], set[int]]:
    """The CLE groups of the current IR (plain, then residual streams) and the ids of the stream groups."""
    groups = find_groups(graph, relu6)
    streams = find_residual_groups(graph, relu6) if residual else []
    groups = groups + streams
    if relu6 == "headroom":
        groups = headroom_bounds(graph, calls, groups, calibration)
    return groups, {id(g) for g in streams}


def optimize_for_per_tensor(model: keras.Model, calibration: np.ndarray | None = None, *,
                            relu6: str = "clip", dead_channels: str = "calibration", dead_inputs: bool = False,
                            residual: bool = False, cap_growth: float = MAX_CAP_GROWTH,
                            split_outliers: bool = False) -> tuple[keras.Model, dict]:
    """A functionally equivalent model whose weights quantize well per-tensor, and a report of what was done.

    Steps (module docstring): BatchNorm folding, constant-channel folding (``dead_channels``: ``"off"``,
    ``"exact"`` weight-dead channels only, ``"calibration"`` also channels dead on the calibration images, and with
    ``dead_inputs`` the consumer weights reading ReLU channels dead on them; see
    :mod:`segzoo.quantization.dead_channels`), cross-layer equalization (``relu6``: ``"clip"``, ``"skip"`` or
    ``"headroom"``, the latter within the calibration images' headroom below each ReLU6 cap; ``"clip"`` raises a
    cap by at most ``cap_growth``; with ``residual``
    also across residual streams, :func:`find_residual_groups`), with ``split_outliers`` outlier channel splitting
    after it (:mod:`segzoo.quantization.outlier_split`),
    bias absorption when ``calibration`` (preprocessed float32 ``[N,H,W,C]``) is given. The input model is not
    modified. Report keys: ``bn_folded``, ``bn_left``, ``cle_groups``, ``cle_pairs``, ``cle_sweeps``,
    ``channel_relus`` (ReLU6 layers replaced by :class:`ChannelReLU`), ``relu6_headroom_pairs`` (pairs equalized
    across a ReLU6 kept as it is), ``residual_streams`` and ``residual_stream_convolutions`` (residual streams
    equalized, convolutions writing into or reading from them), ``biases_absorbed`` (channels),
    ``dead_channels`` (weight-dead / calibration-dead channels folded, per layer), ``outlier_splits`` (layer ->
    channels added by splitting its outlier channels), ``relu6``, ``exact`` (False
    once biases were absorbed or calibration-dead channels folded: exact on the calibration images only),
    ``notes``.
    """
    from segzoo.quantization.dead_channels import fold_dead_channels
    from segzoo.quantization.outlier_split import has_outliers, split_outliers as split

    if relu6 not in RELU6_MODES:
        raise ModelError(f"relu6={relu6!r} is not supported; choose one of {', '.join(RELU6_MODES)}.")
    if dead_channels not in DEAD_CHANNEL_MODES:
        raise ModelError(f"dead_channels={dead_channels!r} is not supported; choose one of "
                         f"{', '.join(DEAD_CHANNEL_MODES)}.")
    if not cap_growth >= 1.0:
        raise ModelError(f"cap_growth={cap_growth!r}: a ReLU6 cap may grow by a factor of at least 1.0.")
    calibration = _validate_calibration(calibration, model)
    graph, calls = _read_graph(model)
    graph.cap_growth = float(cap_growth)
    folded, left = fold_batch_norms(graph)
    dead = None
    if dead_channels != "off":
        dead = fold_dead_channels(graph, calls, calibration if dead_channels == "calibration" else None,
                                  dead_inputs=dead_inputs).as_dict()
    groups, stream_ids = _equalization_groups(graph, calls, calibration, relu6, residual)
    sweeps = equalize(graph, groups) if groups else 0
    splits = split(graph, new_caps=relu6 == "clip", peaks=_activation_peaks(graph, calls, calibration)) \
        if split_outliers and has_outliers(graph) else {}  # the peaks cost a probe of every layer
    if splits:  # channel counts and concatenation offsets changed: the groups again, for bias absorption
        groups, stream_ids = _equalization_groups(graph, calls, calibration, relu6, residual)
    absorbed = absorb_biases(graph, calls, groups, calibration) if calibration is not None else 0
    optimized = rebuild(graph, calls)
    report = {
        "bn_folded": folded,
        "bn_left": left,
        "cle_groups": len(groups),
        "cle_pairs": sum(len(g.consumers) for g in groups),
        "cle_sweeps": sweeps,
        "channel_relus": sum(1 for n in graph.live() if n.caps is not None and n.kind != "ChannelReLU"),
        "biases_absorbed": absorbed,
        "dead_channels": dead,
        "outlier_splits": splits,
        "relu6": relu6,
        "cap_growth": float(cap_growth),
        "relu6_headroom_pairs": sum(len(g.consumers) for g in groups if g.bounds is not None),
        "residual_streams": sum(1 for g in groups if id(g) in stream_ids),
        "residual_stream_convolutions": sum(len(g.producers) + len(g.consumers) for g in groups
                                            if id(g) in stream_ids),
        "exact": absorbed == 0 and not (dead or {}).get("calibration_dead")
        and not (dead or {}).get("dead_inputs") and not any(g.bounds is not None for g in groups),
        "notes": ("activation ranges are the converter's min/max over the calibration set (no clipping); "
                  + ("bias absorption from calibration statistics (min - margin * (mean - min)): exact on the "
                     "calibration images, statistically exact elsewhere" if calibration is not None
                     else "no calibration data: bias absorption skipped, the model is exact for every input")),
    }
    log.info("optimize_for_per_tensor %s: %d BN folded, %d CLE groups (%d pairs, %d sweeps), %d ChannelReLU, "
             "%d bias channels absorbed", model.name, folded, len(groups), report["cle_pairs"], sweeps,
             report["channel_relus"], absorbed)
    return optimized, report
