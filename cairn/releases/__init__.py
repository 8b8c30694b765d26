"""Signed, versioned releases of the encoder: the release format, the TUF client, and `cairn release`.

Modules, one job each: `version` (semver ordering), `layout` (file and target names), `manifest`
(the strict manifest parser and content-level checks), `signed` (how a release is bound to TUF
targets), `trust` (pinned roots and the highest installed version), `offline` (verifying a metadata
chain without a network), `install` (atomic directory swaps), `client` and `cli`.
"""

from __future__ import annotations

from pathlib import Path


def load_release(directory: Path | str, device: str = "auto", verify: bool = True):
    """Load an installed release as an Embedder: `load_release(DIR).embed(texts, dims=m)`.

    A release pulled on this machine is verified first against the root pinned for its repository and this
    machine's record of what it installed there (`check_release`); a tampered, re-signed or swapped-in release
    is refused. A directory that was never pulled here (a coordinator's own release, a training bundle) is
    loaded with a warning, after its files are checked against its manifest where it has one.
    """
    from cairn.protocol.embedder import load_bundle

    if verify:
        check_release(Path(directory))
    return load_bundle(Path(directory), device)


def check_release(directory: Path, cache_dir: Path | None = None, warn=None) -> None:
    """Verify `directory` before use: signed metadata and pinned root when it was pulled, else a warning."""
    import logging

    from cairn.releases.layout import INSTALL_METADATA_DIR, MANIFEST_FILE
    from cairn.releases.manifest import check_release_dir
    from cairn.releases.verify import verify_installed

    warn = warn or logging.getLogger(__name__).warning
    if (directory / INSTALL_METADATA_DIR).is_dir():
        verify_installed(directory, cache_dir=cache_dir, warn=warn)
        return
    if (directory / MANIFEST_FILE).is_file():
        check_release_dir(directory)
        warn(f"{directory} was not pulled with `cairn release pull`: its files match its manifest, but nothing vouches for who signed it")
    else:
        warn(f"{directory} is a local training bundle, not a signed release")
