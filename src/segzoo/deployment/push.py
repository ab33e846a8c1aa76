"""Push a deployment bundle to a board: upload beside the destination, verify there, swap in, optionally launch.

The bundle is checked locally first, uploaded to ``<path>.tmp-<random>``, verified on the board with its own
``segment.py --verify`` (every sha256 of the manifest) and only then renamed onto ``<path>``: a transfer that
fails or arrives corrupted never replaces a working deployment.
"""

from __future__ import annotations

import json
import logging
import posixpath
from pathlib import Path

from segzoo.deployment.bundle import MANIFEST, BundleError, verify_bundle
from segzoo.remote import BoardTarget, Remote, RemoteError, remote_command

log = logging.getLogger(__name__)

LAUNCH_OUTPUT_LINES = 20


def deploy(bundle_dir: str | Path, target: BoardTarget, board_deploy_path: str, *, launch: bool = False,
           launch_args: list[str] | None = None, timeout: float = 600.0, python: str = "python3") -> dict:
    """Upload ``bundle_dir`` to ``board_deploy_path`` on the board, verify it there, optionally launch it.

    ``launch_args`` go to ``launch.sh`` (i.e. ``segment.py``), e.g. ``["--input", "/home/root/images",
    "--output", "/home/root/results"]``; ``python`` is the board's interpreter. Returns a summary: remote path,
    files, verified, and the first lines the launch printed (per-frame times). No key or secret is in it.
    """
    bundle_dir = Path(bundle_dir)
    problems = verify_bundle(bundle_dir)
    if problems:
        raise BundleError(f"bundle {bundle_dir} is damaged, rebuild it: " + "; ".join(problems))
    files = sorted(json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))["files"])
    summary: dict = {"host": target.address, "remote_path": board_deploy_path, "files": files + [MANIFEST],
                     "verified": False, "launched": False}
    with Remote(target) as remote:
        remote.upload_dir(bundle_dir, board_deploy_path,
                          check=lambda tmp: _verify_on_board(remote, tmp, python, timeout))
        summary["verified"] = True
        log.info("Bundle verified on %s at %s", target.address, board_deploy_path)
        if launch:
            summary.update(_launch(remote, board_deploy_path, launch_args or [], python, timeout))
    return summary


def launch_args(launch_input: str | None, board_deploy_path: str) -> list[str]:
    """Arguments of the launched application: a camera device, or images with results beside the app."""
    if not launch_input:
        return []
    if launch_input == "camera" or launch_input.startswith("/dev/video"):
        device = "/dev/video0" if launch_input == "camera" else launch_input
        return ["--camera", device, "--max-frames", "30"]
    return ["--input", launch_input, "--output", board_deploy_path.rstrip("/") + "_results"]


def launch_command(board_deploy_path: str, launch_args: list[str], python: str = "python3") -> str:
    """The command line that starts the deployed app on the board (every argument quoted)."""
    return remote_command(_launch_argv(board_deploy_path, launch_args, python))


def _launch_argv(board_deploy_path: str, launch_args: list[str], python: str) -> list[str]:
    return ["env", f"PYTHON={python}", "sh", posixpath.join(board_deploy_path, "launch.sh"), *map(str, launch_args)]


def _verify_on_board(remote: Remote, directory: str, python: str, timeout: float) -> None:
    """Run the bundle's own verification on the board; RemoteError naming the bad files if it fails."""
    result = remote.run([python, posixpath.join(directory, "segment.py"), "--verify"], timeout=timeout, check=False)
    if result.exit_code == 127:
        raise RemoteError(f"{python} not found on the board {remote.target.address}: the bundle needs Python 3 "
                          "(X-LINUX-AI images have it; give the interpreter's path otherwise)")
    if result.exit_code != 0:
        detail = (result.stderr or result.stdout).strip()
        raise RemoteError(f"the bundle arrived damaged on {remote.target.address}; the previous deployment, if any, "
                          f"is untouched:\n{detail}")


def _launch(remote: Remote, board_deploy_path: str, launch_args: list[str], python: str, timeout: float) -> dict:
    """Run launch.sh with the given arguments; return the first lines it printed."""
    log.info("Launching on %s: %s", remote.target.address, launch_command(board_deploy_path, launch_args, python))
    result = remote.run(_launch_argv(board_deploy_path, launch_args, python), timeout=timeout, check=False)
    lines = result.stdout.splitlines()
    if result.exit_code != 0:
        detail = (result.stderr.strip() or "\n".join(lines[-5:]))
        raise RemoteError(f"the app failed on {remote.target.address} (exit code {result.exit_code}):\n{detail}")
    for line in lines[:LAUNCH_OUTPUT_LINES]:
        log.info("board: %s", line)
    return {"launched": True, "launch_exit_code": result.exit_code, "launch_output": lines[:LAUNCH_OUTPUT_LINES]}
