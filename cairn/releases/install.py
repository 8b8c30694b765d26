"""Install a verified release directory atomically in place of the previous one.

Downloads go to a staging directory beside the destination (same filesystem, so renames are
atomic). Only a fully verified staging directory is swapped in: the old release is renamed aside
to `.<name>.previous`, the new one renamed into place, then the old one removed. If the process
dies between the two renames, the next install puts the previous release back first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cairn.protocol.errors import ReleaseError
from cairn.releases.files import fsync_directory
from cairn.releases.layout import INSTALL_METADATA_DIR, MANIFEST_FILE
from cairn.releases.manifest import read_manifest
from cairn.releases.version import ReleaseVersion


@contextmanager
def staging_dir(destination: Path) -> Iterator[Path]:
    """A fresh directory beside `destination`; whatever is left of it is removed on exit."""
    destination = Path(destination)
    _check_replaceable(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def install_dir(staging: Path, destination: Path) -> None:
    """Make `staging` (fully written and verified) the release at `destination`."""
    destination = Path(destination)
    recover_interrupted_install(destination)
    _check_replaceable(destination)
    _fsync_tree(staging)
    os.chmod(staging, 0o755)
    previous = _previous(destination)
    if destination.exists():
        os.rename(destination, previous)
    try:
        os.rename(staging, destination)
    except BaseException:
        if previous.exists():
            os.rename(previous, destination)
        raise
    fsync_directory(destination.parent)
    shutil.rmtree(previous, ignore_errors=True)


def installed_version(destination: Path) -> ReleaseVersion | None:
    """The version of the release installed at `destination`, None if there is none (or it is unreadable)."""
    if not (Path(destination) / INSTALL_METADATA_DIR).is_dir():
        return None
    try:
        return read_manifest(destination).version
    except (OSError, ReleaseError):
        return None


def recover_interrupted_install(destination: Path) -> None:
    """Finish or undo a swap that was interrupted between its two renames."""
    previous = _previous(Path(destination))
    if not previous.exists():
        return
    if destination.exists():
        shutil.rmtree(previous)
    else:
        os.rename(previous, destination)


def _check_replaceable(destination: Path) -> None:
    """Only an empty directory or a release installed by us may be replaced: never a user's folder."""
    if destination.is_symlink():
        raise ReleaseError(f"{destination} is a symlink; give the real directory")
    if not destination.exists():
        return
    if not destination.is_dir():
        raise ReleaseError(f"{destination} exists and is not a directory")
    installed = (destination / INSTALL_METADATA_DIR).is_dir() and (destination / MANIFEST_FILE).is_file()
    if not installed and any(destination.iterdir()):
        raise ReleaseError(f"{destination} is not empty and holds no installed release; refusing to replace it")


def _previous(destination: Path) -> Path:
    return destination.parent / f".{destination.name}.previous"


def _fsync_tree(directory: Path) -> None:
    """Flush every file and directory below `directory` before it is renamed into place."""
    for current, _, files in os.walk(directory):
        for name in files:
            fd = os.open(os.path.join(current, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(Path(current))
