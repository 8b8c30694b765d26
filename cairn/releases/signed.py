"""How releases and landmark sets appear in TUF targets metadata, and what binds them to a manifest.

Each file of release V is the target `releases/V/<name>`, and every one carries the same `custom`
block naming V and its landmark set. The signature over targets metadata therefore covers which
landmark set belongs to which weights, not just the bytes, so a client can refuse a mixed release
before it reads a single downloaded file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuf.api.metadata import TargetFile, Targets

from cairn.protocol.errors import ReleaseError
from cairn.releases.layout import MANIFEST_FILE, landmarks_target, parse_release_target
from cairn.releases.manifest import LandmarksRef, Manifest
from cairn.releases.version import ReleaseVersion


@dataclass(frozen=True)
class SignedRelease:
    """One release as listed in verified targets metadata."""

    version: ReleaseVersion
    landmarks: LandmarksRef
    files: dict[str, TargetFile]

    @property
    def total_length(self) -> int:
        return sum(target.length for target in self.files.values())


def release_custom(manifest: Manifest) -> dict[str, Any]:
    """The `custom` block the publisher puts on every target of a release."""
    return {
        "release": str(manifest.version),
        "landmarks_version": manifest.landmarks_version,
        "landmarks_digest": manifest.landmarks_digest,
    }


def landmarks_custom(landmarks: LandmarksRef) -> dict[str, Any]:
    """The `custom` block on a standalone landmark-set target."""
    return {"landmarks_version": landmarks.version, "landmarks_digest": landmarks.digest}


def signed_releases(targets: Targets) -> dict[ReleaseVersion, SignedRelease]:
    """Group release targets by version; a release whose files disagree on their custom block is refused."""
    grouped: dict[ReleaseVersion, dict[str, TargetFile]] = {}
    for path, target in targets.targets.items():
        parsed = parse_release_target(path)
        if parsed is not None:
            grouped.setdefault(parsed[0], {})[parsed[1]] = target
    releases = {}
    for version, files in grouped.items():
        customs = {repr(target.custom) for target in files.values()}
        if len(customs) != 1:
            raise ReleaseError(f"release {version}: its signed files disagree on which release and landmark set they belong to")
        custom = next(iter(files.values())).custom
        if not isinstance(custom, dict) or custom.get("release") != str(version):
            raise ReleaseError(f"release {version}: signed targets do not name release {version}")
        if MANIFEST_FILE not in files:
            raise ReleaseError(f"release {version}: no signed manifest.json")
        releases[version] = SignedRelease(version, _landmarks_ref(custom, f"release {version}"), files)
    return releases


def signed_landmarks(targets: Targets, landmarks_version: int) -> tuple[TargetFile, LandmarksRef] | None:
    """The target and claimed identity of standalone landmark set v`landmarks_version`, if published."""
    target = targets.targets.get(landmarks_target(landmarks_version))
    if target is None:
        return None
    ref = _landmarks_ref(target.custom, f"landmark set v{landmarks_version}")
    if ref.version != landmarks_version:
        raise ReleaseError(f"landmark set v{landmarks_version}: its signed metadata names version {ref.version}")
    return target, ref


def check_manifest_binding(release: SignedRelease, manifest: Manifest) -> None:
    """Refuse a manifest that is not the one the signed metadata describes for `release`."""
    where = f"release {release.version}"
    if manifest.version != release.version:
        raise ReleaseError(f"{where}: its manifest says version {manifest.version}")
    if (manifest.landmarks_version, manifest.landmarks_digest) != (release.landmarks.version, release.landmarks.digest):
        raise ReleaseError(f"{where}: its manifest names a different landmark set than its signed metadata")
    if set(manifest.files) | {MANIFEST_FILE} != set(release.files):
        raise ReleaseError(f"{where}: the manifest's file list differs from the signed file list")
    for name, entry in manifest.files.items():
        target = release.files[name]
        if (target.hashes.get("sha256"), target.length) != (entry.sha256, entry.length):
            raise ReleaseError(f"{where}: the manifest's hash for {name} differs from the signed one")


def _landmarks_ref(custom: Any, where: str) -> LandmarksRef:
    if not isinstance(custom, dict):
        raise ReleaseError(f"{where}: signed metadata lacks its landmark set")
    version, digest = custom.get("landmarks_version"), custom.get("landmarks_digest")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(digest, str):
        raise ReleaseError(f"{where}: signed metadata has a malformed landmark set reference")
    return LandmarksRef(version, digest)
