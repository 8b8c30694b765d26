"""Atomic, checkable files for an index: every file appears whole under its name or not at all.

`atomic_path` hands out a temporary name in the target's directory and renames it over the target only when the
writer finished (fsync first, then os.replace, then fsync of the directory), so kill -9 at any instant leaves the
old file or the new one. Arrays are streamed to disk rather than copied into a bytes object first: at 1M vectors
the vector file is a GiB. `file_digest` gives the (bytes, sha256) recorded in index.json for each file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import fsync_directory
from cairn.releases.files import file_sha256


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path next to `target`; on success it becomes `target` atomically, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        fsync_directory(target.parent)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def save_array(target: Path, array: np.ndarray) -> None:
    """np.save to `target`, atomically."""
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """An .npy array written by save_array; a truncated or foreign file is one CairnError line."""
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise CairnError(f"{path}: missing; the index is incomplete") from None
    except (ValueError, OSError, EOFError) as error:
        raise CairnError(f"{path}: not a readable vector file ({str(error).splitlines()[0] if str(error) else 'truncated'})") from None


def file_digest(path: Path) -> dict[str, int | str]:
    """{"bytes": size, "sha256": hex} of a file, as index.json records it."""
    sha256, length = file_sha256(path)
    return {"bytes": length, "sha256": sha256}
