"""What ``stm32ai_main.py`` runs: check overrides, validate the config, run the mode's steps.

Nothing heavy is imported before the config is valid, so a typo fails in a few seconds. Exit codes are listed in
``segzoo.errors``: a user error exits with its code and no traceback; a run that finished but skipped items exits 6.
Running the same command again in the run directory of an interrupted run (``hydra.run.dir``) first clears the
temporary files the interruption left, then redoes the steps; no file at its final name is ever half-written.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from segzoo.config import config_to_dict, load_config
from segzoo.config.overrides import check_overrides
from segzoo.errors import EXIT_SKIPPED, SegzooError
from segzoo.io import disk_full_cause, output_error, remove_stale_temporaries, write_json, write_text
from segzoo.modes import steps_for
from segzoo.training.cluster import ClusterRole, check_role, cluster_role

logger = logging.getLogger("segzoo")


def preflight(argv: list[str]) -> list[str]:
    """Check ``key=value`` overrides against the schema before Hydra sees them; exit 2 on a bad key.

    A non-chief worker of a training cluster (``TF_CONFIG``, Slurm) gets a temporary Hydra run directory, so that
    it writes nothing (not even Hydra's log) into the run directory of the chief.
    """
    try:
        # Hydra's own copy of the config (.hydra/) would hold secrets unredacted: segzoo writes
        # a redacted config.yaml into the run directory instead.
        args = check_overrides(argv[1:]) + ["hydra.output_subdir=null"]
        role = cluster_role()
    except SegzooError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    if not role.is_chief:
        args = [a for a in args if not a.lstrip("+").startswith("hydra.run.dir=")]
        args.append(f"hydra.run.dir={tempfile.mkdtemp(prefix=f'segzoo_{role.task_type}{role.task_index}_')}")
    return argv[:1] + args


def run(raw_cfg: Any, run_dir: str | Path | None = None) -> dict:
    """Validate ``raw_cfg`` and run its operation mode in ``run_dir``; user errors exit non-zero.

    The summary (``results.json``) lists the skipped items under ``skipped``; see :func:`exit_status`.
    """
    try:
        return _run(raw_cfg, run_dir)
    except SegzooError as exc:
        logger.error("%s", exc)
        raise SystemExit(exc.exit_code) from None
    except Exception as exc:
        full = disk_full_cause(exc)
        if full is None:
            raise
        error = output_error(getattr(full, "filename", None) or Path(run_dir or "."), full)
        logger.error("%s", error)
        raise SystemExit(error.exit_code) from None


def exit_status(summary: dict) -> int:
    """0 for a run that finished with nothing skipped, :data:`~segzoo.errors.EXIT_SKIPPED` (6) otherwise."""
    return EXIT_SKIPPED if summary.get("skipped", {}).get("count") else 0


def run_and_exit(raw_cfg: Any) -> None:
    """:func:`run`, then exit with :func:`exit_status` (what ``stm32ai_main.py`` does)."""
    status = exit_status(run(raw_cfg))
    if status:
        raise SystemExit(status)


def _hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _worker_steps(cfg: Any, role: ClusterRole) -> tuple[str, ...]:
    """The steps a worker runs: all of them on the chief; on other workers the training alone."""
    check_role(role, cfg.training.distribution.strategy, cfg.training.distribution.cluster_resolver)
    steps = steps_for(cfg.operation_mode)
    return steps if role.is_chief else steps[: steps.index("train") + 1] if "train" in steps else ()


def _run_worker(cfg: Any, role: ClusterRole, steps: tuple[str, ...]) -> dict:
    """A non-chief worker: it trains with the others and writes nothing into the run directory (its files, if
    any, go to a temporary folder removed at the end)."""
    from segzoo.steps import run_step
    from segzoo.steps.context import RunContext
    from segzoo.tracking import Tracker

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    scratch = Path(tempfile.mkdtemp(prefix=f"segzoo_{role.task_type}{role.task_index}_run_"))
    logger.info("%s: training with the chief; it writes the run's files (this worker writes nothing there)",
                role.describe())
    ctx = RunContext(cfg=cfg, run_dir=scratch, tracker=Tracker("", "", "", enabled=False))
    try:
        for step in steps:
            run_step(step, ctx)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    logger.info("%s: %s; the rest of operation_mode %s runs on the chief", role.describe(),
                "training done" if steps else "nothing to do", cfg.operation_mode)
    return {}


def _run(raw_cfg: Any, run_dir: str | Path | None) -> dict:
    cfg = load_config(raw_cfg)
    role = cluster_role()
    steps = _worker_steps(cfg, role)
    if not role.is_chief:
        return _run_worker(cfg, role, steps)
    run_dir = Path(run_dir) if run_dir else _hydra_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(run_dir)
    if stale:
        logger.info("Removed %d temporary file(s) left by an interrupted run in %s", len(stale), run_dir)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from omegaconf import OmegaConf

    from segzoo.steps import run_step
    from segzoo.steps.context import RunContext
    from segzoo.tracking import Tracker

    config_file = write_text(run_dir / "config.yaml", OmegaConf.to_yaml(config_to_dict(cfg)))
    logger.info("operation_mode %s: %s; outputs in %s", cfg.operation_mode, " -> ".join(steps), run_dir)
    with Tracker(cfg.mlflow.uri, cfg.general.project_name, run_dir.name, enabled=cfg.mlflow.enabled,
                 log_models=cfg.mlflow.log_models) as tracker:
        tracker.set_tag("operation_mode", cfg.operation_mode)
        tracker.log_config(config_to_dict(cfg))
        tracker.log_artifact(config_file)
        ctx = RunContext(cfg=cfg, run_dir=run_dir, tracker=tracker)
        try:
            for step in steps:
                start = time.perf_counter()
                run_step(step, ctx)
                logger.info("step %s done in %.1f s", step, time.perf_counter() - start)
            _report_skipped(ctx)
        finally:
            for log_file in run_dir.glob("*.log"):
                tracker.log_artifact(log_file)
    write_json(run_dir / "results.json", ctx.summary)
    return ctx.summary


SKIPPED_SHOWN = 20
"""How many skipped items the final log message lists (results.json lists them all)."""


def _report_skipped(ctx: Any) -> None:
    """Put the run's skipped items in the summary, the log and MLflow (tag ``skipped_items``)."""
    items = ctx.skipped
    ctx.summary["skipped"] = {"count": len(items), "items": items}
    ctx.tracker.set_tag("skipped_items", str(len(items)))
    if not items:
        return
    shown = "\n  ".join(f"[{s['step']}] {s['item']}: {s['reason']}" for s in items[:SKIPPED_SHOWN])
    more = f"\n  ... and {len(items) - SKIPPED_SHOWN} more" if len(items) > SKIPPED_SHOWN else ""
    logger.warning("Finished with %d skipped item(s) (listed in results.json; exit code %d):\n  %s%s",
                   len(items), EXIT_SKIPPED, shown, more)
