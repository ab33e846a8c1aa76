"""mIoU against estimated STM32MP257 latency for every zoo model trained on CamVid.

Run by hand (not collected by pytest)::

    python tests/benchmarks/plot_camvid_zoo.py [--out pretrained_models/camvid_miou_vs_stm32mp257.png]

The figures are the ones recorded in ``pretrained_models/README.md`` (CamVid 11 classes, void ignored, 101 val
images at their original 480x360): int8 per-tensor mIoU (what runs on the NPU) on the y axis, the static
STM32MP257 estimate of that int8 file (``segzoo.benchmarking.estimate.estimate_stm32mp2``) on the x axis; the
float mIoU is drawn as a hollow marker above or below it. A new zoo model is one more line in ``CAMVID_ZOO``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

LOG = logging.getLogger("plot_camvid_zoo")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ZooPoint:
    """One CamVid zoo row: family (colour), label, float and int8 per-tensor mIoU (%), estimate (ms), NPU share."""

    family: str
    label: str
    miou_float: float
    miou_int8: float
    latency_ms: float
    npu_pct: float


# Figures from pretrained_models/README.md; one line per zoo model trained on CamVid.
CAMVID_ZOO: tuple[ZooPoint, ...] = (
    ZooPoint("deeplab_v3", "DeepLabV3 MNv2 0.35, scratch", 49.20, 49.14, 14.8, 99.0),
    ZooPoint("deeplab_v3", "DeepLabV3 MNv2 0.35, ImageNet", 56.61, 56.38, 14.8, 99.0),
    ZooPoint("deeplab_v3", "DeepLabV3 MNv2 1.0, ImageNet", 59.00, 59.15, 26.5, 99.5),
    ZooPoint("pidnet", "PIDNet-S, scratch", 56.59, 56.53, 73.1, 99.9),
    ZooPoint("pp_mobileseg", "PP-MobileSeg tiny", 48.88, 48.72, 35.8, 98.5),
    ZooPoint("pp_mobileseg", "PP-MobileSeg tiny, relu", 47.90, 47.75, 34.0, 99.4),
    ZooPoint("pp_mobileseg", "PP-MobileSeg tiny, same padding", 47.09, 47.07, 22.8, 97.3),
    ZooPoint("pp_mobileseg", "PP-MobileSeg tiny NPU-friendly (relu + same)", 45.99, 45.73, 21.0, 99.0),
)


def plot(points: tuple[ZooPoint, ...], out: Path) -> Path:
    """Scatter of int8 mIoU against estimated latency, float mIoU hollow, one colour per family."""
    from matplotlib.figure import Figure

    from segzoo.io import save_figure

    colours = {family: f"C{i}" for i, family in enumerate(dict.fromkeys(p.family for p in points))}
    fig = Figure(figsize=(8, 5), dpi=120)
    ax = fig.subplots()
    for family, colour in colours.items():
        mine = [p for p in points if p.family == family]
        ax.scatter([p.latency_ms for p in mine], [p.miou_int8 for p in mine], color=colour, label=f"{family} int8",
                   zorder=3)
        ax.scatter([p.latency_ms for p in mine], [p.miou_float for p in mine], facecolors="none",
                   edgecolors=colour, label=f"{family} float", zorder=2)
    for p in points:
        ax.plot([p.latency_ms, p.latency_ms], [p.miou_int8, p.miou_float], color=colours[p.family], lw=0.8)
        ax.annotate(f"{p.label}\n{p.npu_pct:.1f}% NPU", (p.latency_ms, p.miou_int8), textcoords="offset points",
                    xytext=(6, -10), fontsize=7)
    ax.set_xlim(0, 1.45 * max(p.latency_ms for p in points))
    ax.set_xlabel("estimated STM32MP257 latency, int8 per-tensor (ms)")
    ax.set_ylabel("CamVid val mIoU at 480x360 (%)")
    ax.set_title("segzoo CamVid models: accuracy against estimated STM32MP257 latency")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, out)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "pretrained_models" / "camvid_miou_vs_stm32mp257.png")
    args = parser.parse_args()
    for p in sorted(CAMVID_ZOO, key=lambda p: p.latency_ms):
        LOG.info("%-45s float %5.2f  int8 %5.2f  %7.1f ms  %5.1f%% NPU", p.label, p.miou_float, p.miou_int8,
                 p.latency_ms, p.npu_pct)
    LOG.info("wrote %s", plot(CAMVID_ZOO, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
