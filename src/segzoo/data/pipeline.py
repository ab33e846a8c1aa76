"""tf.data pipeline: decode, map and resize samples, cache, shuffle, augment, rescale, batch.

Decoding, class mapping and resizing run in NumPy (``segzoo.data.loader`` and ``segzoo.preprocess``,
the same code as evaluation and prediction) inside ``tf.numpy_function``; the rescaling that follows
augmentation is done in TensorFlow and matches ``preprocess.rescale`` on uint8 pixels.

Training reads :func:`training_dataset` and :func:`validation_dataset`: one input pipeline per worker, sharded on
sample indices (``segzoo.data.sharding``) so that the replicas of all workers see each sample of an epoch once.
TensorFlow's own auto-sharding is switched off explicitly on them (:func:`sharded_options`): its ``DATA`` policy
would make every worker decode and augment every sample and then drop most of them, and ``FILE`` has no files
to split (the source is a range of indices).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import tensorflow as tf

from segzoo.data.layouts import Sample
from segzoo.data.loader import load_pair
from segzoo.data.masks import ClassMapper
from segzoo.data.sharding import PAD_INDEX, Shard, training_indices, validation_indices
from segzoo.errors import DataError, SegzooError
from segzoo.preprocess import Preprocessing, convert_color, resize_image, resize_mask


def _loader(samples: list[Sample], mapper: ClassMapper, input_hw: tuple[int, int], pp: Preprocessing,
            cache: bool) -> Callable[[np.int64], tuple[np.ndarray, np.ndarray]]:
    """NumPy function: sample index -> (resized RGB uint8 image, resized uint8 mask), memoized if ``cache``.

    :data:`~segzoo.data.sharding.PAD_INDEX` gives a padding sample: a black image whose mask is all ignored.

    The memo is a plain dict rather than ``Dataset.cache()``: that one can finalize a partial cache
    after a failed epoch (silently dropping samples) and discards partial reads such as ``take(n)``.
    """
    memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    padding = (np.zeros((*input_hw, 3), np.uint8), np.full(input_hw, mapper.ignore_index, np.uint8))

    def load(index: np.int64) -> tuple[np.ndarray, np.ndarray]:
        key = int(index)
        if key == PAD_INDEX:
            return padding
        if key in memo:
            return memo[key]
        sample = samples[key]
        try:
            image, mask = load_pair(sample, mapper)
            resized, _ = resize_image(image, input_hw, pp)
            pair = resized, resize_mask(mask, input_hw, pp, mapper.ignore_index)
        except SegzooError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure must name the sample's files
            raise DataError(f"{sample.image_path} / {sample.mask_path}: cannot load sample ({exc})") from exc
        if cache:
            memo[key] = pair
        return pair

    return load


def _gray(pixels: tf.Tensor) -> tf.Tensor:
    """RGB -> 1-channel gray with ``preprocess.convert_color`` (OpenCV's exact integer rounding)."""
    gray = tf.numpy_function(lambda rgb: convert_color(rgb.astype(np.uint8), "grayscale"),
                             [pixels], tf.uint8, stateful=False)
    return tf.ensure_shape(tf.cast(gray, tf.float32), pixels.shape[:-1] + [1])


def to_model_values(image: tf.Tensor, pp: Preprocessing) -> tf.Tensor:
    """RGB pixels (float 0..255, HxWx3) to model input, as ``preprocess.rescale`` does on uint8.

    Pixels are rounded to integers first (augmented images are not), then converted to the colour mode.
    """
    pixels = tf.clip_by_value(tf.round(tf.cast(image, tf.float32)), 0.0, 255.0)
    if pp.color_mode == "bgr":
        pixels = tf.reverse(pixels, axis=[-1])
    elif pp.color_mode == "grayscale":
        pixels = _gray(pixels)
    return pixels * tf.constant(pp.scale, tf.float32) + tf.constant(pp.offset, tf.float32)


def _accepts_seed(fn: Callable) -> bool:
    try:
        return "seed" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _augmented(ds: tf.data.Dataset, augment: Callable, seed: int) -> tf.data.Dataset:
    """Apply ``augment`` to (float image, mask); per-element stateless seeds when it takes ``seed=``."""
    if not _accepts_seed(augment):
        return ds.map(lambda image, mask: augment(tf.cast(image, tf.float32), mask),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    return tf.data.Dataset.zip((ds, seeds)).map(
        lambda pair, element_seed: augment(tf.cast(pair[0], tf.float32), pair[1], seed=element_seed),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def make_dataset(samples: list[Sample], mapper: ClassMapper, input_hw: tuple[int, int], pp: Preprocessing,
                 batch_size: int, *, shuffle: bool = False, augment: Callable | None = None, seed: int = 0,
                 cache: bool = True, drop_remainder: bool = False,
                 targets: Mapping[str, Callable] | None = None) -> tf.data.Dataset:
    """Batches of (images float32 [B, H, W, C] rescaled per ``pp``, masks int32 [B, H, W]).

    ``cache`` keeps the decoded, resized uint8 samples in memory (before augmentation). ``shuffle``
    reshuffles every epoch, repeatably for a ``seed``. ``augment`` gets 0..255 float images. With ``targets``
    (name -> function of the int32 label map), the second element is a dict: ``{"labels": masks, name: ...}``.
    """
    decode = _decoder(samples, mapper, input_hw, pp, cache)
    ds = tf.data.Dataset.range(len(samples))
    if shuffle:
        ds = ds.shuffle(len(samples), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        ds = _augmented(ds, augment, seed)
    ds = ds.map(lambda image, mask: (to_model_values(image, pp), tf.cast(mask, tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _with_targets(ds, targets)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)


def sharded_options() -> tf.data.Options:
    """Options of a dataset that is already sharded by index: TensorFlow's auto-sharding off, deterministic order."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    options.deterministic = True
    return options


def _with_targets(ds: tf.data.Dataset, targets: Mapping[str, Callable] | None) -> tf.data.Dataset:
    if not targets:
        return ds
    return ds.map(lambda x, labels, *rest: (x, {"labels": labels, **{k: fn(labels) for k, fn in targets.items()}},
                                            *rest), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _decoder(samples: list[Sample], mapper: ClassMapper, input_hw: tuple[int, int], pp: Preprocessing,
             cache: bool) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    if not samples:
        raise DataError("no samples to build a dataset from")
    missing = [s.id for s in samples if s.mask_path is None]
    if missing:
        raise DataError(f"{len(missing)} sample(s) have no mask (e.g. {missing[0]}); "
                        "training and evaluation need masks")
    height, width = (int(v) for v in input_hw)
    load = _loader(samples, mapper, (height, width), pp, cache)

    def decode(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, mask = tf.numpy_function(load, [index], [tf.uint8, tf.uint8], stateful=False)
        return tf.ensure_shape(image, [height, width, 3]), tf.ensure_shape(mask, [height, width])

    return decode


def element_seed(seed: int, epoch: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """The augmentation seed of sample ``index`` in ``epoch``: the same whichever worker reads it, and after a resume."""
    base = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(index, tf.int64))


def training_dataset(samples: list[Sample], mapper: ClassMapper, input_hw: tuple[int, int], pp: Preprocessing, *,
                     global_batch: int, replica_batch: int | None = None, shard: Shard = Shard(), seed: int = 0,
                     augment: Callable | None = None, cache: bool = True, start_batch: int = 0,
                     targets: Mapping[str, Callable] | None = None) -> tf.data.Dataset:
    """Endless per-replica training batches of this input pipeline, epoch after epoch.

    Each pass over the data is shuffled by ``(seed, pass)`` and cut into global batches (remainder dropped); this
    pipeline reads its ``shard`` of each and batches it by ``replica_batch`` (default: the global batch).
    ``start_batch`` (global batches already trained) resumes the stream where a run stopped. ``augment`` gets
    0..255 float images and, when it takes ``seed=``, the per-sample seed of :func:`element_seed`.
    """
    decode = _decoder(samples, mapper, input_hw, pp, cache)
    replica_batch = replica_batch or global_batch
    indices = training_indices(len(samples), global_batch, seed, shard, start_batch=start_batch)
    ds = indices.map(lambda epoch, index: (*decode(index), element_seed(seed, epoch, index)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if augment is not None:
        seeded = _accepts_seed(augment)
        ds = ds.map(lambda image, mask, element: augment(tf.cast(image, tf.float32), mask, seed=element) if seeded
                    else augment(tf.cast(image, tf.float32), mask),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda image, mask, *_: (to_model_values(image, pp), tf.cast(mask, tf.int32)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _with_targets(ds, targets)
    full = len(samples) >= global_batch
    return ds.batch(replica_batch, drop_remainder=full).prefetch(tf.data.AUTOTUNE).with_options(sharded_options())


def validation_dataset(samples: list[Sample], mapper: ClassMapper, input_hw: tuple[int, int], pp: Preprocessing, *,
                       global_batch: int, replica_batch: int | None = None, shard: Shard = Shard(),
                       pad: bool = False, cache: bool = True,
                       targets: Mapping[str, Callable] | None = None) -> tf.data.Dataset:
    """One pass of per-replica ``(images, targets, weights)`` batches of this pipeline, in sample order.

    With ``pad`` (several replicas) the set is padded to whole global batches with weight-0 samples whose masks are
    all ignored, so that every replica runs the same steps; they count in no metric.
    """
    decode = _decoder(samples, mapper, input_hw, pp, cache)
    indices = validation_indices(len(samples), global_batch, shard, pad=pad)
    ds = indices.map(lambda index: (*decode(index), tf.cast(tf.not_equal(index, PAD_INDEX), tf.float32)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda image, mask, weight: (to_model_values(image, pp), tf.cast(mask, tf.int32), weight),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = _with_targets(ds, targets)
    return ds.batch(replica_batch or global_batch).prefetch(tf.data.AUTOTUNE).with_options(sharded_options())


@contextmanager
def data_errors() -> Iterator[None]:
    """Re-raise a DataError from inside a pipeline (TensorFlow wraps it in an OpError) as a DataError.

    Wrap the loop that iterates a dataset (``model.fit``, an evaluation loop) to give users the plain
    message that names the bad file instead of a TensorFlow traceback.
    """
    try:
        yield
    except tf.errors.OpError as exc:
        match = re.search(r"\bDataError: (.+)", exc.message)
        if match is None:
            raise
        raise DataError(match.group(1).strip()) from exc
