"""Run ``stm32ai_main.py`` with a fault injected:
``python tests/fault_runner.py [--kill-at-publish N | --kill-at-publish-of NAME:K] -- <args>``.

``--kill-at-publish N`` sends SIGKILL to this very process just before segzoo publishes its N-th file or folder (the
rename of a complete temporary, see ``segzoo.io``): the data is written but not yet in place, or in place without
its sha256 sidecar. ``--kill-at-publish-of NAME:K`` does so just before the K-th publication of a file named NAME
(``training_state.json:2``: the weights of epoch 2 are in place, its state is not). Without an option the command
runs as is (time-based kills come from the parent, which
SIGKILLs the process at a random moment). The publications are counted in ``$SEGZOO_FAULT_COUNT`` (a file), and
listed with the names they publish in ``$SEGZOO_FAULT_COUNT.names``, so a test can pick N among the real ones.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _named(spec: str | None) -> tuple[str, int] | None:
    """``NAME:K`` -> (NAME, K)."""
    if spec is None:
        return None
    name, _, count = spec.rpartition(":")
    return name, int(count)


def _install_kill(kill_at: int | None, kill_of: tuple[str, int] | None, count_file: str | None) -> None:
    """Wrap ``os.replace`` so that segzoo's publications (temporary names) are counted, and the N-th one (or the
    K-th of a given file name) dies."""
    from segzoo.io import TEMP_MARK

    original = os.replace
    seen = [0, 0]

    def replace(src, dst, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - os.replace's own signature
        if TEMP_MARK in os.fspath(src):
            seen[0] += 1
            if count_file:
                Path(count_file).write_text(str(seen[0]))
                with open(f"{count_file}.names", "a") as names:
                    names.write(f"{seen[0]} {Path(os.fspath(dst)).name}\n")
            if kill_at is not None and seen[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if kill_of is not None and Path(os.fspath(dst)).name == kill_of[0]:
                seen[1] += 1
                if seen[1] == kill_of[1]:
                    os.kill(os.getpid(), signal.SIGKILL)
        return original(src, dst, *args, **kwargs)

    os.replace = replace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kill-at-publish", type=int, default=None)
    parser.add_argument("--kill-at-publish-of", default=None, metavar="NAME:K")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    options = parser.parse_args()
    args = options.args[1:] if options.args[:1] == ["--"] else options.args
    _install_kill(options.kill_at_publish, _named(options.kill_at_publish_of), os.environ.get("SEGZOO_FAULT_COUNT"))
    sys.argv = [str(REPO / "stm32ai_main.py"), *args]
    runpy.run_path(str(REPO / "stm32ai_main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
