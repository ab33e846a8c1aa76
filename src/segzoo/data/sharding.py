"""Which sample indices each input pipeline reads: epoch-seeded orders cut into global batches, one contiguous
part of every global batch per pipeline.

The order of an epoch is a pure function of ``(seed, epoch)``, so a run resumed at epoch k reads what the
uninterrupted run read, and every worker computes the same order without talking to the others. Each global batch
of ``B`` indices is split into ``count`` equal parts; pipeline ``index`` keeps part ``index``. Its replicas then take
consecutive per-replica batches of that part, which is how ``tf.distribute`` orders replicas (worker by worker), so
the replicas of all workers together see every index of the global batch exactly once.

Sharding happens on indices, before any file is read: no worker decodes or augments a sample it does not train on.
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

PAD_INDEX = -1
"""Index of a padding sample (validation only): an empty image whose mask is all ``ignore_index``."""


@dataclass(frozen=True)
class Shard:
    """Pipeline ``index`` of ``count``: it reads part ``index`` of every global batch."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} outside 0..{self.count - 1}")

    def part(self, global_batch: int) -> int:
        """How many indices of each global batch this pipeline reads."""
        if global_batch % self.count:
            raise ValueError(f"a global batch of {global_batch} does not split into {self.count} equal parts")
        return global_batch // self.count


def epoch_order(num_samples: int, seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """The shuffled sample indices of ``epoch`` (int64), the same on every worker and after a resume."""
    seeds = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_shuffle(tf.range(num_samples, dtype=tf.int64), seed=seeds)


def batches_per_pass(num_samples: int, global_batch: int) -> int:
    """Full global batches in one pass over the data (one partial batch when the set is smaller than a batch)."""
    return max(1, num_samples // global_batch)


def training_indices(num_samples: int, global_batch: int, seed: int, shard: Shard, *, start_batch: int = 0
                     ) -> tf.data.Dataset:
    """Endless ``(epoch, index)`` pairs of this pipeline, from global batch ``start_batch`` of the stream on.

    Pass ``p`` of the data is shuffled with ``(seed, p)`` and cut into :func:`batches_per_pass` global batches (the
    remainder is dropped, as ``drop_remainder`` would); the stream is pass 0, pass 1, ... Skipping to
    ``start_batch`` only skips indices (nothing is read).
    """
    if shard.count > 1 and num_samples < global_batch:
        raise ValueError(f"{num_samples} samples do not fill one global batch of {global_batch} for "
                         f"{shard.count} input pipelines")
    per_pass = batches_per_pass(num_samples, global_batch)
    used = min(num_samples, per_pass * global_batch)
    batch_length = used // per_pass
    first_pass, offset = divmod(start_batch, per_pass)

    def one_pass(epoch: tf.Tensor) -> tf.data.Dataset:
        order = epoch_order(num_samples, seed, epoch)[:used]
        return tf.data.Dataset.from_tensor_slices((tf.fill([used], epoch), order))

    pairs = tf.data.Dataset.range(first_pass, 2 ** 62).flat_map(one_pass).skip(offset * batch_length)
    if shard.count == 1:
        return pairs
    part = shard.part(global_batch)
    low = shard.index * part
    return pairs.batch(global_batch, drop_remainder=True).map(
        lambda epochs, order: (epochs[low:low + part], order[low:low + part])).unbatch()


def validation_indices(num_samples: int, global_batch: int, shard: Shard, *, pad: bool) -> tf.data.Dataset:
    """The indices ``0..n-1`` of this pipeline, in order; with ``pad``, padded with :data:`PAD_INDEX` up to a whole
    number of global batches so that every replica runs the same number of steps."""
    indices = tf.data.Dataset.range(num_samples)
    if not pad:
        if shard.count != 1:
            raise ValueError("several input pipelines need padded validation batches")
        return indices
    padded = -(-num_samples // global_batch) * global_batch
    indices = indices.concatenate(tf.data.Dataset.from_tensors(tf.constant(PAD_INDEX, tf.int64))
                                  .repeat(padded - num_samples))
    if shard.count == 1:
        return indices
    part = shard.part(global_batch)
    low = shard.index * part
    return indices.batch(global_batch).map(lambda batch: batch[low:low + part]).unbatch()


def validation_steps(num_samples: int, global_batch: int) -> int:
    """Steps of one validation pass (the last batch may be partial or padded)."""
    return -(-num_samples // global_batch)
