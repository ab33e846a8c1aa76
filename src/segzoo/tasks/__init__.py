"""Tasks: what a run's models do (semantic segmentation, ...). Each task is a package; ``TASKS`` maps the name
to its class, imported on demand."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

from segzoo.models.base import resolve

if TYPE_CHECKING:  # pragma: no cover
    from segzoo.config.schema import Config
    from segzoo.steps.context import RunContext
    from segzoo.tasks.base import Task

TASKS = MappingProxyType({
    "semantic_segmentation": "segzoo.tasks.semantic_segmentation:SemanticSegmentation",
    "pose_estimation": "segzoo.tasks.pose_estimation.task:PoseEstimation",
    "promptable_segmentation": "segzoo.tasks.promptable_segmentation:PromptableSegmentation",
})


def task_of(cfg: Config) -> str:
    """The task of a configuration: ``general.task``, else the pipeline's (``general.pipeline``), else the model
    family's (``training.model.name``). No TensorFlow is imported."""
    if cfg.general.task != "auto":
        return cfg.general.task
    if cfg.general.pipeline:
        from segzoo.models.external import get_pipeline

        return get_pipeline(cfg.general.pipeline).task
    from segzoo.models.registry import get_family

    return get_family(cfg.training.model.name).task


def make_task(ctx: RunContext) -> Task:
    """The task object of the run."""
    name = task_of(ctx.cfg)
    if name not in TASKS:
        from segzoo.errors import ConfigError

        raise ConfigError(f"general.task: {name} is not available in this version (available: {', '.join(TASKS)})")
    return resolve(TASKS[name])(ctx)
