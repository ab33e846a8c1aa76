"""Host cost of PP-MobileSeg's Valid Interpolate Module against upsampling every class.

Run by hand (not collected by pytest)::

    python tests/benchmarks/bench_vim.py [--classes 150] [--out 512 512] [--present 5 15 30 150] [--repeats 30]

The exported model ends at low-resolution logits (tiny: 1/16, 32x32 for a 512x512 input; base: 1/8, 64x64); the
labels at full resolution come from the host. Compared, on the same logits:

- ``full``: every class upsampled bilinearly (OpenCV, half-pixel centres), then the arg-max (what the model's own
  final interpolation + arg-max computes);
- ``vim``: PaddleSeg's VIM (:func:`segzoo.models.pp_mobileseg.vim.vim_labels`): only the classes that win somewhere
  at low resolution are upsampled;
- ``boundary``: segzoo's ``resize_argmax`` (interpolates all classes only at class-boundary pixels), which
  evaluation and the board app use.

Logits are spatially smooth synthetic fields (every class a low-frequency field, ``present`` classes winning in
blobs), seeded; ADE20K images hold about 10% of the 150 classes (PaddleSeg's VIM note), i.e. ~15 present. Times
are CPU time of this process with OpenCV on one thread (``--threads``), so that other work on the machine does
not inflate them. Printed: median and p90 time of each method, the speed-up of VIM over ``full``, and the share of
pixels where VIM and ``boundary`` agree with ``full``.
"""

from __future__ import annotations

import argparse
import sys
import time

import cv2
import numpy as np

from segzoo.models.pp_mobileseg.vim import full_labels, present_classes, vim_labels
from segzoo.preprocess import resize_argmax, resize_scores


def smooth_logits(hw: tuple[int, int], classes: int, present: int, seed: int) -> np.ndarray:
    """Low-frequency logits for every class; ``present`` classes get blobs that make them win somewhere."""
    rng = np.random.default_rng(seed)
    logits = resize_scores(rng.normal(-4.0, 0.5, (3, 3, classes)), hw)
    yy, xx = np.mgrid[: hw[0], : hw[1]]
    for c in rng.choice(classes, present, replace=False):
        cy, cx = rng.uniform(0, hw[0]), rng.uniform(0, hw[1])
        logits[..., c] += rng.uniform(5.0, 8.0) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.05 * hw[0] * hw[1]))
    return logits


def timed(fn, repeats: int) -> tuple[float, float, np.ndarray]:
    """(median ms, p90 ms, last result) of the process CPU time of ``fn()`` after two warm-up calls."""
    for _ in range(2):
        result = fn()
    times = []
    for _ in range(repeats):
        start = time.process_time_ns()
        result = fn()
        times.append((time.process_time_ns() - start) / 1e6)
    return float(np.median(times)), float(np.percentile(times, 90)), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--out", type=int, nargs=2, default=[512, 512], metavar=("H", "W"))
    parser.add_argument("--present", type=int, nargs="+", default=[5, 15, 30, 150])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    args = parser.parse_args()
    cv2.setNumThreads(args.threads)
    out_hw = tuple(args.out)
    print(f"{args.classes} classes, labels at {out_hw[0]}x{out_hw[1]}, {args.repeats} repeats, OpenCV on "
          f"{args.threads} thread(s) (median / p90 ms of CPU time)")
    print("| logits | present (winning) | full | vim | boundary | vim speed-up | vim = full | boundary = full |")
    print("|---|---|---|---|---|---|---|---|")
    for name, stride in (("tiny 1/16", 16), ("base 1/8", 8)):
        low_hw = (out_hw[0] // stride, out_hw[1] // stride)
        for present in args.present:
            logits = smooth_logits(low_hw, args.classes, min(present, args.classes), seed=present)
            winning = len(present_classes(logits))
            full_ms, full_p90, full = timed(lambda: full_labels(logits, out_hw), args.repeats)
            vim_ms, vim_p90, vim = timed(lambda: vim_labels(logits, out_hw), args.repeats)
            bnd_ms, bnd_p90, bnd = timed(lambda: resize_argmax(logits, out_hw), args.repeats)
            print(f"| {name} {low_hw[0]}x{low_hw[1]} | {present} ({winning}) | {full_ms:.2f} / {full_p90:.2f} | "
                  f"{vim_ms:.2f} / {vim_p90:.2f} | {bnd_ms:.2f} / {bnd_p90:.2f} | x{full_ms / vim_ms:.1f} | "
                  f"{100 * np.mean(vim == full):.3f}% | {100 * np.mean(bnd == full):.3f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
