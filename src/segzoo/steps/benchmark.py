"""The benchmark step: the run's models on the configured targets, in one comparison table."""

from __future__ import annotations

import logging
from pathlib import Path

from segzoo.steps.context import MODEL, QUANTIZED, RunContext

logger = logging.getLogger(__name__)

def benchmark_models_of(ctx: RunContext) -> tuple[list[Path], list[str], dict[str, list[str]]]:
    """The files to compare: ``benchmarking.models``, else those of the run's model and its quantized version;
    their display names; and the names of the files of each model made of several networks (summed per frame)."""
    configured = [Path(p) for p in ctx.cfg.benchmarking.models]
    if configured:
        return configured, [p.stem for p in configured], {}
    roles = [MODEL] + ([QUANTIZED] if QUANTIZED in ctx.models else [])
    files, groups = [], {}
    for role in roles:
        model = ctx.model(role)
        pairs = ctx.task.benchmark_files(model)
        files += pairs
        groups[model.name] = [name for _, name in pairs]
    return [path for path, _ in files], [name for _, name in files], groups


def benchmark(ctx: RunContext) -> None:
    """Benchmark the run's models on ``benchmarking.targets``; one comparison table, plots and metrics."""
    from segzoo.benchmarking.board import board_row
    from segzoo.benchmarking.report import benchmark_metrics, benchmark_models, frame_rows, write_benchmark_report

    bench = ctx.cfg.benchmarking
    paths, names, groups = benchmark_models_of(ctx)
    local_targets = [t for t in bench.targets if t != "board"]
    rows = benchmark_models(paths, local_targets, names=names, runs=bench.runs, warmup=bench.warmup,
                            threads=bench.threads, npu_mhz=bench.npu_mhz, rules_path=bench.rules_path)
    if "board" in bench.targets:
        analysed = {r["path"]: r["analysis"] for r in rows if r.get("analysis")}
        rows += [board_row(path, name, analysed.get(str(path)), bench.board, bench.runs)
                 for path, name in zip(paths, names)]
    rows += frame_rows(rows, groups)
    files = write_benchmark_report(rows, ctx.run_dir)
    for row in rows:
        if row["error"]:
            logger.warning("%s on %s: %s", row["model"], row["target"], row["error"])
        else:
            logger.info("%s on %s: %.2f ms%s", row["model"], row["target"], row["latency_ms"],
                        f" ({row['npu_pct']:.1f}% NPU)" if row.get("npu_pct") is not None else "")
    ctx.summary["benchmark"] = {"report": str(files.get("json")), "rows": len(rows),
                                "failed": sum(bool(r["error"]) for r in rows),
                                "not_loadable_on_board": sorted({r["model"] for r in rows
                                                                 if r.get("board_loadable") is False})}
    ctx.tracker.log_metrics(benchmark_metrics(rows))
    for path in files.values():
        ctx.tracker.log_artifact(path, "benchmark")
