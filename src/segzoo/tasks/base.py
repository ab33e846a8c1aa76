"""What a task gives the steps: evaluation, prediction, calibration data, training and deployment details.

Steps are task-agnostic: they call these methods on ``ctx.task``. A task owns the run's data (its samples,
preprocessing and evaluation set, resolved once) and writes its own reports. A ``model`` is a file, or a folder
for a model made of several networks (a pipeline preset: ``general.pipeline``; promptable segmentation: an encoder
and a decoder).

Optional: ``launch_args() -> list[str]``, extra arguments for the board application that a deployment launches
(e.g. the point prompts of a promptable task).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.quantization.quantize import QuantizationResult


class Task(Protocol):
    """One kind of problem (semantic segmentation, pose estimation, ...) and how the pipeline treats it."""

    name: str
    metric: str
    """Key of the main metric in an evaluation summary (quantization budgets are in its points)."""
    metric_label: str

    def train(self) -> Any:
        """Train as configured; the result names the best checkpoint and the exported model."""

    def import_model(self) -> Path:
        """The model built from ``training.model`` with its pretrained weights, saved in the run (no training)."""

    def evaluate(self, model: Path, role: str) -> dict:
        """Evaluate ``model``, write its report (prefixed by ``role``), log metrics; the summary."""

    def validation_metric(self, model: Path) -> float:
        """The main metric of ``model`` on the validation images, without writing a report."""

    def calibration(self, input_hw: tuple[int, int], channels: int) -> tuple[np.ndarray, dict, list[str]]:
        """Preprocessed calibration inputs ``[N,H,W,C]``, a description for the report, and warnings."""

    def quantize(self, model: Path) -> QuantizationResult:
        """Quantize ``model`` as configured (``quantization``); the result names the quantized model."""

    def compare(self, float_eval: dict, quantized_eval: dict) -> dict:
        """The accuracy part of the quantization report (metrics of both models and the drop)."""

    def benchmark_files(self, model: Path) -> list[tuple[Path, str]]:
        """The .tflite files that make up ``model`` with a display name each (Keras models converted to float32)."""

    def predict(self, model: Path) -> dict:
        """Run ``model`` on the prediction inputs and write the outputs; a summary."""

    def bundle(self, model: Path, out_dir: Path, nb_model: Path | None) -> Path:
        """Build the board application bundle of ``model`` in ``out_dir``; its folder."""


def log_report(tracker: Any, metrics: dict[str, Any], paths: dict[str, Path], prefix: str = "",
               section: str = "evaluation") -> None:
    """The tail every task's report shares: ``metrics`` logged to MLflow with ``prefix`` (values that are None
    left out) and each report file of ``paths`` logged as an artifact under ``section``."""
    tracker.log_metrics({f"{prefix}{k}": v for k, v in metrics.items() if v is not None})
    for path in paths.values():
        tracker.log_artifact(path, section)


def prediction_images(cfg: Any) -> list[Path]:
    """The images of ``prediction.test_files_path`` by name, at most ``prediction.max_images``; DataError naming
    the folder and the suffixes looked for when there is none."""
    from segzoo.data.layouts import IMAGE_SUFFIXES
    from segzoo.errors import DataError

    folder = Path(cfg.prediction.test_files_path)
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DataError(f"prediction.test_files_path: no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return images[: cfg.prediction.max_images or None]
