"""Offline verification of an installed release: `cairn release verify DIR`.

The trust anchor is, in order: an explicit root file; the root this machine pinned for the repository it
installed this directory from (the machine's install record, never the directory's own `.tuf/source.json`,
which whoever can write the directory can rewrite). Without either, verification is refused: the root copied
into the release only proves the files are intact and consistently signed, not by whom, and is used only
when asked for by name (`--integrity-only`). A directory holding an older release than this machine installed
there, or the same version with another manifest, is refused (a validly signed older release swapped in).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from tuf.api.exceptions import LengthOrHashMismatchError

from cairn.protocol.errors import ReleaseError
from cairn.releases.installs import Install, InstallRecord
from cairn.releases.layout import INSTALL_METADATA_DIR, MANIFEST_FILE
from cairn.releases.manifest import Manifest, check_release_dir, read_manifest
from cairn.releases.offline import ROOT_HISTORY, verify_metadata_chain
from cairn.releases.signed import check_manifest_binding, signed_releases
from cairn.releases.trust import TrustStore, default_cache_dir

logger = logging.getLogger(__name__)


def verify_installed(
    directory: Path,
    root: bytes | None = None,
    cache_dir: Path | None = None,
    warn: Callable[[str], None] = logger.warning,
    integrity_only: bool = False,
) -> Manifest:
    """Check every file of the installed release in `directory` against its signed metadata."""
    directory = Path(directory)
    tuf_dir = directory / INSTALL_METADATA_DIR
    if not tuf_dir.is_dir():
        raise ReleaseError(f"{directory}: no {INSTALL_METADATA_DIR}/ metadata; it was not installed by `cairn release pull`")
    cache = cache_dir if cache_dir is not None else default_cache_dir()
    installs = InstallRecord(cache)
    anchor = root if root is not None else _pinned_root(installs.get(directory), cache)
    if anchor is None:
        if not integrity_only:
            raise ReleaseError(
                f"{directory} was not installed by `cairn release pull` on this machine, so no pinned root vouches "
                "for it: pass --root ROOT.json (obtained out of band), or --integrity-only to check only that it is "
                "intact and consistently signed"
            )
        warn(f"checking {directory} against the root stored inside it: this proves integrity, not origin")
        anchor = _read_first_root(tuf_dir)
    targets = verify_metadata_chain(anchor, tuf_dir)
    manifest = read_manifest(directory)
    release = signed_releases(targets).get(manifest.version)
    if release is None:
        raise ReleaseError(f"{directory}: release {manifest.version} is not in its signed metadata")
    for name, target in sorted(release.files.items()):
        try:
            with open(directory / name, "rb") as handle:
                target.verify_length_and_hashes(handle)
        except FileNotFoundError:
            raise ReleaseError(f"{directory}: {name} is missing") from None
        except LengthOrHashMismatchError:
            raise ReleaseError(f"{directory}: {name} does not match its signed hash and length (changed after install?)") from None
    check_manifest_binding(release, manifest)
    check_release_dir(directory)
    installs.check(directory, manifest.version, release.files[MANIFEST_FILE].hashes["sha256"])
    return manifest


def _pinned_root(install: Install | None, cache_dir: Path) -> bytes | None:
    """The root pinned for the repository this machine installed the directory from (None if it did not)."""
    return None if install is None else TrustStore(cache_dir, install.url).pinned_root()


def _read_first_root(tuf_dir: Path) -> bytes:
    """The oldest root copied into the release: the one its client was bootstrapped with."""
    roots = sorted((int(p.name.split(".")[0]), p) for p in (tuf_dir / ROOT_HISTORY).glob("*.root.json") if p.name.split(".")[0].isdigit())
    if not roots:
        raise ReleaseError(f"{tuf_dir}: no root metadata to verify against; pass --root")
    try:
        return roots[0][1].read_bytes()
    except OSError as error:
        raise ReleaseError(f"cannot read {roots[0][1]}: {error.strerror or error}") from None
