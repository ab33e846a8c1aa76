"""TFLite's sparse tensor format (``SparsityParameters``) densified in NumPy.

A sparse constant stores only its non-zero values, in the order of a traversal of the (possibly blocked) tensor:

- ``traversal_order``: the order in which the *expanded* dimensions are traversed. The expanded tensor has the
  original dimensions ``0..rank-1`` (each divided by its block size when it is blocked) followed by one dimension
  per block (``rank..rank+len(block_map)-1``).
- ``block_map[k]``: the original dimension that block dimension ``rank + k`` subdivides.
- ``dim_metadata[level]``: how the ``level``-th traversed dimension is stored: ``DENSE`` (every index
  ``0..dense_size-1`` present) or ``SPARSE_CSR`` (``array_segments[p]..array_segments[p+1]`` are the entries under
  parent position ``p``, ``array_indices`` their coordinates in this dimension).

A position counter runs through the levels: a dense level maps parent position ``p`` to ``p * dense_size + i``, a
sparse level maps it to the entry index ``j``; the position after the last level indexes the stored values. The
coordinate of original dimension ``d`` is ``outer * block_size + inner`` when it is blocked, else ``outer``.
Everything below is vectorized level by level (no per-element Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segzoo.errors import ModelError

DENSE = 0
SPARSE_CSR = 1


@dataclass(frozen=True)
class DimensionMetadata:
    """One traversed dimension: ``DENSE`` with ``dense_size``, or ``SPARSE_CSR`` with segments and indices."""

    format: int
    dense_size: int = 0
    segments: np.ndarray | None = None
    indices: np.ndarray | None = None


@dataclass(frozen=True)
class Sparsity:
    """The ``SparsityParameters`` of one tensor."""

    traversal_order: tuple[int, ...]
    block_map: tuple[int, ...]
    dims: tuple[DimensionMetadata, ...]


def _block_sizes(sparsity: Sparsity, rank: int) -> dict[int, int]:
    """Original dimension -> block size, read from the (dense) level that traverses its block dimension."""
    sizes = {}
    for k, dim in enumerate(sparsity.block_map):
        level = sparsity.traversal_order.index(rank + k)
        meta = sparsity.dims[level]
        if meta.format != DENSE or meta.dense_size < 1:
            raise ModelError(f"sparse tensor: block dimension {rank + k} must be stored DENSE with its block size")
        sizes[int(dim)] = int(meta.dense_size)
    return sizes


def _expand(positions: np.ndarray, meta: DimensionMetadata, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One level: (parent index of each child, child coordinate, child position)."""
    if meta.format == DENSE:
        size = int(meta.dense_size)
        parents = np.repeat(np.arange(positions.size), size)
        coords = np.tile(np.arange(size), positions.size)
        return parents, coords, (positions[:, None] * size + np.arange(size)).reshape(-1)
    if meta.format != SPARSE_CSR or meta.segments is None or meta.indices is None:
        raise ModelError(f"{what}: unknown dimension format {meta.format} in its sparsity parameters")
    segments, indices = np.asarray(meta.segments, np.int64), np.asarray(meta.indices, np.int64)
    if positions.size and (positions.max() + 1 >= segments.size):
        raise ModelError(f"{what}: sparsity array_segments too short ({segments.size} entries)")
    starts, ends = segments[positions], segments[positions + 1]
    counts = ends - starts
    if np.any(counts < 0) or (counts.sum() and ends.max() > indices.size):
        raise ModelError(f"{what}: sparsity array_segments are not increasing or exceed array_indices")
    parents = np.repeat(np.arange(positions.size), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    children = np.repeat(starts, counts) + offsets
    return parents, indices[children], children


def densify(values: np.ndarray, shape: tuple[int, ...], sparsity: Sparsity, what: str = "sparse tensor") -> np.ndarray:
    """The dense tensor of ``shape`` whose stored non-zero ``values`` (in traversal order) are described by
    ``sparsity``; ModelError when the parameters do not fit the shape or the number of values."""
    rank = len(shape)
    order = tuple(int(d) for d in sparsity.traversal_order)
    if len(order) != rank + len(sparsity.block_map) or sorted(order) != list(range(len(order))) \
            or len(sparsity.dims) != len(order):
        raise ModelError(f"{what}: sparsity traversal_order {list(order)} does not fit shape {list(shape)} with "
                         f"block_map {list(sparsity.block_map)}")
    blocks = _block_sizes(sparsity, rank)
    positions = np.zeros(1, np.int64)
    coords = np.zeros((len(order), 1), np.int64)
    for level, dim in enumerate(order):
        parents, coord, positions = _expand(positions, sparsity.dims[level], what)
        coords = coords[:, parents]
        coords[dim] = coord
    flat_values = np.asarray(values).reshape(-1)
    if positions.size and positions.max() >= flat_values.size:
        raise ModelError(f"{what}: the sparsity parameters address value {int(positions.max())} but only "
                         f"{flat_values.size} values are stored")
    dense_index = []
    for d in range(rank):
        index = coords[d]
        if d in blocks:
            index = index * blocks[d] + coords[rank + sparsity.block_map.index(d)]
        if index.size and index.max() >= shape[d]:
            raise ModelError(f"{what}: a sparse index exceeds dimension {d} of shape {list(shape)}")
        dense_index.append(index)
    dense = np.zeros(shape, flat_values.dtype)
    dense[tuple(dense_index)] = flat_values[positions]
    return dense
