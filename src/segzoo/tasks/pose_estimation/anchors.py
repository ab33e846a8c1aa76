"""SSD anchors as MediaPipe's ``SsdAnchorsCalculator`` generates them (non-multiscale path).

Layers that share a stride are merged: their anchors are interleaved per cell, in layer order. With
``interpolated_scale_aspect_ratio`` > 0 each layer adds one anchor of scale ``sqrt(s_i * s_{i+1})`` after its
aspect-ratio anchors. Anchors are ``[x_center, y_center, w, h]`` in coordinates normalized to the input;
``fixed_anchor_size`` sets every w and h to 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SsdAnchorOptions:
    """The options of ``SsdAnchorsCalculator`` (defaults: MediaPipe's pose_detection graph, 2254 anchors)."""

    input_height: int = 224
    input_width: int = 224
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    anchor_offset_x: float = 0.5
    anchor_offset_y: float = 0.5
    strides: tuple[int, ...] = (8, 16, 32, 32, 32)
    aspect_ratios: tuple[float, ...] = (1.0,)
    interpolated_scale_aspect_ratio: float = 1.0
    reduce_boxes_in_lowest_layer: bool = False
    fixed_anchor_size: bool = True

    def to_dict(self) -> dict:
        """Plain dict (board configuration, reports)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def layer_scale(options: SsdAnchorOptions, index: int) -> float:
    """Scale of layer ``index``: linear from min to max scale over the layers (their mean for one layer)."""
    n = len(options.strides)
    if n == 1:
        return (options.min_scale + options.max_scale) * 0.5
    return options.min_scale + (options.max_scale - options.min_scale) * index / (n - 1.0)


def _cell_anchor_sizes(options: SsdAnchorOptions, first: int, last: int) -> list[tuple[float, float]]:
    """(w, h) of the anchors of one cell for the merged layers ``first`` .. ``last - 1``."""
    ratios: list[float] = []
    scales: list[float] = []
    for layer in range(first, last):
        scale = layer_scale(options, layer)
        if layer == 0 and options.reduce_boxes_in_lowest_layer:
            ratios += [1.0, 2.0, 0.5]
            scales += [0.1, scale, scale]
            continue
        ratios += list(options.aspect_ratios)
        scales += [scale] * len(options.aspect_ratios)
        if options.interpolated_scale_aspect_ratio > 0.0:
            following = 1.0 if layer == len(options.strides) - 1 else layer_scale(options, layer + 1)
            scales.append(math.sqrt(scale * following))
            ratios.append(options.interpolated_scale_aspect_ratio)
    return [(s * math.sqrt(r), s / math.sqrt(r)) for s, r in zip(scales, ratios)]


def ssd_anchors(options: SsdAnchorOptions = SsdAnchorOptions()) -> np.ndarray:
    """float32 ``[N, 4]`` anchors ``(x_center, y_center, w, h)``, in MediaPipe's order:
    layer groups by stride, then rows, columns, and the anchors of a cell."""
    rows: list[np.ndarray] = []
    layer = 0
    while layer < len(options.strides):
        last = layer
        while last < len(options.strides) and options.strides[last] == options.strides[layer]:
            last += 1
        sizes = _cell_anchor_sizes(options, layer, last)
        stride = options.strides[layer]
        fh = math.ceil(options.input_height / stride)
        fw = math.ceil(options.input_width / stride)
        ys, xs, ks = np.meshgrid(np.arange(fh), np.arange(fw), np.arange(len(sizes)), indexing="ij")
        block = np.empty((ys.size, 4), dtype=np.float32)
        block[:, 0] = (xs.ravel() + options.anchor_offset_x) / fw
        block[:, 1] = (ys.ravel() + options.anchor_offset_y) / fh
        if options.fixed_anchor_size:
            block[:, 2:] = 1.0
        else:
            wh = np.asarray(sizes, dtype=np.float32)
            block[:, 2:] = wh[ks.ravel()]
        rows.append(block)
        layer = last
    return np.concatenate(rows)
