"""The evaluate step: the current model (the quantized one after a quantize step) on the evaluation set."""

from __future__ import annotations

from segzoo.steps.context import QUANTIZED, RunContext


def evaluate(ctx: RunContext) -> None:
    """Evaluate the current model and keep its summary for later comparisons."""
    role = ctx.current
    summary = ctx.task.evaluate(ctx.model(role), role)
    ctx.evaluations[role] = summary
    ctx.summary["quantized_evaluation" if role == QUANTIZED else "evaluation"] = summary
