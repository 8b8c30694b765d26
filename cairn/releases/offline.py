"""Verify a copied set of TUF metadata without a network: the chain from a trusted root to targets.

`cairn release verify` uses this on an installed release's `.tuf/` directory. It checks every
signature, each root step N->N+1 (signed by the old and the new root keys), and the length, hash
and version links timestamp->snapshot->targets. It deliberately does not check expiry: freshness
was checked when the release was pulled, and an installed release stays valid offline.
"""

from __future__ import annotations

from pathlib import Path

from tuf.api.metadata import Metadata, Root, Signed, Snapshot, Targets, Timestamp

from cairn.protocol.errors import ReleaseError
from cairn.releases.tuf_errors import tuf_errors

MAX_METADATA_BYTES = 5_000_000
ROOT_HISTORY = "root_history"


def load_root(data: bytes, source: str) -> Metadata[Root]:
    """Parse root metadata that must be signed by its own keys; used for every trust anchor."""
    with tuf_errors(source):
        metadata = _parse(data, Root, source)
        metadata.signed.verify_delegate(Root.type, metadata.signed_bytes, metadata.signatures)
    return metadata


def verify_metadata_chain(anchor: bytes, tuf_dir: Path) -> Targets:
    """Walk `tuf_dir` (root_history/N.root.json, timestamp/snapshot/targets.json) from `anchor`."""
    root = load_root(anchor, "trusted root").signed
    while (path := tuf_dir / ROOT_HISTORY / f"{root.version + 1}.root.json").is_file():
        with tuf_errors(f"{path.name}"):
            new_root = _parse(_read(path), Root, path.name)
            if new_root.signed.version != root.version + 1:
                raise ReleaseError(f"{path.name}: claims version {new_root.signed.version}")
            root.verify_delegate(Root.type, new_root.signed_bytes, new_root.signatures)
            new_root.signed.verify_delegate(Root.type, new_root.signed_bytes, new_root.signatures)
        root = new_root.signed
    with tuf_errors("timestamp.json"):
        timestamp = _parse(_read(tuf_dir / "timestamp.json"), Timestamp, "timestamp.json")
        root.verify_delegate(Timestamp.type, timestamp.signed_bytes, timestamp.signatures)
    snapshot_data = _read(tuf_dir / "snapshot.json")
    with tuf_errors("snapshot.json"):
        timestamp.signed.snapshot_meta.verify_length_and_hashes(snapshot_data)
        snapshot = _parse(snapshot_data, Snapshot, "snapshot.json")
        root.verify_delegate(Snapshot.type, snapshot.signed_bytes, snapshot.signatures)
        _same_version(snapshot.signed, timestamp.signed.snapshot_meta.version, "snapshot.json")
    targets_data = _read(tuf_dir / "targets.json")
    targets_meta = snapshot.signed.meta.get("targets.json")
    if targets_meta is None:
        raise ReleaseError("snapshot.json does not list targets.json")
    with tuf_errors("targets.json"):
        targets_meta.verify_length_and_hashes(targets_data)
        targets = _parse(targets_data, Targets, "targets.json")
        root.verify_delegate(Targets.type, targets.signed_bytes, targets.signatures)
        _same_version(targets.signed, targets_meta.version, "targets.json")
    return targets.signed


def _parse(data: bytes, role: type[Signed], source: str) -> Metadata:
    metadata = Metadata.from_bytes(data)
    if metadata.signed.type != role.type:
        raise ReleaseError(f"{source}: expected {role.type} metadata, got {metadata.signed.type}")
    return metadata


def _same_version(signed: Signed, expected: int, source: str) -> None:
    if signed.version != expected:
        raise ReleaseError(f"{source}: version {signed.version}, but the metadata above it names version {expected}")


def _read(path: Path) -> bytes:
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise ReleaseError(f"{path}: larger than {MAX_METADATA_BYTES} bytes")
        return path.read_bytes()
    except OSError as error:
        raise ReleaseError(f"cannot read signed metadata {path}: {error.strerror or error}") from None
