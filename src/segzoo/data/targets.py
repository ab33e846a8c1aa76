"""Training targets computed from the label map, for families whose losses need more than the labels.

``TARGETS`` maps a target name (a family's ``Family.targets``) to ``"module:function"``, a factory
``(params, ignore_index) -> fn`` where ``fn`` maps one int32 label map ``[H, W]`` (after augmentation) to the
target tensor, inside the tf.data pipeline.

``boundary`` (PIDNet's D head; width ``training.model.boundary_width``): mmsegmentation's ``GenerateEdge`` rule. A
pixel is marked when its label differs from the label of its neighbour below, to its right, below-right or
below-left (the down, left, up-left and up-right pairs of ``GenerateEdge``), neither of the two being
``ignore_index``; the marks are then dilated by a ``width x width`` square (OpenCV ``dilate`` with ``MORPH_RECT`` and
its default anchor ``width // 2``: a mark spreads ``width - 1 - width // 2`` pixels up/left and ``width // 2``
down/right). The result is uint8: 1 on boundaries, 0 elsewhere, ``ignore_index`` where the label is ignored (the
loss leaves those pixels out).
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from segzoo.errors import ConfigError, ModelError
from segzoo.models.base import resolve

TARGETS: MappingProxyType[str, str] = MappingProxyType({
    "boundary": "segzoo.data.targets:boundary_target",
})


def target_function(name: str, params: Any, ignore_index: int) -> Callable:
    """The label map -> target function of target ``name`` for a model with ``params``."""
    if name not in TARGETS:
        raise ModelError(f"unknown training target {name!r}; known: {', '.join(TARGETS) or 'none'}")
    return resolve(TARGETS[name])(params, ignore_index)


def _pairs(labels: Any, ignore_index: int) -> Any:
    """True where a pixel differs from one of its 4 'later' neighbours (no ignored label involved)."""
    import tensorflow as tf

    def differs(a: Any, b: Any) -> Any:
        return tf.logical_and(tf.not_equal(a, b), tf.logical_and(tf.not_equal(a, ignore_index),
                                                                 tf.not_equal(b, ignore_index)))

    # down: pixel (i, j), i >= 1, against (i-1, j); the mark lands on the lower pixel
    down = tf.pad(differs(labels[:, 1:, :], labels[:, :-1, :]), [[0, 0], [1, 0], [0, 0]])
    # left: pixel (i, j), j < w-1, against (i, j+1); the mark lands on the left pixel
    left = tf.pad(differs(labels[:, :, :-1], labels[:, :, 1:]), [[0, 0], [0, 0], [0, 1]])
    # up-left: pixel (i, j) against (i+1, j+1); the mark lands on the upper-left pixel
    up_left = tf.pad(differs(labels[:, :-1, :-1], labels[:, 1:, 1:]), [[0, 0], [0, 1], [0, 1]])
    # up-right: pixel (i, j), j >= 1, against (i+1, j-1); the mark lands on the upper-right pixel
    up_right = tf.pad(differs(labels[:, :-1, 1:], labels[:, 1:, :-1]), [[0, 0], [0, 1], [1, 0]])
    return tf.reduce_any(tf.stack([down, left, up_left, up_right]), axis=0)


def boundary_map(labels: Any, width: int, ignore_index: int = 255) -> Any:
    """Boundary target of ``labels`` (``[H, W]`` or ``[B, H, W]``, any integer type): uint8 1/0, and
    ``ignore_index`` where the label is ignored; same shape as ``labels``. Usable inside ``tf.data`` maps."""
    import tensorflow as tf

    if int(width) < 1:
        raise ConfigError(f"training.model.boundary_width: {width!r} must be at least 1 pixel")
    if not 0 <= int(ignore_index) <= 255:
        raise ConfigError(f"dataset.ignore_index: {ignore_index!r} must be in 0..255 for the uint8 boundary target")
    labels = tf.convert_to_tensor(labels)
    single = labels.shape.rank == 2
    batch = tf.cast(labels[None] if single else labels, tf.int32)
    edges = tf.cast(_pairs(batch, ignore_index), tf.float32)[..., None]
    if width > 1:
        before = width // 2  # OpenCV's default anchor: the kernel covers [x - width//2, x + width - 1 - width//2]
        edges = tf.pad(edges, [[0, 0], [before, width - 1 - before], [before, width - 1 - before], [0, 0]])
        edges = tf.nn.max_pool2d(edges, width, 1, "VALID")
    edges = tf.cast(edges[..., 0] > 0.5, tf.uint8)
    target = tf.where(tf.equal(batch, ignore_index), tf.cast(ignore_index, tf.uint8), edges)
    return target[0] if single else target


def boundary_target(params: Any, ignore_index: int) -> Callable:
    """The ``boundary`` factory: label map -> boundary map of width ``params.boundary_width``."""
    width = int(params.boundary_width)
    return lambda labels: boundary_map(labels, width, ignore_index)
