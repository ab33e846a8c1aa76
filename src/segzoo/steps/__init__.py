"""The steps operation modes are made of (``segzoo.modes``). Each step is one module; it reads what it needs
from the run context, writes its outputs into the run directory first, then sends them to MLflow. Steps are
task-agnostic: what depends on the task goes through ``ctx.task``."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from segzoo.models.base import resolve

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.steps.context import RunContext

STEPS = MappingProxyType({
    "train": "segzoo.steps.train:train",
    "evaluate": "segzoo.steps.evaluate:evaluate",
    "predict": "segzoo.steps.predict:predict",
    "quantize": "segzoo.steps.quantize:quantize",
    "quantization_report": "segzoo.steps.quantize:quantization_report",
    "benchmark": "segzoo.steps.benchmark:benchmark",
    "deploy": "segzoo.steps.deploy:deploy",
})
"""Step name -> ``"module:function"`` taking the run context."""


def run_step(name: str, ctx: RunContext) -> None:
    """Run step ``name`` on ``ctx``."""
    resolve(STEPS[name])(ctx)
