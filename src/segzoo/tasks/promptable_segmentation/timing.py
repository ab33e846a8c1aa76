"""Per-stage timings of a promptable model: the encoder (once per image) and the decoder (once per prompt)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


class StageTimes:
    """Wall-clock milliseconds of each call of each wrapped stage."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` timed under ``stage``."""
        times = self.calls.setdefault(stage, [])

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            times.append((time.perf_counter() - start) * 1e3)
            return out

        return timed

    def last(self, stage: str) -> float | None:
        """The latest call of ``stage`` in ms (None before any)."""
        times = self.calls.get(stage)
        return times[-1] if times else None

    def summary(self) -> dict[str, float | int]:
        """``{stage}_calls``, ``{stage}_median_ms`` and ``{stage}_mean_ms`` of every stage that ran."""
        out: dict[str, float | int] = {}
        for stage, times in self.calls.items():
            if times:
                out.update({f"{stage}_calls": len(times), f"{stage}_median_ms": float(np.median(times)),
                            f"{stage}_mean_ms": float(np.mean(times))})
        return out
