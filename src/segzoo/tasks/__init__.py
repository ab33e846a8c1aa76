"""Tasks: what a run's models do (semantic segmentation, ...). Each task is a package; ``TASKS`` maps the name
to its class, imported on demand."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from segzoo.models.base import resolve

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.steps.context import RunContext
    from segzoo.tasks.base import Task

TASKS = MappingProxyType({
    "semantic_segmentation": "segzoo.tasks.semantic_segmentation:SemanticSegmentation",
})


def task_name(ctx: RunContext) -> str:
    """The task of the run: the one of the configured model family."""
    from segzoo.models.registry import get_family

    return get_family(ctx.cfg.training.model.name).task


def make_task(ctx: RunContext) -> Task:
    """The task object of the run."""
    return resolve(TASKS[task_name(ctx)])(ctx)
