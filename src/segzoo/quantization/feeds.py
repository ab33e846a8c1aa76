"""Calibration samples fed to a LiteRT interpreter: image batches for a single-input model, or dicts of named inputs
for a model with several (e.g. SAM2's decoder: image embeddings, point coordinates and labels)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Union

import numpy as np

from segzoo.errors import ModelError

Samples = Union[np.ndarray, Sequence[Mapping[str, Any]]]
"""Float32 ``[N, H, W, C]`` images for the single input, or one dict of named inputs per sample."""


def feeds(interpreter: Any, samples: Iterable[Any]) -> Iterator[list[tuple[int, np.ndarray]]]:
    """``[(input tensor index, batch-1 value), ...]`` per sample: a sample is an image (or image batch) for the
    single input, or a dict of named inputs (the signature's names, as in ``serving_default_<name>:0``)."""
    details = interpreter.get_input_details()
    by_name = {d["name"]: d for d in details}
    for sample in samples:
        if isinstance(sample, Mapping):
            feed = []
            for name, value in sample.items():
                detail = by_name.get(f"serving_default_{name}:0") or by_name.get(name)
                if detail is None:
                    raise ModelError(f"calibration sample: the model has no input named {name!r} "
                                     f"(inputs: {', '.join(by_name)})")
                feed.append((detail["index"], np.asarray(value, np.float32).reshape(detail["shape"])))
            yield feed
            continue
        for image in np.asarray(sample, np.float32).reshape(-1, *details[0]["shape"][1:]):
            yield [(details[0]["index"], image[None])]


def as_samples(samples: Samples) -> Samples:
    """Images as float32, dict samples as they are."""
    if isinstance(samples, np.ndarray) or (len(samples) and not isinstance(samples[0], Mapping)):
        return np.asarray(samples, np.float32)
    return list(samples)
