"""Reading the coordinator's signed release repository (layout: cairn/coordinator/publishing/repository.py).

    DIR/repository/metadata/N.root.json, N.targets.json, N.snapshot.json, timestamp.json
    DIR/repository/targets/releases/V/<sha256>.<name>, targets/landmarks/vN/<sha256>.landmarks.json

The current state is found the way the publisher finds it: timestamp.json names the snapshot, the
snapshot names the targets. Signatures are checked against the newest root, so the page can say
whether what it lists is what the keys signed. Nothing here ever joins request input to a path:
files are located from signed target paths (strict patterns in cairn.releases.layout) and their
signed sha256, and a file is only handed out if it is a regular file that really lies inside the
repository (no symlink out of it) and has the signed length and hash.
"""

from __future__ import annotations

import os
import re
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp

from cairn.protocol.errors import ReleaseError
from cairn.releases.files import file_sha256
from cairn.releases.layout import LANDMARKS_FILE, landmarks_target, release_target
from cairn.releases.signed import SignedRelease, signed_releases
from cairn.releases.version import ReleaseVersion

MAX_METADATA_BYTES = 16 << 20
_ROOT_FILE = re.compile(r"([1-9][0-9]{0,9})\.root\.json")
_LANDMARKS_TARGET = re.compile(r"landmarks/v([1-9][0-9]{0,8})/" + re.escape(LANDMARKS_FILE))
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class RepositoryState:
    """What the current signed metadata says; `error` is set (and the rest empty) if it cannot be read."""

    error: str | None = None
    root_version: int = 0
    roles: dict[str, dict[str, Any]] = field(default_factory=dict)
    verified: dict[str, bool] = field(default_factory=dict)
    targets_signed_by: list[str] = field(default_factory=list)
    targets_version: int = 0
    expires: dict[str, str] = field(default_factory=dict)
    releases: dict[ReleaseVersion, SignedRelease] = field(default_factory=dict)
    landmark_targets: dict[int, TargetFile] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The signing facts for the API: root version, keys and thresholds per role, verification."""
        return {
            "error": self.error,
            "root_version": self.root_version,
            "targets_version": self.targets_version,
            "roles": self.roles,
            "verified": self.verified,
            "all_verified": bool(self.verified) and all(self.verified.values()),
            "unverified_roles": sorted(role for role, ok in self.verified.items() if not ok),
            "targets_signed_by": self.targets_signed_by,
            "expires": self.expires,
        }


class SignedRepository:
    """The repository under `directory`, re-read whenever timestamp.json or the root changes."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.metadata_dir = self.directory / "metadata"
        self.targets_dir = self.directory / "targets"
        self._lock = threading.Lock()
        self._state_key: object = object()  # matches no change key, so the first call loads
        self._state = RepositoryState(error="not read yet")
        self._verified_files: dict[Path, tuple[int, int, int]] = {}

    def state(self) -> RepositoryState:
        key = self._change_key()
        with self._lock:
            if key != self._state_key:
                self._state, self._state_key = self._load(), key
            return self._state

    # ---- files ---------------------------------------------------------------------------------

    def release_file(self, version: ReleaseVersion, name: str) -> tuple[Path, TargetFile] | None:
        """The stored file `name` of signed release `version`, checked; None if absent or not trustworthy."""
        release = self.state().releases.get(version)
        target = release.files.get(name) if release is not None else None
        if target is None:
            return None
        path = self._stored_path(release_target(version, name), target)
        return (path, target) if path is not None else None

    def landmarks_file(self, landmarks_version: int) -> Path | None:
        target = self.state().landmark_targets.get(landmarks_version)
        return self._stored_path(landmarks_target(landmarks_version), target) if target is not None else None

    def read_small(self, path: Path, limit: int) -> bytes | None:
        """The bytes of an already checked file if it is at most `limit` bytes."""
        try:
            with open(path, "rb") as handle:
                data = handle.read(limit + 1)
        except OSError:
            return None
        return data if len(data) <= limit else None

    def _stored_path(self, target_path: str, target: TargetFile) -> Path | None:
        sha256 = target.hashes.get("sha256")
        if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
            return None
        directory, _, name = target_path.rpartition("/")
        path = self.targets_dir / directory / f"{sha256}.{name}"
        try:
            info = os.lstat(path)
            inside = path.resolve(strict=True).is_relative_to(self.targets_dir.resolve(strict=True))
        except (OSError, RuntimeError):
            return None
        if not stat.S_ISREG(info.st_mode) or not inside or info.st_size != target.length:
            return None
        # hash each stored file once (per inode and mtime): what is served is what was signed
        key = (info.st_ino, info.st_mtime_ns, info.st_size)
        if self._verified_files.get(path) != key:
            try:
                if file_sha256(path) != (sha256, target.length):
                    return None
            except OSError:
                return None
            self._verified_files[path] = key
        return path

    # ---- metadata ------------------------------------------------------------------------------

    def _change_key(self) -> tuple | None:
        try:
            info = os.stat(self.metadata_dir / "timestamp.json")
            roots = max((int(m.group(1)) for p in os.listdir(self.metadata_dir) if (m := _ROOT_FILE.fullmatch(p))), default=0)
        except OSError:
            return None
        return (info.st_ino, info.st_mtime_ns, info.st_size, roots)

    def _load(self) -> RepositoryState:
        if not self.metadata_dir.is_dir():
            return RepositoryState(error=f"no release repository at {self.directory} yet")
        try:
            versions = [int(m.group(1)) for p in os.listdir(self.metadata_dir) if (m := _ROOT_FILE.fullmatch(p))]
            if not versions:
                return RepositoryState(error=f"{self.metadata_dir} has no root metadata yet")
            root = Metadata[Root].from_bytes(self._read(f"{max(versions)}.root.json"))
            timestamp = Metadata[Timestamp].from_bytes(self._read("timestamp.json"))
            snapshot = Metadata[Snapshot].from_bytes(self._read(f"{timestamp.signed.snapshot_meta.version}.snapshot.json"))
            targets = Metadata[Targets].from_bytes(self._read(f"{snapshot.signed.meta['targets.json'].version}.targets.json"))
            releases = signed_releases(targets.signed)
        except (OSError, KeyError, ValueError, ReleaseError) as error:  # tuf's errors are ValueErrors or ours
            return RepositoryState(error=f"cannot read the release repository: {error.__class__.__name__}: {str(error)[:200]}")
        except Exception as error:  # noqa: BLE001 - any malformed metadata is reported, never a crash
            return RepositoryState(error=f"cannot read the release repository: {error.__class__.__name__}: {str(error)[:200]}")
        verified, signed_by = {}, []
        for role, metadata in (("root", root), ("timestamp", timestamp), ("snapshot", snapshot), ("targets", targets)):
            result = root.signed.get_verification_result(role, metadata.signed_bytes, metadata.signatures)
            verified[role] = bool(result.verified)
            if role == "targets":
                signed_by = sorted(result.signed)
        landmark_targets = {
            int(m.group(1)): target for path, target in targets.signed.targets.items() if (m := _LANDMARKS_TARGET.fullmatch(path))
        }
        return RepositoryState(
            root_version=root.signed.version,
            roles={name: {"threshold": role.threshold, "keyids": sorted(role.keyids)} for name, role in sorted(root.signed.roles.items())},
            verified=verified,
            targets_signed_by=signed_by,
            targets_version=targets.signed.version,
            expires={
                name: m.signed.expires.isoformat()
                for name, m in (("root", root), ("targets", targets), ("snapshot", snapshot), ("timestamp", timestamp))
            },
            releases=releases,
            landmark_targets=landmark_targets,
        )

    def _read(self, name: str) -> bytes:
        with open(self.metadata_dir / name, "rb") as handle:
            data = handle.read(MAX_METADATA_BYTES + 1)
        if len(data) > MAX_METADATA_BYTES:
            raise ValueError(f"{name} is larger than {MAX_METADATA_BYTES} bytes")
        return data
