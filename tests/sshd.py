"""A real OpenSSH server on 127.0.0.1 for the remote, deployment and board-benchmark tests.

Import the fixture into a test module: ``from sshd import sshd_server``. It starts ``/usr/sbin/sshd -D -e`` with
temporary host keys, a client key pair, an authorized_keys and a known_hosts line for ``[127.0.0.1]:port``; the
"board" is this machine, so commands on it run with the same Python as the tests (pass ``board.python``).
Tests skip with a clear reason when sshd or ssh-keygen is missing (Debian: ``apt-get install openssh-server``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from segzoo.remote import BoardTarget

SSHD = Path(os.environ.get("SEGZOO_TEST_SSHD", "/usr/sbin/sshd"))
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class SshdServer:
    """A running sshd and everything a client needs to log in to it."""

    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path
    board_root: Path
    workdir: Path
    pid: int
    python: str = sys.executable

    def target(self, **overrides) -> BoardTarget:
        """A BoardTarget for this server (strict host key checking against its known_hosts)."""
        target = BoardTarget(host=self.host, port=self.port, user=self.user, identity_file=str(self.identity_file),
                             known_hosts=str(self.known_hosts), connect_timeout=5.0)
        return replace(target, **overrides)

    def deployment(self, deploy_path: str, launch_input: str) -> dict:
        """The ``deployment`` config section that deploys to this server and launches on ``launch_input``."""
        return {"hardware_setup": {"ip_address": self.host, "port": self.port, "user": self.user,
                                   "identity_file": str(self.identity_file), "known_hosts": str(self.known_hosts)},
                "board_deploy_path": deploy_path, "launch": True, "launch_input": launch_input,
                "python": self.python}

    def session_pids(self) -> list[int]:
        """The sshd processes serving open connections (descendants of the listener)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], list(children.get(self.pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        return found

    def drop_connections(self) -> int:
        """Kill the server side of every open connection (the listener keeps running); return how many."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)


def _require_tools() -> str:
    if not SSHD.is_file():
        pytest.skip(f"OpenSSH server not installed ({SSHD} missing): apt-get install openssh-server")
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        pytest.skip("ssh-keygen not found: apt-get install openssh-client")
    return keygen


def _keygen(keygen: str, path: Path, comment: str) -> None:
    subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _privsep_dir() -> None:
    """sshd started as root insists on its privilege-separation directory (normally made by the init script)."""
    path = Path("/run/sshd")
    if os.geteuid() == 0 and not path.is_dir():
        try:
            path.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            pytest.skip(f"sshd needs {path} and it cannot be created: {exc}")


def _write_config(work: Path, port: int) -> Path:
    config = work / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1",
        f"Port {port}",
        f"HostKey {work / 'host_ed25519'}",
        f"PidFile {work / 'sshd.pid'}",
        f"AuthorizedKeysFile {work / 'authorized_keys'}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "StrictModes no",
        "UsePAM no",
        "MaxStartups 50",
        "Subsystem sftp internal-sftp",
        "LogLevel VERBOSE",
        "",
    ]))
    return config


def _wait_listening(process: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sshd exited with code {process.returncode}: {log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on port {port} within {START_TIMEOUT} s: {log_path.read_text()[-2000:]}")


def start_sshd(work: Path) -> tuple[SshdServer, subprocess.Popen]:
    """Start an sshd for one test module in ``work``; the caller terminates the process."""
    keygen = _require_tools()
    _privsep_dir()
    work.mkdir(parents=True, exist_ok=True)
    _keygen(keygen, work / "host_ed25519", "segzoo-test-host")
    _keygen(keygen, work / "id_ed25519", "segzoo-test-client")
    shutil.copy(work / "id_ed25519.pub", work / "authorized_keys")
    host_key = (work / "host_ed25519.pub").read_text().split()
    board_root = work / "board"
    board_root.mkdir()
    last_error = None
    for _ in range(3):  # the free port may be taken between probing and binding
        port = _free_port()
        (work / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        log_path = work / "sshd.log"
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(_write_config(work, port))],
                                       stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _wait_listening(process, port, log_path)
        except RuntimeError as exc:
            last_error = exc
            if process.poll() is None:
                process.kill()
                process.wait()
            continue
        server = SshdServer(host="127.0.0.1", port=port, user=getpass.getuser(),
                            identity_file=work / "id_ed25519", known_hosts=work / "known_hosts",
                            board_root=board_root, workdir=work, pid=process.pid)
        return server, process
    raise RuntimeError(f"could not start sshd: {last_error}")


@pytest.fixture(scope="module")
def sshd_server(tmp_path_factory) -> Iterator[SshdServer]:
    """A real sshd on 127.0.0.1 for this test module, stopped at teardown."""
    server, process = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.drop_connections()
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class BoardRun:
    """One image deployed and segmented on the loopback board, and segzoo's own scores from the same file."""

    board_labels: np.ndarray
    rgb: np.ndarray
    runner: object
    pp: object
    output: np.ndarray   # the model's raw output for the image
    scores: np.ndarray   # the output restored to the image's size (what the board application takes the argmax of)


def deploy_one_image(server: SshdServer, cfg: dict, model: Path, image: Path, tmp_path: Path, folder: str) -> BoardRun:
    """Run ``deployment`` of ``model`` (config ``cfg``) to ``server`` with ``image`` as the launch input; the board's
    labels beside segzoo's restored scores."""
    from segzoo.cli import run
    from segzoo.data.loader import read_image
    from segzoo.data.masks import read_mask
    from segzoo.preprocess import Preprocessing, restore_logits, to_model_input
    from segzoo.runners import load_runner

    board_dir = tmp_path / "board images"
    board_dir.mkdir()
    (board_dir / image.name).write_bytes(image.read_bytes())
    deploy_path = str(server.board_root / folder)
    cfg["operation_mode"] = "deployment"
    cfg["general"]["model_path"] = str(model)
    cfg["deployment"] = server.deployment(deploy_path, str(board_dir))
    summary = run(cfg, run_dir=tmp_path / "deploy")["deployment"]
    assert summary["verified"] is True and summary["launched"] is True
    board_labels = read_mask(Path(deploy_path + "_results") / f"{image.stem}_mask.png")
    rgb = read_image(image)
    runner = load_runner(model)
    pp = Preprocessing(**cfg["preprocessing"]["resizing"], color_mode=cfg["preprocessing"]["color_mode"])
    x, placement = to_model_input(rgb, runner.input_hw, pp)
    output = runner.predict(x[None])[0]
    return BoardRun(board_labels, rgb, runner, pp, output, restore_logits(output, placement))
