"""The allowed range of every numeric configuration key, in one table the validator applies to all of them.

A value outside its range is a ConfigError naming the key and the range, found before anything heavy starts (and
not, say, a crash of the benchmark after a training for ``benchmarking.runs: 0``). Non-finite numbers (``nan``,
``inf``) are refused for every number key by the validator itself. The numeric keys of a model family's
``training.model`` section are checked by the family's own params ``check()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Range:
    """``low <= value <= high`` (an open end excludes the bound; None: no bound). ``each``: every list item."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    each: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        """``in (0, 1]``, ``at least 1``, ``at most 65535``..."""
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'greater than' if self.low_open else 'at least'} {_num(self.low)}"
        return f"{'less than' if self.high_open else 'at most'} {_num(self.high)}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


AT_LEAST_1 = Range(1)
NOT_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
PORT = Range(1, 65535)
FRACTION_OPEN = Range(0, 1, low_open=True, high_open=True)

RANGES: MappingProxyType[str, Range] = MappingProxyType({
    "general.global_seed": Range(0, 2**32 - 1),
    "general.num_threads_tflite": AT_LEAST_1,
    "dataset.validation_split": FRACTION_OPEN,
    "dataset.quantization_split": Range(0, 1, low_open=True),
    "dataset.class_mapping_default": Range(0, 255),
    "dataset.ignore_index": Range(0, 255),
    "preprocessing.rescaling.scale": Range(-1e6, 1e6),
    "preprocessing.rescaling.offset": Range(-1e6, 1e6),
    "training.batch_size": AT_LEAST_1,
    "training.epochs": AT_LEAST_1,
    "training.steps_per_epoch": AT_LEAST_1,
    "training.optimizer.learning_rate": Range(0, 10, low_open=True),
    "training.optimizer.weight_decay": NOT_NEGATIVE,
    "training.optimizer.momentum": Range(0, 1),
    "training.optimizer.clipnorm": POSITIVE,
    "training.lr_schedule.warmup_epochs": NOT_NEGATIVE,
    "training.lr_schedule.min_lr": NOT_NEGATIVE,
    "training.lr_schedule.power": POSITIVE,
    "training.lr_schedule.step_epochs": AT_LEAST_1,
    "training.lr_schedule.factor": FRACTION_OPEN,
    "training.lr_schedule.patience": NOT_NEGATIVE,
    "training.class_weights": Range(0, each=True),
    "training.early_stopping_patience": AT_LEAST_1,
    "training.steps_per_execution": AT_LEAST_1,
    "training.distribution.port": PORT,
    "training.distribution.timeout_s": POSITIVE,
    "training.distribution.connect_timeout_s": POSITIVE,
    "evaluation.max_images": AT_LEAST_1,
    "evaluation.clicks": AT_LEAST_1,
    "evaluation.min_instance_area": AT_LEAST_1,
    "evaluation.mask_threshold": Range(-1e6, 1e6),
    "prediction.overlay_alpha": Range(0, 1),
    "prediction.max_images": AT_LEAST_1,
    "quantization.calibration_images": AT_LEAST_1,
    "quantization.mixed_precision.max_miou_drop": Range(0, 100),
    "quantization.mixed_precision.max_float_layers": AT_LEAST_1,
    "quantization.mixed_precision.validation_images": AT_LEAST_1,
    "quantization.activation_percentile": Range(50, 100),
    "quantization.adaround_iterations": AT_LEAST_1,
    "quantization.relu6_cap_growth": Range(1, 1000),
    "quantization.qat.epochs": AT_LEAST_1,
    "quantization.qat.learning_rate": Range(0, 10, low_open=True),
    "quantization.qat.steps_per_epoch": AT_LEAST_1,
    "pose_estimation.num_poses": AT_LEAST_1,
    "pose_estimation.min_visibility": Range(0, 1),
    "pose_estimation.person_masks.person_values": Range(0, 65535, each=True),
    "pose_estimation.person_masks.ignore_values": Range(0, 65535, each=True),
    "pose_estimation.person_masks.threshold": Range(0, 1),
    "pose_estimation.person_masks.max_images": AT_LEAST_1,
    "benchmarking.runs": AT_LEAST_1,
    "benchmarking.warmup": NOT_NEGATIVE,
    "benchmarking.threads": AT_LEAST_1,
    "benchmarking.board.port": PORT,
    "deployment.hardware_setup.port": PORT,
    "deployment.timeout": POSITIVE,
})
"""Dotted key -> allowed range. Every int or float key of the core sections is listed (a test walks the schema)."""


def _value_at(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_ranges(cfg: Any) -> list[str]:
    """``"<key>: must be <range>, got <value>"`` for every numeric key of ``cfg`` outside its range."""
    errors = []
    for key, allowed in RANGES.items():
        value = _value_at(cfg, key)
        if value is None or isinstance(value, str):  # unset, or a choice such as 'median_frequency'
            continue
        values = value if allowed.each else [value]
        bad = [v for v in values if not allowed.contains(float(v))]
        if bad:
            what = "every value must be" if allowed.each else "must be"
            errors.append(f"{key}: {what} {allowed.describe()}, got {bad[0]}")
    return errors
