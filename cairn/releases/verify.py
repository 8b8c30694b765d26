"""Offline verification of an installed release: `cairn release verify DIR`.

The trust anchor is, in order: an explicit root file; the root this machine pinned for the
repository the release came from; failing both, the first root copied into the release itself,
with a warning, since that proves the files are intact and consistently signed but not by whom.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from tuf.api.exceptions import LengthOrHashMismatchError

from cairn.protocol.errors import ReleaseError
from cairn.releases.client import SOURCE_FILE
from cairn.releases.layout import INSTALL_METADATA_DIR
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
) -> Manifest:
    """Check every file of the installed release in `directory` against its signed metadata."""
    directory = Path(directory)
    tuf_dir = directory / INSTALL_METADATA_DIR
    if not tuf_dir.is_dir():
        raise ReleaseError(f"{directory}: no {INSTALL_METADATA_DIR}/ metadata; it was not installed by `cairn release pull`")
    anchor = root if root is not None else _pinned_root(tuf_dir, cache_dir)
    if anchor is None:
        warn(
            f"no pinned root for the repository of {directory} on this machine; checking against the root "
            "stored inside it (proves integrity, not origin: pass --root to check origin)"
        )
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
    return manifest


def _pinned_root(tuf_dir: Path, cache_dir: Path | None) -> bytes | None:
    try:
        url = json.loads((tuf_dir / SOURCE_FILE).read_bytes())["url"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(url, str):
        return None
    return TrustStore(cache_dir if cache_dir is not None else default_cache_dir(), url).pinned_root()


def _read_first_root(tuf_dir: Path) -> bytes:
    """The oldest root copied into the release: the one its client was bootstrapped with."""
    roots = sorted((int(p.name.split(".")[0]), p) for p in (tuf_dir / ROOT_HISTORY).glob("*.root.json") if p.name.split(".")[0].isdigit())
    if not roots:
        raise ReleaseError(f"{tuf_dir}: no root metadata to verify against; pass --root")
    try:
        return roots[0][1].read_bytes()
    except OSError as error:
        raise ReleaseError(f"cannot read {roots[0][1]}: {error.strerror or error}") from None
