"""The predict step: the current model on the prediction inputs."""

from __future__ import annotations

from segzoo.steps.context import RunContext


def predict(ctx: RunContext) -> None:
    """Run the current model on ``prediction.test_files_path``."""
    ctx.summary["prediction"] = ctx.task.predict(ctx.model())
