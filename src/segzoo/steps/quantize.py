"""The quantize step and the float-vs-quantized comparison."""

from __future__ import annotations

import logging

from segzoo.errors import ConfigError
from segzoo.steps.context import MODEL, QUANTIZED, RunContext

logger = logging.getLogger(__name__)


def quantize(ctx: RunContext) -> None:
    """Quantize the run's model; the quantized .tflite becomes the current model."""
    float_model = ctx.model(MODEL)
    result = ctx.task.quantize(float_model)
    ctx.quantization = result
    ctx.add_model(QUANTIZED, result.path)
    ctx.summary["quantization"] = {"model": str(result.path), "float_model": str(float_model),
                                   "granularity": result.granularity, "float_layers": result.float_layers,
                                   "seconds": round(result.seconds, 1)}
    logger.info("Quantized model: %s (%.1f s)", result.path, result.seconds)
    ctx.tracker.log_model_file(result.path)


def _evaluation(ctx: RunContext, role: str) -> dict:
    """The evaluation of ``role`` made earlier in the run, else made now."""
    if role not in ctx.evaluations:
        ctx.evaluations[role] = ctx.task.evaluate(ctx.model(role), role)
    return ctx.evaluations[role]


def quantization_report(ctx: RunContext) -> None:
    """Compare the float and the quantized model on the same images (evaluating what is missing)."""
    from segzoo.quantization.report import build_report, report_metrics, write_quantization_report

    if ctx.quantization is None:
        raise ConfigError("operation_mode: quantization_report needs a quantize step before it")
    accuracy = ctx.task.compare(_evaluation(ctx, MODEL), _evaluation(ctx, QUANTIZED))
    report = build_report(ctx.quantization, accuracy)
    paths = write_quantization_report(ctx.run_dir, report)
    label = report["metric_label"]
    logger.info("Float %s %.2f%% -> quantized %.2f%% (%s): drop %.2f points; NPU-ready: %s (%s)", label,
                100 * report["float"][report["metric"]], 100 * report["quantized"][report["metric"]],
                report["granularity"], report["metric_drop_points"], report["npu_ready"], paths["md"])
    ctx.summary["quantization"].update(metric_drop_points=report["metric_drop_points"],
                                       npu_ready=report["npu_ready"])
    ctx.tracker.log_metrics(report_metrics(report))
    for path in paths.values():
        ctx.tracker.log_artifact(path, "quantization")
