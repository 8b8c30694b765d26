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

    The directory's files are first checked against its manifest (hashes, lengths, and that the
    landmark set is the one the weights were released with), so a tampered or mixed release is refused.
    """
    from cairn.protocol.embedder import load_bundle
    from cairn.releases.manifest import check_release_dir

    if verify:
        check_release_dir(Path(directory))
    return load_bundle(Path(directory), device)
