"""segzoo.remote against a real OpenSSH server on 127.0.0.1 (tests/sshd.py): quoting, atomic uploads, host keys,
authentication and dropped connections."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from pathlib import Path

import pytest
from sshd import sshd_server  # noqa: F401  (fixture)

from segzoo.errors import ConfigError
from segzoo.remote import BoardTarget, Remote, RemoteCommandError, RemoteError, remote_command


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "."))


def _make_dir(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_run_passes_metacharacters_literally(sshd_server, tmp_path):
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("x")
    touched = tmp_path / "touched"
    args = [f"; rm -rf {canary}", f"$(touch {touched})", f"`touch {touched}`", "it's \"quoted\"",
            "  spaces  inside ", "*", "", "a\nnewline", "$HOME", "&& echo hi | cat > /dev/null"]
    with Remote(sshd_server.target()) as remote:
        result = remote.run([sshd_server.python, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args],
                            timeout=30)
    assert json.loads(result.stdout) == args
    assert (canary / "keep").exists() and not touched.exists()


def test_remote_command_quotes_every_argument():
    assert remote_command(["echo", "a b", "$(x)"]) == "echo 'a b' '$(x)'"
    with pytest.raises(ValueError):
        remote_command([])


def test_run_exit_codes_missing_command_and_timeout(sshd_server):
    with Remote(sshd_server.target()) as remote:
        failed = remote.run(["sh", "-c", "echo out; echo err >&2; exit 3"], timeout=30, check=False)
        assert (failed.exit_code, failed.stdout, failed.stderr) == (3, "out\n", "err\n")
        with pytest.raises(RemoteCommandError, match="exit code 3") as info:
            remote.run(["sh", "-c", "echo boom >&2; exit 3"], timeout=30)
        assert "boom" in str(info.value) and info.value.result.exit_code == 3
        with pytest.raises(RemoteError, match="no-such-tool-xyz not found on the board"):
            remote.run(["no-such-tool-xyz", "--help"], timeout=30)
        with pytest.raises(RemoteError, match="did not finish within 0.5 s"):
            remote.run(["sleep", "5"], timeout=0.5)
        assert remote.run(["true"], timeout=30).exit_code == 0  # the connection survives a timeout


def test_upload_dir_replaces_atomically(sshd_server, tmp_path):
    destination = sshd_server.board_root / "new parent" / "dep loy; $(x)"
    first = _make_dir(tmp_path / "v1", {"a.txt": b"one", "sub/b.bin": os.urandom(1000), "old_only": b"gone later"})
    (first / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (first / "run.sh").chmod(0o755)
    second = _make_dir(tmp_path / "v2", {"a.txt": b"two", "sub/b.bin": os.urandom(3000), "sub/deeper/c": b"c"})
    seen_during_check = {}
    with Remote(sshd_server.target()) as remote:
        remote.upload_dir(first, str(destination))
        assert _tree(destination) == _tree(first)
        assert os.access(destination / "run.sh", os.X_OK)

        def check(tmp: str) -> None:  # the new files are complete while the old ones still serve
            seen_during_check["tmp"] = _tree(Path(tmp))
            seen_during_check["live"] = _tree(destination)

        remote.upload_dir(second, str(destination), check=check)
    assert seen_during_check == {"tmp": _tree(second), "live": _tree(first)}
    assert _tree(destination) == _tree(second)
    assert _siblings(destination) == []


def test_failed_check_keeps_the_old_copy(sshd_server, tmp_path):
    destination = sshd_server.board_root / "kept"
    old = _make_dir(tmp_path / "old", {"x": b"old"})
    new = _make_dir(tmp_path / "new", {"x": b"new"})

    def refuse(tmp: str) -> None:
        raise RemoteError("verification failed")

    with Remote(sshd_server.target()) as remote:
        remote.upload_dir(old, str(destination))
        with pytest.raises(RemoteError, match="verification failed"):
            remote.upload_dir(new, str(destination), check=refuse)
    assert _tree(destination) == {"x": b"old"}
    assert _siblings(destination) == []


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "replacing"])
def test_dropped_connection_mid_upload_leaves_nothing_behind(sshd_server, tmp_path, existing):
    destination = sshd_server.board_root / f"dropped-{existing}"
    old = _make_dir(tmp_path / "old", {"model.tflite": b"old model"})
    big = _make_dir(tmp_path / "big", {"model.tflite": os.urandom(4 << 20), "z_after": b"never sent"})
    drops = []

    def kill_server_side(remote_file: str, sent: int, total: int) -> None:
        if sent > (256 << 10) and not drops:
            drops.append(sshd_server.drop_connections())

    with Remote(sshd_server.target()) as remote:
        if existing:
            remote.upload_dir(old, str(destination))
        with pytest.raises(RemoteError, match="dropped while uploading") as info:
            remote.upload_dir(big, str(destination), progress=kill_server_side)
    assert drops and drops[0] >= 1
    assert str(sshd_server.port) in str(info.value)
    assert _siblings(destination) == []
    if existing:
        assert _tree(destination) == {"model.tflite": b"old model"}
    else:
        assert not destination.exists()


def test_upload_refuses_dangerous_paths_and_reports_unwritable(sshd_server, tmp_path):
    local = _make_dir(tmp_path / "l", {"f": b"1"})
    blocker = sshd_server.board_root / "a_file"
    blocker.write_text("not a directory")
    before = sorted(p.name for p in sshd_server.board_root.iterdir())
    with Remote(sshd_server.target()) as remote:
        for bad in ("/", "", "a/../b"):
            with pytest.raises(RemoteError, match="remote path"):
                remote.upload_dir(local, bad)
        with pytest.raises(RemoteError, match="a_file on 127.0.0.1:.* is a file, not a directory"):
            remote.upload_dir(local, str(blocker / "deploy"))
        with pytest.raises(RemoteError, match="cannot create directory /proc/segzoo-test on 127.0.0.1"):
            remote.upload_dir(local, "/proc/segzoo-test/deploy")
        with pytest.raises(RemoteError, match=r"uploading .* to /proc/segzoo-test on .* failed"):
            remote.upload_dir(local, "/proc/segzoo-test")
        assert remote.exists(str(blocker)) and not remote.exists(str(blocker / "deploy"))
        remote.remove_tree(str(sshd_server.board_root / "absent"))  # nothing to do, no error
    assert sorted(p.name for p in sshd_server.board_root.iterdir()) == before


def test_unknown_host_key_is_refused_unless_checking_is_off(sshd_server, tmp_path, caplog):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(RemoteError) as info:
        Remote(sshd_server.target(known_hosts=str(empty))).connect()
    message = str(info.value)
    assert "host key" in message and "unknown" in message and "SHA256:" in message
    assert f"ssh-keyscan -p {sshd_server.port} 127.0.0.1 >> {empty}" in message
    assert "StrictHostKeyChecking" not in message

    caplog.set_level(logging.WARNING, logger="segzoo.remote")
    with pytest.warns(UserWarning, match="Unknown ssh-ed25519 host key"):  # paramiko's WarningPolicy
        with Remote(sshd_server.target(known_hosts=str(empty), strict_host_key_checking=False)) as remote:
            assert remote.run(["echo", "ok"], timeout=30).stdout == "ok\n"
    assert any("Host key checking is OFF" in r.getMessage() for r in caplog.records)


def test_changed_host_key_is_refused(sshd_server, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    kind, blob = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd_server.port} {kind} {blob}\n")
    with pytest.raises(RemoteError, match="CHANGED") as info:
        Remote(sshd_server.target(known_hosts=str(known))).connect()
    assert "ssh-keygen -R" in str(info.value)


def test_wrong_key_names_user_and_key_file_but_not_the_key(sshd_server, tmp_path, caplog):
    key = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RemoteError, match="authentication refused") as info:
        Remote(sshd_server.target(identity_file=str(key))).connect()
    message = str(info.value)
    assert f"user {sshd_server.user!r}" in message and str(key) in message
    secret_lines = [line for line in key.read_text().splitlines() if "PRIVATE KEY" not in line]
    logged = message + "\n".join(r.getMessage() for r in caplog.records)
    assert not any(line in logged for line in secret_lines)


def test_passphrase_protected_key_is_not_unlocked(sshd_server, tmp_path):
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "hunter2-passphrase", "-f", str(key)], check=True)
    with pytest.raises(RemoteError, match="passphrase") as info:
        Remote(sshd_server.target(identity_file=str(key))).connect()
    assert "ssh-add" in str(info.value) and "hunter2" not in str(info.value)


def test_unreachable_port_is_a_clear_error(sshd_server):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RemoteError, match=rf"cannot reach the board at 127\.0\.0\.1:{port}: .*refused"):
        Remote(sshd_server.target(port=port)).connect()


def test_silent_port_times_out_clearly(sshd_server):
    with socket.socket() as sock:  # accepts TCP connections (backlog) but never speaks SSH
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        with pytest.raises(RemoteError, match=rf"SSH handshake with 127\.0\.0\.1:{port} failed"):
            Remote(sshd_server.target(port=port, connect_timeout=1.0)).connect()


def test_board_target_validation():
    with pytest.raises(ConfigError, match="port"):
        BoardTarget(host="board", port=0)
    with pytest.raises(ConfigError, match="host"):
        BoardTarget(host="bad host")
    assert BoardTarget(host="board").known_hosts_path == Path("~/.ssh/known_hosts").expanduser()
