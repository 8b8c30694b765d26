"""The coordinator's TUF repository: it signs and lays out releases for `cairn release pull`.

Layout under `workdir`:
    keys/{root,targets,snapshot,timestamp}.pem   private Ed25519 keys (0600)
    repository/metadata/N.root.json, N.targets.json, N.snapshot.json, timestamp.json
    repository/targets/releases/V/<sha256>.<name>, repository/targets/landmarks/vN/<sha256>.landmarks.json

Consistent snapshots are on: every metadata and target file is written under a new name and never
changed, and `timestamp.json` is written last, so its rename is the single switch from one
consistent repository state to the next; a crash before it leaves the previous state served.
"""

from __future__ import annotations

import copy
import fcntl
import os
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Signed, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from cairn.coordinator.publishing.keys import generate_signer, load_signer, save_signer
from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.releases.files import atomic_copy, file_sha256, fsync_directory
from cairn.releases.layout import MANIFEST_FILE, landmarks_target, release_target
from cairn.releases.manifest import check_release_dir, read_landmarks_ref
from cairn.releases.signed import landmarks_custom, release_custom, signed_landmarks, signed_releases
from cairn.releases.version import ReleaseVersion

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
_ROOT_FILE = re.compile(r"([1-9][0-9]{0,9})\.root\.json")
_SERIALIZER = JSONSerializer(compact=False)


@dataclass(frozen=True)
class Lifetimes:
    """How long each role's signed metadata stays valid.

    The timestamp is short because it is what stops freeze attacks: a server replaying old metadata
    is found out within a day. The coordinator re-signs it periodically (`refresh_timestamp`).
    """

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=365)
    snapshot: timedelta = timedelta(days=365)
    timestamp: timedelta = timedelta(days=1)


@dataclass
class _State:
    root: Metadata[Root]
    targets: Metadata[Targets]
    snapshot: Metadata[Snapshot]
    timestamp: Metadata[Timestamp]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class ReleaseRepository:
    """Create, sign and extend the release repository in `workdir`.

    `clock` is injectable so tests can sign metadata that is already expired (a frozen repository).
    Every mutating operation holds an exclusive lock on the working directory, so the periodic
    timestamp refresh cannot interleave with a publish.
    """

    def __init__(self, workdir: Path, lifetimes: Lifetimes = Lifetimes(), clock: Callable[[], datetime] = _utc_now):
        self.workdir = Path(workdir)
        self.keys_dir = self.workdir / "keys"
        self.repository_dir = self.workdir / "repository"
        self.metadata_dir = self.repository_dir / "metadata"
        self.targets_dir = self.repository_dir / "targets"
        self.lifetimes = lifetimes
        self._clock = clock

    # ---- set-up and keys -------------------------------------------------------------------

    def init(self) -> None:
        """Generate one key per role and write root v1 with empty targets, snapshot and timestamp."""
        with self._locked():
            if self._root_versions():
                raise ReleaseError(f"{self.repository_dir} is already initialised")
            signers = {role: generate_signer() for role in ROLES}
            for role, signer in signers.items():
                save_signer(signer, self._key_path(role))
            root = Root(expires=self._expiry(Root.type), consistent_snapshot=True)
            for role, signer in signers.items():
                root.add_key(signer.public_key, role)
            self._write(root, f"{root.version}.root.json", [signers[Root.type]], root)
            empty = _State(Metadata(root), Metadata(Targets()), Metadata(Snapshot()), Metadata(Timestamp()))
            for role in (empty.targets, empty.snapshot, empty.timestamp):
                role.signed.version = 0  # _commit bumps every role it writes, so the first written is v1
            self._commit(empty, empty.targets.signed)

    def export_root_key(self, path: Path) -> None:
        """Move the root private key to `path` (created 0600, never overwritten) for offline keeping.

        Afterwards the working directory cannot sign a new root; `rotate_root(root_key=path)` can.
        """
        source = self._key_path(Root.type)
        with self._locked():
            pem = load_signer(source).private_bytes
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                raise ReleaseError(f"{path} already exists; refusing to overwrite a key file") from None
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
                handle.flush()
                os.fsync(handle.fileno())
            source.unlink()
            fsync_directory(source.parent)

    def rotate_root(self, new_keys: Mapping[str, CryptoSigner], root_key: Path | None = None) -> int:
        """Replace the keys of the roles in `new_keys` and publish root N+1; return N+1.

        Root N+1 is signed by the old root key and, if the root key changes, by the new one too, so
        clients holding root N can verify the step. Snapshot and timestamp are re-signed (and
        targets too, if its key changed) so the repository is immediately consistent under the new
        keys. New private keys are saved as `<role>.pem.next` first and renamed only after the new
        root is written: a crash in between never loses the key that the published root trusts.
        """
        unknown = sorted(set(new_keys) - set(ROLES))
        if unknown or not new_keys:
            raise ReleaseError(f"rotate_root needs new keys for some of {', '.join(ROLES)}; got {unknown or 'none'}")
        with self._locked():
            state = self._load()
            old_root_signer = load_signer(root_key if root_key is not None else self._key_path(Root.type))
            root = copy.deepcopy(state.root.signed)
            for role, signer in new_keys.items():
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(signer.public_key, role)
            root.version += 1
            root.expires = self._expiry(Root.type)
            for role, signer in new_keys.items():
                save_signer(signer, self._key_path(role, suffix=".next"))
            root_signers: list[Signer] = [old_root_signer, *([new_keys[Root.type]] if Root.type in new_keys else [])]
            self._write(root, f"{root.version}.root.json", root_signers, state.root.signed)
            for role in new_keys:
                os.replace(self._key_path(role, suffix=".next"), self._key_path(role))
            fsync_directory(self.keys_dir)
            state.root = Metadata(root)
            self._commit(state, state.targets.signed if Targets.type in new_keys else None)
            return root.version

    # ---- publishing -------------------------------------------------------------------------

    def publish_release(self, release_dir: Path) -> ReleaseVersion:
        """Sign the release in `release_dir` as targets `releases/{version}/{name}`; return its version.

        The directory must pass `check_release_dir` (so a mixed or tampered release is never signed)
        and its version must be greater than every published one.
        """
        release_dir = Path(release_dir)
        manifest = check_release_dir(release_dir)
        with self._locked():
            state = self._load()
            latest = max(signed_releases(state.targets.signed), default=None)
            if latest is not None and manifest.version <= latest:
                raise ReleaseError(f"release {manifest.version} is not newer than the latest published release {latest}")
            custom = release_custom(manifest)
            targets = state.targets.signed
            for name in (MANIFEST_FILE, *sorted(manifest.files)):
                target = self._store_target(release_target(manifest.version, name), release_dir / name)
                target.unrecognized_fields["custom"] = custom
                targets.targets[target.path] = target
            self._commit(state, targets)
            return manifest.version

    def publish_landmarks(self, path: Path, version: int) -> str:
        """Sign a standalone landmark set as `landmarks/v{version}/landmarks.json`; return the target path.

        Landmark sets are immutable: publishing the same bytes again is a no-op, different bytes
        under a published version are refused.
        """
        path = Path(path)
        ref = read_landmarks_ref(path)
        if ref.version != version:
            raise ReleaseError(f"{path} is landmark set v{ref.version}, not v{version}")
        with self._locked():
            state = self._load()
            target_path = landmarks_target(version)
            published = signed_landmarks(state.targets.signed, version)
            if published is not None:
                if published[0].hashes.get("sha256") != file_sha256(path)[0]:
                    raise ReleaseError(f"landmark set v{version} is already published with different content")
                return target_path
            target = self._store_target(target_path, path)
            target.unrecognized_fields["custom"] = landmarks_custom(ref)
            state.targets.signed.targets[target_path] = target
            self._commit(state, state.targets.signed)
            return target_path

    def refresh_timestamp(self, lifetime: timedelta | None = None) -> int:
        """Re-sign the timestamp with a fresh expiry (default `lifetimes.timestamp`); return its version."""
        with self._locked():
            state = self._load()
            timestamp = state.timestamp.signed
            timestamp.version += 1
            timestamp.expires = self._clock() + (lifetime if lifetime is not None else self.lifetimes.timestamp)
            self._write(timestamp, "timestamp.json", [self._signer(Timestamp.type)], state.root.signed)
            return timestamp.version

    # ---- queries ----------------------------------------------------------------------------

    def list_versions(self) -> list[ReleaseVersion]:
        """Published release versions, oldest first."""
        return sorted(signed_releases(self._load().targets.signed))

    def latest_version(self) -> ReleaseVersion | None:
        """The newest published release, or None before the first."""
        return max(self.list_versions(), default=None)

    # ---- internals --------------------------------------------------------------------------

    def _commit(self, state: _State, targets: Targets | None) -> None:
        """Write new targets (if given), then snapshot, then timestamp, bumping each version."""
        root = state.root.signed
        snapshot = state.snapshot.signed
        if targets is not None:
            targets.version += 1
            targets.expires = self._expiry(Targets.type)
            data = self._write(targets, f"{targets.version}.targets.json", [self._signer(Targets.type)], root)
            snapshot.meta["targets.json"] = MetaFile.from_data(targets.version, data, ["sha256"])
        snapshot.version += 1
        snapshot.expires = self._expiry(Snapshot.type)
        data = self._write(snapshot, f"{snapshot.version}.snapshot.json", [self._signer(Snapshot.type)], root)
        timestamp = state.timestamp.signed
        timestamp.version += 1
        timestamp.expires = self._expiry(Timestamp.type)
        timestamp.snapshot_meta = MetaFile.from_data(snapshot.version, data, ["sha256"])
        self._write(timestamp, "timestamp.json", [self._signer(Timestamp.type)], root)

    def _write(self, signed: Signed, filename: str, signers: list[Signer], trusted_root: Root) -> bytes:
        """Sign, check the signatures verify against `trusted_root` (and itself, for root), write atomically."""
        metadata = Metadata(signed)
        for signer in signers:
            metadata.sign(signer, append=True)
        if isinstance(signed, Root):
            previous = trusted_root if trusted_root.version < signed.version else None
            verified = signed.get_root_verification_result(previous, metadata.signed_bytes, metadata.signatures).verified
        else:
            verified = trusted_root.get_verification_result(signed.type, metadata.signed_bytes, metadata.signatures).verified
        if not verified:
            raise ReleaseError(f"{filename}: signatures do not satisfy the root's thresholds; refusing to publish it")
        data = metadata.to_bytes(_SERIALIZER)
        atomic_write_bytes(self.metadata_dir / filename, data, mode=0o644)
        return data

    def _store_target(self, target_path: str, source: Path) -> TargetFile:
        """Copy `source` to its consistent-snapshot name `<dir>/<sha256>.<name>` and describe it."""
        sha256, length = file_sha256(source)
        directory, _, name = target_path.rpartition("/")
        destination = self.targets_dir / directory / f"{sha256}.{name}"
        atomic_copy(source, destination)
        if file_sha256(destination) != (sha256, length):
            destination.unlink()
            raise ReleaseError(f"{source} changed while it was being published")
        return TargetFile(length, {"sha256": sha256}, target_path)

    def _load(self) -> _State:
        versions = self._root_versions()
        if not versions:
            raise ReleaseError(f"{self.repository_dir} is not initialised; run init first")
        root = Metadata[Root].from_file(str(self.metadata_dir / f"{max(versions)}.root.json"))
        timestamp = Metadata[Timestamp].from_file(str(self.metadata_dir / "timestamp.json"))
        snapshot = Metadata[Snapshot].from_file(str(self.metadata_dir / f"{timestamp.signed.snapshot_meta.version}.snapshot.json"))
        targets_version = snapshot.signed.meta["targets.json"].version
        targets = Metadata[Targets].from_file(str(self.metadata_dir / f"{targets_version}.targets.json"))
        return _State(root, targets, snapshot, timestamp)

    def _root_versions(self) -> list[int]:
        if not self.metadata_dir.is_dir():
            return []
        return [int(m.group(1)) for p in self.metadata_dir.iterdir() if (m := _ROOT_FILE.fullmatch(p.name))]

    def _signer(self, role: str) -> CryptoSigner:
        return load_signer(self._key_path(role))

    def _key_path(self, role: str, suffix: str = "") -> Path:
        return self.keys_dir / f"{role}.pem{suffix}"

    def _expiry(self, role: str) -> datetime:
        return self._clock() + getattr(self.lifetimes, role)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
