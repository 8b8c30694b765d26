"""File helpers the release code needs beyond cairn.protocol.fsutil: streamed hashing and atomic copies.

Weights can be gigabytes, so nothing here reads a whole file into memory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cairn.protocol.fsutil import fsync_directory  # noqa: F401 (re-exported for the release writers)

_CHUNK = 1 << 20


def file_sha256(path: Path) -> tuple[str, int]:
    """(hex sha256, length in bytes) of a file, read in chunks."""
    digest = hashlib.sha256()
    length = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length


def atomic_copy(source: Path, destination: Path, mode: int = 0o644) -> None:
    """Copy to a temp file beside `destination`, fsync, then rename: readers never see half a file."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, destination)
        fsync_directory(destination.parent)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
