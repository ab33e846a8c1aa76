"""SSH and SFTP to an STM32MP2 board, with verified host keys and key-based authentication only.

Every remote command is built with ``shlex.quote`` on each argument, so values from a configuration never reach
the board's shell unquoted. Directories are uploaded beside their destination and renamed into place, so a board
never holds a half-written deployment. Errors are ``RemoteError`` with a message that says what to fix; no
passphrase or key material is ever logged or put into a message.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
import posixpath
import secrets
import select
import shlex
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segzoo.errors import ConfigError, SegzooError

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
_READ_SIZE = 65536


class RemoteError(SegzooError):
    """The board cannot be reached, refuses us, drops the connection, or a command on it fails."""

    exit_code = 5


class RemoteCommandError(RemoteError):
    """A remote command exited non-zero; ``result`` holds its exit code and output."""

    def __init__(self, message: str, result: CompletedRemote) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class BoardTarget:
    """Where the board is and how to log in (a key, never a password)."""

    host: str
    port: int = 22
    user: str = "root"
    identity_file: str | None = None
    strict_host_key_checking: bool = True
    known_hosts: str | None = None
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.host or any(c.isspace() for c in self.host):
            raise ConfigError(f"board host {self.host!r} is not a host name or address")
        if not 0 < int(self.port) < 65536:
            raise ConfigError(f"board port {self.port} is not in 1..65535")
        if not self.user:
            raise ConfigError("board user must not be empty")
        if self.connect_timeout <= 0:
            raise ConfigError("board connect_timeout must be positive")

    @property
    def address(self) -> str:
        """``host:port`` as used in messages."""
        return f"{self.host}:{self.port}"

    @classmethod
    def from_section(cls, section: Any, strict_host_key_checking: bool | None = None) -> BoardTarget:
        """The board of a config section (``benchmarking.board``: ``host``; ``deployment.hardware_setup``:
        ``ip_address``); ``strict_host_key_checking`` when the section does not hold it."""
        host = getattr(section, "host", None) or getattr(section, "ip_address", None)
        strict = getattr(section, "strict_host_key_checking", strict_host_key_checking)
        return cls(host=host, port=section.port, user=section.user, identity_file=section.identity_file,
                   known_hosts=section.known_hosts, strict_host_key_checking=True if strict is None else strict)

    @property
    def known_hosts_path(self) -> Path:
        """The known_hosts file used to verify the board's host key."""
        return Path(self.known_hosts or DEFAULT_KNOWN_HOSTS).expanduser()


@dataclass(frozen=True)
class CompletedRemote:
    """Exit code and decoded output of a remote command (exit code -1: no status, e.g. killed)."""

    exit_code: int
    stdout: str
    stderr: str


def remote_command(argv: list[str]) -> str:
    """The shell command line for ``argv``: every argument quoted, nothing left for the shell to expand."""
    if not argv:
        raise ValueError("empty remote command")
    return " ".join(shlex.quote(str(arg)) for arg in argv)


def _paramiko() -> Any:
    """paramiko, imported when a connection is made (it is only needed for the board)."""
    try:
        import paramiko
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RemoteError("the Python package paramiko is needed to talk to the board: pip install paramiko") from exc
    return paramiko


def _unknown_host_policy(paramiko: Any) -> Any:
    """A paramiko policy that refuses unknown host keys and says which key was offered."""

    class RefuseUnknownHostKey(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            raise _UnknownHostKey(hostname, key.get_name(), _fingerprint(key))

    return RefuseUnknownHostKey()


class _UnknownHostKey(Exception):
    def __init__(self, hostname: str, key_type: str, fingerprint: str) -> None:
        super().__init__(hostname)
        self.hostname, self.key_type, self.fingerprint = hostname, key_type, fingerprint


def _fingerprint(key: Any) -> str:
    """OpenSSH-style ``SHA256:...`` fingerprint of a public key."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class Remote:
    """An SSH connection to a board; use as a context manager."""

    def __init__(self, target: BoardTarget) -> None:
        self.target = target
        self._client: Any = None
        self._sftp: Any = None

    # -- connection -------------------------------------------------------------------------------------------

    def __enter__(self) -> Remote:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def connect(self) -> None:
        """Open the connection: host key checked against known_hosts, then key-based login."""
        paramiko = _paramiko()
        target = self.target
        client = paramiko.SSHClient()
        known_hosts = target.known_hosts_path
        if known_hosts.is_file():
            try:
                client.load_host_keys(str(known_hosts))
            except (OSError, paramiko.SSHException) as exc:
                raise RemoteError(f"cannot read known_hosts file {known_hosts}: {exc}") from exc
        if target.strict_host_key_checking:
            client.set_missing_host_key_policy(_unknown_host_policy(paramiko))
        else:
            log.warning("Host key checking is OFF for %s: the board's identity is not verified, so a machine "
                        "impersonating it would receive the deployment. Add its key to %s and turn checking on.",
                        target.address, known_hosts)
            client.set_missing_host_key_policy(paramiko.WarningPolicy())
        log.info("Connecting to %s@%s", target.user, target.address)
        try:
            client.connect(
                target.host, port=int(target.port), username=target.user,
                key_filename=str(Path(target.identity_file).expanduser()) if target.identity_file else None,
                allow_agent=target.identity_file is None, look_for_keys=target.identity_file is None,
                timeout=target.connect_timeout, banner_timeout=target.connect_timeout,
                auth_timeout=target.connect_timeout, channel_timeout=target.connect_timeout)
        except BaseException as exc:
            client.close()
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            raise self._connect_error(exc, paramiko) from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(15)
        self._client = client

    def close(self) -> None:
        """Close the SFTP session and the connection (safe to call twice)."""
        for handle in (self._sftp, self._client):
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # closing a dead connection may fail; nothing to do about it
                    pass
        self._sftp = self._client = None

    def _connect_error(self, exc: BaseException, paramiko: Any) -> RemoteError:
        """A clear RemoteError for a failed connection (never containing key material)."""
        return (self._host_key_error(exc, paramiko) or self._auth_error(exc, paramiko)
                or self._network_error(exc, paramiko))

    def _host_key_error(self, exc: BaseException, paramiko: Any) -> RemoteError | None:
        target = self.target
        keyscan = (f"ssh-keyscan -p {target.port} {shlex.quote(target.host)} >> {target.known_hosts_path}"
                   if target.port != 22 else f"ssh-keyscan {shlex.quote(target.host)} >> {target.known_hosts_path}")
        if isinstance(exc, _UnknownHostKey):
            return RemoteError(
                f"host key of {target.address} is unknown: {exc.key_type} {exc.fingerprint} is not in "
                f"{target.known_hosts_path}. Check that fingerprint on the board's console (ssh-keygen -lf "
                f"/etc/ssh/ssh_host_{_key_file_kind(exc.key_type)}_key.pub), then add the key: {keyscan}")
        if isinstance(exc, paramiko.BadHostKeyException):
            return RemoteError(
                f"host key of {target.address} CHANGED: it offered {exc.key.get_name()} {_fingerprint(exc.key)} but "
                f"{target.known_hosts_path} expects {_fingerprint(exc.expected_key)}. Either the board was reinstalled "
                "or another machine is answering at that address. Once you have checked the new fingerprint on the "
                f"board's console, replace the old entry: ssh-keygen -R {shlex.quote(_known_hosts_name(target))} "
                f"-f {target.known_hosts_path} && {keyscan}")
        return None

    def _auth_error(self, exc: BaseException, paramiko: Any) -> RemoteError | None:
        target = self.target
        key = (f"key file {target.identity_file}" if target.identity_file
               else "the ssh-agent or default keys (~/.ssh/id_*)")
        if isinstance(exc, paramiko.PasswordRequiredException):
            return RemoteError(
                f"{key} is protected by a passphrase, which segzoo never asks for: load it into ssh-agent "
                f"(ssh-add {target.identity_file or '<key>'}) and leave identity_file unset so the agent is used")
        if isinstance(exc, paramiko.AuthenticationException):
            return RemoteError(
                f"authentication refused by {target.address} for user {target.user!r} with {key}: add the public "
                f"key to ~{target.user}/.ssh/authorized_keys on the board (password login is not used)")
        if isinstance(exc, FileNotFoundError) and target.identity_file:
            return RemoteError(f"identity file {target.identity_file} not found")
        return None

    def _network_error(self, exc: BaseException, paramiko: Any) -> RemoteError:
        target = self.target
        if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
            reasons = "; ".join(sorted({(e.strerror or str(e)) for e in exc.errors.values()})) or str(exc)
            return RemoteError(f"cannot reach the board at {target.address}: {reasons}. Check that it is powered, "
                               "on the network, and that sshd listens on that port")
        if isinstance(exc, socket.gaierror):
            return RemoteError(f"cannot resolve board host {target.host!r}: {exc.strerror}")
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return RemoteError(f"cannot reach the board at {target.address}: no answer within "
                               f"{target.connect_timeout:g} s")
        if isinstance(exc, OSError):
            return RemoteError(f"cannot reach the board at {target.address}: {exc.strerror or exc}")
        if isinstance(exc, (paramiko.SSHException, EOFError)):
            return RemoteError(f"SSH handshake with {target.address} failed ({exc or type(exc).__name__}) within "
                               f"{target.connect_timeout:g} s: is that the board's sshd port, and is sshd running?")
        return RemoteError(f"cannot connect to {target.address}: {type(exc).__name__}: {exc}")

    def _require_client(self) -> Any:
        if self._client is None:
            raise RemoteError(f"not connected to {self.target.address}: use 'with Remote(target) as remote:'")
        return self._client

    def _alive(self) -> bool:
        transport = self._client.get_transport() if self._client is not None else None
        return bool(transport is not None and transport.is_active())

    def _dropped(self, action: str, exc: BaseException) -> RemoteError:
        return RemoteError(f"connection to {self.target.address} dropped while {action} "
                           f"({type(exc).__name__}: {exc or 'connection closed'})")

    # -- commands ---------------------------------------------------------------------------------------------

    def run(self, argv: list[str], *, timeout: float, check: bool = True) -> CompletedRemote:
        """Run ``argv`` on the board (each argument quoted) and collect its output.

        ``check``: a non-zero exit is a RemoteCommandError (exit 127: "<argv[0]> not found on the board").
        """
        command = remote_command(argv)
        client = self._require_client()
        log.debug("On %s: %s", self.target.address, command)
        try:
            channel = client.get_transport().open_session(timeout=self.target.connect_timeout)
            channel.exec_command(command)
            result = _collect(channel, timeout)
        except _Timeout:
            raise RemoteError(f"{argv[0]} did not finish within {timeout:g} s on {self.target.address}") from None
        except (OSError, EOFError, _paramiko().SSHException) as exc:
            raise self._dropped(f"running {argv[0]}", exc) from exc
        if check and result.exit_code != 0:
            raise RemoteCommandError(_failure_message(argv, result, self.target), result)
        return result

    # -- files ------------------------------------------------------------------------------------------------

    def sftp(self) -> Any:
        """The SFTP session (opened on first use)."""
        if self._sftp is None:
            try:
                self._sftp = self._require_client().open_sftp()
            except (OSError, EOFError, _paramiko().SSHException) as exc:
                raise RemoteError(f"cannot open SFTP on {self.target.address} ({exc}); is the sftp subsystem "
                                  "enabled in the board's sshd_config?") from exc
        return self._sftp

    def exists(self, path: str) -> bool:
        """True if ``path`` exists on the board (file, directory or link)."""
        try:
            self.sftp().lstat(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise self._fs_error(exc, f"checking {path}") from exc
        return True

    def remove_tree(self, path: str) -> None:
        """Delete a file or a directory tree on the board (absent: nothing to do)."""
        path = _check_remote_path(path)
        sftp = self.sftp()
        try:
            for entry, is_dir in _walk_bottom_up(sftp, path):
                (sftp.rmdir if is_dir else sftp.remove)(entry)
        except FileNotFoundError:
            return
        except (OSError, EOFError) as exc:
            raise self._fs_error(exc, f"removing {path}") from exc

    def upload_dir(self, local_dir: str | Path, remote_dir: str, *,
                   check: Callable[[str], None] | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> None:
        """Upload a local directory to ``remote_dir`` atomically.

        Files go to ``remote_dir.tmp-<random>``; ``check(tmp_dir)`` (if given) may then inspect them on the board;
        finally an existing ``remote_dir`` is renamed aside, the new one renamed in, and the old one deleted.
        On any failure the temporary directory is removed (reconnecting if the connection dropped) and an old
        ``remote_dir`` is left as it was. ``progress(remote_file, sent, total)`` is called while files are sent.
        """
        local = Path(local_dir)
        if not local.is_dir():
            raise RemoteError(f"{local}: not a directory, nothing to upload")
        remote_dir = _check_remote_path(remote_dir)
        token = secrets.token_hex(4)
        tmp, old = f"{remote_dir}.tmp-{token}", f"{remote_dir}.old-{token}"
        created: list[str] = []
        try:
            created = self._makedirs(posixpath.dirname(remote_dir))
            self._put_tree(local, tmp, progress)
            if check is not None:
                check(tmp)
            self._swap_in(tmp, remote_dir, old)
        except BaseException as exc:
            dropped = self._connection_lost(exc)
            self._clean_failed_upload(tmp, old, remote_dir, created)
            if isinstance(exc, RemoteError) or not isinstance(exc, Exception):
                raise
            if dropped:
                raise self._dropped(f"uploading {local} to {remote_dir}", exc) from exc
            raise self._fs_error(exc, f"uploading {local} to {remote_dir}") from exc
        log.info("Uploaded %s to %s:%s", local, self.target.address, remote_dir)

    def _makedirs(self, path: str) -> list[str]:
        """Create ``path`` and missing parents on the board; return the directories created (outermost first)."""
        missing: list[str] = []
        while path not in ("", "/", "."):
            try:
                if stat.S_ISDIR(self.sftp().stat(path).st_mode):
                    break
                raise RemoteError(f"{path} on {self.target.address} is a file, not a directory: choose another "
                                  "deployment path")
            except FileNotFoundError:
                missing.append(path)
                path = posixpath.dirname(path)
        created: list[str] = []
        for directory in reversed(missing):
            try:
                self.sftp().mkdir(directory)
            except OSError as exc:
                for made in reversed(created):
                    self.sftp().rmdir(made)
                reason = os.strerror(exc.errno) if exc.errno else str(exc)
                raise RemoteError(f"cannot create directory {directory} on {self.target.address}: {reason}; choose "
                                  f"a deployment path that user {self.target.user!r} can write") from exc
            created.append(directory)
        return created

    def _put_tree(self, local: Path, remote: str, progress: Callable[[str, int, int], None] | None) -> None:
        sftp = self.sftp()
        sftp.mkdir(remote, mode=0o755)
        for root, dirs, files in os.walk(local):
            rel = Path(root).relative_to(local).as_posix()
            base = remote if rel == "." else posixpath.join(remote, rel)
            for name in sorted(dirs):
                sftp.mkdir(posixpath.join(base, name), mode=0o755)
            for name in sorted(files):
                source, target = Path(root) / name, posixpath.join(base, name)
                callback = (lambda sent, total, _t=target: progress(_t, sent, total)) if progress else None
                sftp.put(str(source), target, callback=callback, confirm=True)
                sftp.chmod(target, stat.S_IMODE(source.stat().st_mode))

    def _swap_in(self, tmp: str, remote_dir: str, old: str) -> None:
        sftp = self.sftp()
        if not self.exists(remote_dir):
            sftp.rename(tmp, remote_dir)
            return
        sftp.rename(remote_dir, old)
        try:
            sftp.rename(tmp, remote_dir)
        except BaseException:
            sftp.rename(old, remote_dir)
            raise
        try:
            self.remove_tree(old)
        except RemoteError as exc:
            log.warning("New files are in place at %s but the previous copy could not be deleted: %s", remote_dir, exc)

    def _clean_failed_upload(self, tmp: str, old: str, remote_dir: str, created: list[str]) -> None:
        """Remove what a failed upload left (reconnecting if the connection is gone); restore an old copy."""
        paramiko = _paramiko()
        for attempt in range(2):
            try:
                if attempt or not self._alive():
                    self.close()
                    self.connect()
                if self.exists(old) and not self.exists(remote_dir):
                    self.sftp().rename(old, remote_dir)
                self.remove_tree(tmp)
                for directory in reversed(created):
                    self._rmdir_if_empty(directory)
                return
            except (RemoteError, OSError, EOFError, paramiko.SSHException) as exc:
                error = exc
        log.error("Could not clean up after the failed upload: remove %s:%s by hand (%s: %s)",
                  self.target.address, tmp, type(error).__name__, error)

    def _rmdir_if_empty(self, directory: str) -> None:
        """Remove a directory this upload created, unless something else was put in it meanwhile."""
        try:
            self.sftp().rmdir(directory)
        except OSError as exc:
            if self._connection_lost(exc):
                raise
            log.info("Left %s on the board: it is no longer empty", directory)

    def _connection_lost(self, exc: BaseException) -> bool:
        """True when ``exc`` (or the state of the transport) says the connection itself failed."""
        lost = (EOFError, ConnectionError, socket.timeout, _paramiko().SSHException)
        return not self._alive() or isinstance(exc, lost)

    def _fs_error(self, exc: BaseException, action: str) -> RemoteError:
        if self._connection_lost(exc):
            return self._dropped(action, exc)
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else str(exc) or type(exc).__name__
        return RemoteError(f"{action} on {self.target.address} failed: {reason}")


class _Timeout(Exception):
    pass


def _collect(channel: Any, timeout: float) -> CompletedRemote:
    """Read stdout and stderr of a channel until the command exits (both drained, no pipe deadlock)."""
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    fd = channel.fileno()
    while True:
        while channel.recv_ready():
            out += channel.recv(_READ_SIZE)
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(_READ_SIZE)
        # exit status comes after all output; a closed channel also counts as "ready" (status -1)
        if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            channel.close()
            raise _Timeout()
        select.select([fd], [], [], min(remaining, 0.05))
    code = channel.recv_exit_status()
    transport = channel.get_transport()
    channel.close()
    if code == -1 and (transport is None or not transport.is_active()):
        raise EOFError("connection closed before the command exited")
    return CompletedRemote(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def _failure_message(argv: list[str], result: CompletedRemote, target: BoardTarget) -> str:
    if result.exit_code == 127:
        return f"{argv[0]} not found on the board {target.address}"
    tail = _tail(result.stderr or result.stdout)
    message = f"{argv[0]} failed on the board {target.address} (exit code {result.exit_code})"
    return f"{message}: {tail}" if tail else message


def _tail(text: str, lines: int = 8) -> str:
    """The last non-empty lines of a command's output, for error messages."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return "\n".join(kept)


def _check_remote_path(path: str) -> str:
    """Normalise a remote path; refuse the root, the home directory itself and '..' components."""
    path = str(path)
    if ".." in path.split("/"):
        raise RemoteError(f"remote path {path!r} must not contain '..'")
    norm = posixpath.normpath(path)
    if norm in ("/", ".", "") or path.strip() == "":
        raise RemoteError(f"remote path {path!r} is not a directory segzoo may replace")
    return norm


def _walk_bottom_up(sftp: Any, path: str) -> Iterator[tuple[str, bool]]:
    """(path, is_dir) of a remote tree, children before their directory; links are not followed."""
    attrs = sftp.lstat(path)
    if not stat.S_ISDIR(attrs.st_mode):
        yield path, False
        return
    for entry in sftp.listdir_attr(path):
        child = posixpath.join(path, entry.filename)
        if stat.S_ISDIR(entry.st_mode):
            yield from _walk_bottom_up(sftp, child)
        else:
            yield child, False
    yield path, True


def _known_hosts_name(target: BoardTarget) -> str:
    return target.host if target.port == 22 else f"[{target.host}]:{target.port}"


def _key_file_kind(key_type: str) -> str:
    """ssh-ed25519 -> ed25519, ecdsa-sha2-nistp256 -> ecdsa, ssh-rsa -> rsa (names of /etc/ssh host key files)."""
    if "ed25519" in key_type:
        return "ed25519"
    if "ecdsa" in key_type:
        return "ecdsa"
    return "rsa"
