"""PaddleSeg's Valid Interpolate Module (VIM) on the host, in NumPy/OpenCV.

VIM takes the arg-max of the low-resolution logits, keeps only the classes that win somewhere (``unique``), upsamples
those channels bilinearly (half-pixel centres, as ``F.interpolate(align_corners=False)`` and OpenCV's
``INTER_LINEAR``), takes the arg-max and maps the indices back to class ids. Its output depends on which classes are
present, so it cannot be a static NPU graph: the exported model ends at the logits and this runs on the host.

It equals the arg-max of all classes upsampled wherever the winning class is among the gathered ones, which is
every pixel except where a class that wins nowhere at low resolution would win after interpolation (a class that
is second everywhere); ``tests/benchmarks/bench_vim.py`` measures that agreement and the time saved.
"""

from __future__ import annotations

import numpy as np

from segzoo.preprocess import resize_scores


def present_classes(logits: np.ndarray) -> np.ndarray:
    """Sorted class indices that win at least one pixel of ``[h, w, K]`` logits."""
    return np.unique(np.argmax(logits, axis=-1))


def vim_labels(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """int32 ``[H, W]`` labels: VIM of ``[h, w, K]`` logits upsampled to ``hw``."""
    classes = present_classes(logits)
    if classes.size == 1:
        return np.full(hw, classes[0], dtype=np.int32)
    upsampled = resize_scores(logits[..., classes], hw)
    return classes[np.argmax(upsampled, axis=-1)].astype(np.int32)


def full_labels(logits: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """int32 ``[H, W]`` labels: every class upsampled, then the arg-max (the reference VIM approximates)."""
    return np.argmax(resize_scores(logits, hw), axis=-1).astype(np.int32)
