"""Atomic file output with sha256 sidecars: every file appears whole or not at all, and damage is detectable.

Every file written here appears under its name only once complete (written to a temporary file beside it, then
renamed). Unless asked not to, it is accompanied by ``<file>.sha256``, a ``sha256sum``-compatible line
(``<hex>  <name>``), so that segzoo detects damage anywhere in a file it wrote when it reads it back
(:func:`verified`); ``sha256sum -c best_model.keras.sha256`` checks it by hand. Files without a sidecar
(third-party models, runs of older versions) are read without a check.

The order of the renames keeps a file and its sidecar consistent through a crash at any point: the data and its
sidecar are both written to temporary files first (a full disk fails here, before anything is renamed), the old
sidecar is removed, the data is renamed into place, then the sidecar. A crash leaves either the old file, or the new
one without a sidecar, or the new one with its sidecar; never a file with a sidecar that does not match it.
Temporary names contain :data:`TEMP_MARK`; :func:`remove_stale_temporaries` clears those a killed run left behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from segzoo.errors import ModelError, OutputError

TEMP_MARK = ".segzoo-tmp-"
"""Part of every temporary name segzoo writes (files and staging folders); no final file name contains it."""
SIDECAR_SUFFIX = ".sha256"
CHUNK = 1 << 20
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_SIDECAR_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")
"""A sidecar is exactly the line ``sha256sum`` writes (one line end allowed): any other byte changed is damage."""


# --------------------------------------------------------------------------------------------------- checksums
def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """``<file>.sha256``: where the checksum of ``path`` is kept."""
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 recorded for ``path`` in its sidecar, or None without one; ModelError for a malformed sidecar
    (anything but the ``sha256sum`` line, as strictly as ``sha256sum -c`` reads it: stray whitespace is damage)."""
    sidecar = sidecar_path(path)
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{sidecar}: cannot read the checksum of {Path(path).name}: {exc}") from exc
    match = _SIDECAR_LINE.fullmatch(text.removesuffix("\n").removesuffix("\r"))
    if match is None or match.group(2) != Path(path).name:
        raise ModelError(f"{sidecar}: malformed checksum file (expected '<sha256>  {Path(path).name}'); it was "
                         "damaged after segzoo wrote it. Re-create the file it describes (re-run the step that "
                         "wrote it), or delete the checksum file if you changed the file on purpose")
    return match.group(1)


def verified(path: str | Path) -> Path:
    """``path``, after checking it against its sha256 sidecar when it has one (files segzoo wrote).

    ModelError naming the file when its content differs from the recorded checksum: the file was damaged (or
    edited) after segzoo wrote it. A file without a sidecar is returned unchecked.
    """
    path = Path(path)
    expected = recorded_sha256(path)
    if expected is None or not path.is_file():
        return path
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"{path}: damaged: its sha256 ({actual[:16]}...) differs from the one segzoo recorded "
                         f"when it wrote the file ({sidecar_path(path).name}: {expected[:16]}...). Re-create it "
                         "(re-run the step that wrote it) or restore a good copy; delete the .sha256 file only if "
                         "you changed the file on purpose")
    return path


def write_sidecar(path: str | Path) -> Path:
    """Record the sha256 of an existing, complete file ``path`` (for files assembled outside :func:`atomic_path`)."""
    path = Path(path)
    sidecar = sidecar_path(path)
    with atomic_path(sidecar, checksum=False) as tmp:
        tmp.write_text(f"{sha256_file(path)}  {path.name}\n", encoding="utf-8")
    return sidecar


# ------------------------------------------------------------------------------------------------ disk full
def disk_full_cause(exc: BaseException) -> OSError | None:
    """The disk-full ``OSError`` (ENOSPC, EDQUOT, EFBIG) behind ``exc`` (itself or in its cause chain), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return current
        if "No space left on device" in str(current):  # wrapped by a library that dropped the errno
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        current = current.__cause__ or current.__context__
    return None


def output_error(path: str | Path, cause: OSError) -> OutputError:
    """The user-facing error for a file that could not be written for lack of space."""
    folder = Path(path).parent
    try:
        free = f"{shutil.disk_usage(folder).free / 1e6:.1f} MB free"
    except OSError:
        free = "free space unknown"
    return OutputError(f"{path}: cannot write it: {os.strerror(cause.errno) if cause.errno else cause} "
                       f"({free} in {folder}). Nothing half-written was left under that name; free some space or "
                       "choose another run directory (hydra.run.dir), then run the same command again")


# ---------------------------------------------------------------------------------------------------- writing
def _temporary(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path) -> None:
    """Flush a written file to the disk, so that a rename never publishes data still only in memory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, suffix: str | None = None, *, checksum: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` with its sha256 sidecar.

    ``suffix`` defaults to the target's own suffix so that writers that infer the format from the name (Keras,
    matplotlib, OpenCV) keep working. ``checksum=False`` writes no sidecar (an existing one is removed). A full
    disk is an :class:`~segzoo.errors.OutputError` naming the file; nothing is left under its name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary(path, suffix if suffix is not None else path.suffix)
    except OSError as exc:
        cause = disk_full_cause(exc)
        raise (output_error(path, cause) if cause else exc) from exc
    side_tmp: Path | None = None
    try:
        yield tmp
        _fsync(tmp)
        if checksum:
            side_tmp = _temporary(path, SIDECAR_SUFFIX)
            side_tmp.write_text(f"{sha256_file(tmp)}  {path.name}\n", encoding="utf-8")
        sidecar_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
        if side_tmp is not None:
            os.replace(side_tmp, sidecar_path(path))
    except Exception as exc:
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        raise output_error(path, cause) from exc
    finally:
        for leftover in (tmp, side_tmp):
            if leftover is not None and leftover.exists():
                leftover.unlink()


def write_text(path: str | Path, text: str, *, checksum: bool = True) -> Path:
    """Write text atomically (with its sha256 sidecar unless ``checksum=False``)."""
    with atomic_path(path, checksum=checksum) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data: Any, *, checksum: bool = True) -> Path:
    """Write JSON (indented, keys in insertion order) atomically."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n", checksum=checksum)


def write_with(path: str | Path, writer: Callable[[Path], Any], *, checksum: bool = True) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path, checksum=checksum) as tmp:
        writer(tmp)
    return Path(path)


def copy_file(source: str | Path, target: str | Path, *, checksum: bool = True) -> Path:
    """Copy ``source`` onto ``target`` atomically (metadata kept). A source with a sidecar is verified first and the
    copy must have the same sha256; the copy gets its own sidecar unless ``checksum=False``."""
    source = verified(source)
    expected = recorded_sha256(source)

    def copy(tmp: Path) -> None:
        shutil.copy2(source, tmp)
        if expected is not None and sha256_file(tmp) != expected:
            raise ModelError(f"{target}: the copy of {source} differs from it (sha256); check the disk")

    return write_with(target, copy, checksum=checksum)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Save a matplotlib Figure as PNG atomically, then free it."""
    try:
        return write_with(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        fig.clear()


def staging_dir(parent: str | Path, name: str) -> Path:
    """A new empty folder in ``parent`` for assembling ``name`` before renaming it into place (temporary name)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{name}{TEMP_MARK}", dir=parent))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` (a folder already there is
    moved aside first and deleted after), on failure it is deleted and ``path`` is untouched."""
    path = Path(path)
    stage = staging_dir(path.parent, path.name)
    try:
        yield stage
        if path.exists():
            old = staging_dir(path.parent, f"{path.name}.old")
            os.replace(path, old / path.name)
            os.replace(stage, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, path)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)


STALE_DEPTH = 3
"""How deep below a run directory segzoo writes (``deployment/stedgeai/x``): where stale temporaries are looked for."""


def remove_stale_temporaries(root: str | Path, depth: int = STALE_DEPTH) -> list[Path]:
    """Delete the temporary files and staging folders that an interrupted run left in ``root`` (and its folders, down
    to ``depth`` levels; a run directory that holds a dataset is not walked through)."""
    root = Path(root)
    if not root.is_dir():
        return []
    patterns = ("/".join(["*"] * level + [f"*{TEMP_MARK}*"]) for level in range(depth + 1))
    stale = sorted({p for pattern in patterns for p in root.glob(pattern)}, key=lambda p: len(p.parts))
    removed: list[Path] = []
    for path in stale:
        if any(parent in removed for parent in path.parents):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _json_default(obj: Any) -> Any:
    """JSON encoder for NumPy scalars and arrays and paths."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
