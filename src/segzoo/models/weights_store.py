"""Finding pretrained weight files: the user's folders first, then a cache, then (online) a verified download.

Users put files they downloaded elsewhere into any folder of ``general.weights_dirs`` (read-only folders are fine).
A file found nowhere is downloaded into the cache when the network is reachable, checked against its published
sha256 when one is known, and moved into place atomically. Offline, the error names the file, where it is
published and every folder searched, so the user knows exactly where to put it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from segzoo.errors import ModelError
from segzoo.io import atomic_path, verified

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 30.0
CHUNK = 1 << 20


def segzoo_cache_dir() -> Path:
    """Where downloaded official checkpoints are kept: ``$SEGZOO_HOME/weights`` or ``~/.cache/segzoo/weights``."""
    home = os.environ.get("SEGZOO_HOME")
    base = Path(home).expanduser() if home else Path("~/.cache/segzoo").expanduser()
    return base / "weights"


def keras_cache_dir() -> Path:
    """Keras's own cache of application weights (``$KERAS_HOME/models`` or ``~/.keras/models``)."""
    if "KERAS_HOME" in os.environ:
        return Path(os.environ["KERAS_HOME"]).expanduser() / "models"
    home = Path("~").expanduser()
    return (home / ".keras" if os.access(home, os.W_OK) else Path("/tmp/.keras")) / "models"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_file(names: Sequence[str], folders: Sequence[Path]) -> Path | None:
    """The first ``folder/name`` that is a file, folders in order, names in order within a folder."""
    for folder in folders:
        for name in names:
            candidate = Path(folder).expanduser() / name
            if candidate.is_file():
                return candidate
    return None


def download(url: str, destination: Path, sha256: str | None = None, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``url`` to ``destination`` atomically; verify ``sha256`` (full hex or a prefix) when given."""
    log.info("Downloading %s -> %s", url, destination)
    with atomic_path(destination) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out, CHUNK)
        if sha256:
            actual = sha256_of(tmp)
            if not actual.startswith(sha256.lower()):
                raise ModelError(f"downloaded {url} but its sha256 is {actual}, expected {sha256}: the file is "
                                 "damaged or not the published one; nothing was kept")
    return destination


def locate_weights(names: Sequence[str], *, folders: Sequence[str | Path], cache_dir: Path, url: str | None,
                   sha256: str | None = None, what: str = "weights") -> Path:
    """The path of the first of ``names`` in ``folders`` or ``cache_dir``, else downloaded from ``url``.

    ``names``: acceptable file names, best first; ``url`` is where ``names[0]`` is published (the download saves
    it under that name). ModelError when the file is
    nowhere and cannot be downloaded: it names the file, its URL and every folder searched.
    """
    searched = [Path(f).expanduser() for f in folders] + [cache_dir]
    found = find_file(names, searched)
    if found is not None:
        verified(found)
        if sha256 and found.parent == cache_dir and not sha256_of(found).startswith(sha256.lower()):
            raise ModelError(f"{found}: sha256 does not match the published {sha256}; delete the file and retry")
        log.info("Using %s %s", what, found)
        return found
    folders_text = "; ".join(str(f) for f in searched)
    if url is None:
        raise ModelError(f"{what}: file '{names[0]}' not found in any of: {folders_text}. Put it in one of those "
                         "folders (general.weights_dirs lists your own).")
    try:
        return download(url, cache_dir / names[0], sha256)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise ModelError(
            f"{what}: file '{names[0]}' not found in any of: {folders_text}; downloading it from {url} failed "
            f"({exc}). Fetch it on a machine with network access and put it in one of those folders (or add its "
            "folder to general.weights_dirs).") from None
