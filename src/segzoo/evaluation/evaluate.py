"""Evaluate a model (any ``Runner``) on a list of image+mask samples: one dataset-level confusion matrix.

Decoding, class mapping and preprocessing of the next images, and the scoring of the previous outputs
(restoring them onto the mask, argmax, confusion counts), run in a thread pool with a bounded lookahead while
the model runs (OpenCV, PIL, NumPy and the interpreter release the GIL), so the loop costs about the inference.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from tqdm import tqdm

from segzoo.data.loader import ON_BAD_SAMPLE, load_pair, skipped_entry
from segzoo.errors import ConfigError, DataError
from segzoo.evaluation.metrics import confusion_matrix, metrics_from_confusion
from segzoo.preprocess import Placement, Preprocessing, crop_to_placement, resize_mask, to_model_input
from segzoo.runners import Runner, check_output_classes, describe, identity_placement, to_labels

if TYPE_CHECKING:
    from segzoo.data.layouts import Sample
    from segzoo.data.masks import ClassMapper

log = logging.getLogger(__name__)

RESOLUTIONS = ("original", "input")
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class EvaluationResult:
    """Dataset-level confusion matrix, metrics from it, and throughput."""

    confusion: np.ndarray
    metrics: dict
    num_images: int
    seconds: float
    images_per_second: float
    model: dict = field(default_factory=dict)
    resolution: str = "original"
    skipped: list[dict] = field(default_factory=list)
    """Samples left out (``on_bad_sample="skip"``) because they could not be read: item, mask, reason."""


@dataclass(frozen=True)
class _Prepared:
    """One sample ready for the model: input, how to map the output back, and the mask to compare with."""

    x: np.ndarray
    placement: Placement
    target: np.ndarray


def _prepare(sample: Sample, *, mapper: ClassMapper, pp: Preprocessing, input_hw: tuple[int, int],
             ignore_index: int, resolution: str) -> _Prepared | dict:
    """Load, map and preprocess one sample (runs in a worker thread); an unreadable sample gives its skip entry."""
    try:
        image, mask = load_pair(sample, mapper)
    except DataError as exc:
        return skipped_entry(sample, exc)
    x, placement = to_model_input(image, input_hw, pp)
    if resolution == "input":
        return _Prepared(x, identity_placement(input_hw), resize_mask(mask, input_hw, pp, ignore_index))
    return _Prepared(x, placement, crop_to_placement(mask, placement))


def _score(item: _Prepared, output: np.ndarray, *, output_kind: str, num_classes: int,
           ignore_index: int) -> np.ndarray:
    """Confusion matrix of one model output against its mask (runs in a worker thread)."""
    return confusion_matrix(item.target, to_labels(output, output_kind, item.placement), num_classes, ignore_index)


def prefetched(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], lookahead: int) -> Iterator[R]:
    """``map(fn, items)`` computed in ``pool`` at most ``lookahead`` items ahead of the consumer, in order."""
    source = iter(items)
    pending: deque[Future[R]] = deque(pool.submit(fn, item) for item in islice(source, max(1, lookahead)))
    while pending:
        future = pending.popleft()
        for item in islice(source, 1):
            pending.append(pool.submit(fn, item))
        yield future.result()


def _batches(items: Iterator[T], size: int) -> Iterator[list[T]]:
    while batch := list(islice(items, max(1, size))):
        yield batch


def _check_setup(runner: Runner, mapper: ClassMapper, pp: Preprocessing, num_classes: int, resolution: str,
                 on_bad_sample: str) -> None:
    if on_bad_sample not in ON_BAD_SAMPLE:
        raise ConfigError(f"on_bad_sample must be one of {list(ON_BAD_SAMPLE)}, got {on_bad_sample!r}")
    if resolution not in RESOLUTIONS:
        raise ConfigError(f"evaluation resolution must be one of {list(RESOLUTIONS)}, got {resolution!r}")
    if runner.channels != pp.channels:
        raise ConfigError(f"{runner.path.name} expects {runner.channels} input channels but color_mode "
                          f"{pp.color_mode!r} gives {pp.channels}")
    if mapper.num_classes != num_classes:
        raise ConfigError(f"{num_classes} class names but the class mapper has {mapper.num_classes} classes")


def _usable(items: Iterator[_Prepared | dict], on_bad_sample: str, skipped: list[dict]) -> Iterator[_Prepared]:
    """The prepared samples; an unreadable one stops the evaluation (``"error"``) or is listed in ``skipped``."""
    for item in items:
        if isinstance(item, _Prepared):
            yield item
        elif on_bad_sample == "skip":
            log.warning("Skipped %s (on_bad_sample=skip): %s", item["item"], item["reason"])
            skipped.append(item)
        else:
            raise DataError(item["reason"])


def evaluate(runner: Runner, samples: list[Sample], mapper: ClassMapper, pp: Preprocessing, class_names: list[str],
             *, ignore_index: int = 255, resolution: str = "original", prefetch: int = 4, workers: int = 2,
             batch_size: int = 1, desc: str = "Evaluating", on_bad_sample: str = "error") -> EvaluationResult:
    """Run ``runner`` over ``samples`` and compute metrics from the dataset-level confusion matrix.

    ``resolution="original"`` compares predictions mapped back onto each original mask (scores bilinearly,
    label maps nearest); ``"input"`` compares at the model input size against nearest-resized masks.
    ``batch_size`` images go into one ``predict`` call (useful for Keras; TFLite runs them one by one).
    A sample that cannot be read stops the evaluation with a DataError naming it, or with
    ``on_bad_sample="skip"`` is left out and listed in the result's ``skipped`` (the metrics cover the others).
    """
    if not samples:
        raise DataError("no samples to evaluate: the dataset is empty")
    num_classes = len(class_names)
    _check_setup(runner, mapper, pp, num_classes, resolution, on_bad_sample)
    prepare = partial(_prepare, mapper=mapper, pp=pp, input_hw=runner.input_hw, ignore_index=ignore_index,
                      resolution=resolution)
    score = partial(_score, output_kind=runner.output_kind, num_classes=num_classes, ignore_index=ignore_index)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    skipped: list[dict] = []
    start = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="segzoo-eval")
    try:
        with tqdm(total=len(samples), desc=desc, unit="img") as bar:
            scoring: deque[Future[np.ndarray]] = deque()
            usable = _usable(prefetched(pool, prepare, samples, prefetch), on_bad_sample, skipped)
            for batch in _batches(usable, batch_size):
                outputs = runner.predict(np.stack([item.x for item in batch]))
                for item, output in zip(batch, outputs):
                    check_output_classes(runner, output, num_classes)
                    scoring.append(pool.submit(score, item, output))
                while len(scoring) > max(1, prefetch) or (scoring and scoring[0].done()):
                    cm += scoring.popleft().result()
                    bar.update()
            while scoring:
                cm += scoring.popleft().result()
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - start
    evaluated = len(samples) - len(skipped)
    if not evaluated:
        raise DataError(f"all {len(samples)} samples are unusable; first reason: {skipped[0]['reason']}")
    result = EvaluationResult(confusion=cm, metrics=metrics_from_confusion(cm, class_names),
                              num_images=evaluated, seconds=seconds, images_per_second=evaluated / seconds,
                              model=describe(runner), resolution=resolution, skipped=skipped)
    miou = result.metrics["miou"]
    log.info("%s on %d images: mIoU %s, %.2f images/s", runner.path.name, evaluated,
             "n/a" if miou is None else f"{miou:.4f}", result.images_per_second)
    return result
