"""The train step: the exported best model becomes the run's model; the checkpoint keeps the training heads."""

from __future__ import annotations

import logging

from segzoo.steps.context import MODEL, RunContext

logger = logging.getLogger(__name__)


def train(ctx: RunContext) -> None:
    """Train as configured and record the best model."""
    result = ctx.task.train()
    if not result.is_chief:  # a non-chief worker of a cluster: the chief records the models
        return
    ctx.checkpoint = result.best_checkpoint
    ctx.add_model(MODEL, result.best_model)
    ctx.summary["training"] = {"best_model": str(result.best_model), "checkpoint": str(result.best_checkpoint),
                               "epochs": result.epochs_done, "steps": result.steps_done,
                               f"best_{result.monitor}": result.best}
    logger.info("Best model: %s (%s %.4f)", result.best_model, result.monitor, result.best or float("nan"))
    logs = ctx.run_dir / ctx.cfg.general.logs_dir
    ctx.tracker.log_artifact(logs / "training_log.csv", "training")
    if result.curves:
        ctx.tracker.log_artifact(result.curves, "training")
    ctx.tracker.log_model_file(result.best_model)
