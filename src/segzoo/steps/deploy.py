"""The deploy step: the board application bundle, and with a board address its push, verification and launch."""

from __future__ import annotations

import logging

from segzoo.steps.context import RunContext

logger = logging.getLogger(__name__)


def deploy(ctx: RunContext) -> None:
    """Build the bundle in ``<run>/deployment``; push and verify it when a board address is configured."""
    from segzoo.deployment.stedgeai import generate_nb_if_configured

    cfg, dep = ctx.cfg, ctx.cfg.deployment
    model = ctx.model()
    out_dir = ctx.run_dir / "deployment"
    nb_model = None
    if model.suffix.lower() == ".tflite":
        nb_model = generate_nb_if_configured(cfg.tools.stedgeai.path_to_stedgeai, model, out_dir / "stedgeai")
    bundle = ctx.task.bundle(model, out_dir, nb_model)
    ctx.summary["deployment"] = {"bundle": str(bundle), "nb_model": str(nb_model) if nb_model else None}
    ctx.tracker.log_artifact(bundle / "manifest.json", "deployment")
    if not dep.hardware_setup.ip_address:
        logger.info("Bundle ready in %s; set deployment.hardware_setup.ip_address to push it to a board", bundle)
        return
    from segzoo.deployment.push import deploy as push
    from segzoo.deployment.push import launch_args
    from segzoo.remote import BoardTarget

    target = BoardTarget.from_section(dep.hardware_setup, dep.strict_host_key_checking)
    task_args = getattr(ctx.task, "launch_args", None)  # e.g. the point prompts of a promptable task
    args = launch_args(dep.launch_input, dep.board_deploy_path) + (task_args() if task_args else [])
    summary = push(bundle, target, dep.board_deploy_path, launch=dep.launch, launch_args=args, timeout=dep.timeout,
                   python=dep.python)
    ctx.summary["deployment"].update(summary)
    logger.info("Deployed to %s:%s (verified on the board)%s", summary["host"], summary["remote_path"],
                "; launched" if summary.get("launched") else "")
