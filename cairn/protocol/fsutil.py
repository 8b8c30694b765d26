"""Atomic file writes (a crash leaves either the old file or the new one, never half of either) and bounded reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_dir() -> Path:
    """Where Cairn keeps per-machine caches (pinned roots, the distilled table, the yardstick's scores): $CAIRN_CACHE_DIR,
    else $XDG_CACHE_HOME/cairn, else ~/.cache/cairn. One place, so one variable moves them all."""
    if os.environ.get("CAIRN_CACHE_DIR"):
        return Path(os.environ["CAIRN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cairn"


def atomic_write_bytes(path: Path, data: bytes, mode: int | None = 0o644) -> None:
    """Write to a temp file in the same directory, fsync, then rename over `path` (mode 0644 unless told: secrets pass 0o600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
        fsync_directory(path.parent)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True).encode("utf-8"))


def fsync_directory(directory: Path) -> None:
    """Make renames inside `directory` durable (kill -9 / power loss on ext4); the one copy every writer uses."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_at_most(path: Path, limit: int) -> bytes | None:
    """The file's bytes, or None when it holds more than `limit` (a reader of untrusted or operator-supplied files never
    loads an unbounded amount). OSError passes through for the caller's own one-line message."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    return None if len(data) > limit else data
