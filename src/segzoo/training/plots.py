"""Training curves from the CSV log."""

from __future__ import annotations

import csv
from pathlib import Path

from segzoo.io import save_figure


def plot_training_curves(csv_path: Path, out_path: Path) -> Path | None:
    """Loss and mIoU per epoch, training and validation side by side; None if the log is empty."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    from matplotlib.figure import Figure

    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig = Figure(figsize=(10, 4), dpi=100)
    for ax, key, title in zip(fig.subplots(1, 2), ("loss", "miou"), ("Loss", "mIoU")):
        for prefix, label in (("", "training"), ("val_", "validation")):
            values = [float(r[prefix + key]) for r in rows if r.get(prefix + key) not in (None, "")]
            if values:
                ax.plot(epochs[: len(values)], values, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out_path)
