"""The coordinator's TUF repository: it signs and lays out releases for `cairn release pull`.

Layout under `workdir`:
    keys/<role>-<keyid>.pem                      private Ed25519 keys (0600; root and targets encrypted with a passphrase)
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TypeVar

from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from cairn.coordinator.publishing.keys import ENCRYPTED_ROLES, generate_signer, is_encrypted, load_signer, save_signer
from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.releases.files import atomic_copy, file_sha256, fsync_directory
from cairn.releases.layout import MANIFEST_FILE, landmarks_target, release_target
from cairn.releases.manifest import check_release_dir, read_landmarks_ref
from cairn.releases.signed import landmarks_custom, release_custom, signed_landmarks, signed_releases
from cairn.releases.version import ReleaseVersion

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
_ROOT_FILE = re.compile(r"([1-9][0-9]{0,9})\.root\.json")
_KEY_FILE = re.compile(r"(?:root|targets|snapshot|timestamp)-([0-9a-f]{64})\.pem")
THRESHOLD_ROLES = (Root.type, Targets.type)
"""The roles that may be k-of-n: the offline ones. Snapshot and timestamp are signed unattended by one server."""
_SERIALIZER = JSONSerializer(compact=False)
_Role = TypeVar("_Role", Root, Targets, Snapshot, Timestamp)  # the payload of Metadata[...]: tuf's own constraint


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
    `passphrase` (cairn.coordinator.publishing.keys.read_passphrase) encrypts the root and targets keys this
    object writes and decrypts those it reads; None writes plain keys (a development run).

    Keys live in `keys/<role>-<keyid>.pem` (`keys/<role>.pem` from before thresholds is still read), several per
    role when the role is k-of-n; a key file whose key the current root no longer trusts is never used.
    Every mutating operation holds an exclusive lock on the working directory, so the periodic
    timestamp refresh cannot interleave with a publish.
    """

    def __init__(
        self, workdir: Path, lifetimes: Lifetimes = Lifetimes(), clock: Callable[[], datetime] = _utc_now, passphrase: bytes | None = None
    ):
        self.workdir = Path(workdir)
        self.passphrase = passphrase
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
                save_signer(signer, self.keys_dir / _key_name(role, signer), self._passphrase_for(role))
            root = Root(expires=self._expiry(Root.type), consistent_snapshot=True)
            for role, signer in signers.items():
                root.add_key(signer.public_key, role)
            self._write(root, f"{root.version}.root.json", [signers[Root.type]], root)
            empty = _State(Metadata(root), Metadata(Targets()), Metadata(Snapshot()), Metadata(Timestamp()))
            for metadata in (empty.targets, empty.snapshot, empty.timestamp):
                metadata.signed.version = 0  # _commit bumps every role it writes, so the first written is v1
            self._commit(empty, empty.targets.signed)

    def export_root_keys(self, out_dir: Path) -> list[Path]:
        """Move every root private key in the workdir into `out_dir` (offline media); return the files written.

        Each key is copied byte for byte (an encrypted key stays encrypted, no passphrase needed), fsynced, read back
        and compared before the workdir's copy is deleted, and an existing file in `out_dir` is never overwritten:
        a failure at any point leaves at least one complete copy of every key. Afterwards the online roles keep
        working; a root change needs `out_dir` back (`offline_root=`).
        """
        out_dir = Path(out_dir)
        with self._locked():
            sources = self._key_files(Root.type, self.keys_dir)
            if not sources:
                raise ReleaseError(f"{self.keys_dir} holds no root key (already exported?)")
            clashes = [path.name for path in sources if (out_dir / path.name).exists()]
            if clashes:
                raise ReleaseError(f"{out_dir} already holds {', '.join(clashes)}; refusing to overwrite a key file")
            written = [_copy_key(source, out_dir / source.name) for source in sources]
            for source in sources:
                source.unlink()
            fsync_directory(self.keys_dir)
            return written

    def export_root_key(self, path: Path) -> None:
        """Move the single root private key to the file `path` (0600, never overwritten); see `export_root_keys`."""
        with self._locked():
            sources = self._key_files(Root.type, self.keys_dir)
            if len(sources) != 1:
                raise ReleaseError(
                    f"{self.keys_dir} holds {len(sources)} root keys; export them with `cairn coordinator keys export-root --out DIR`"
                )
            if Path(path).exists():
                raise ReleaseError(f"{path} already exists; refusing to overwrite a key file")
            _copy_key(sources[0], Path(path))
            sources[0].unlink()
            fsync_directory(self.keys_dir)

    def rotate_root(
        self,
        new_keys: Mapping[str, CryptoSigner],
        root_key: Path | None = None,
        offline_root: Path | None = None,
        extra_signers: Sequence[Signer] = (),
    ) -> int:
        """Replace all keys of each role in `new_keys` by its one new key and publish root N+1; return N+1.

        Root N+1 is signed by a threshold of the old root keys and, if the root keys change, of the new ones, so
        clients holding root N can verify the step. Root keys are looked for in the workdir, in `offline_root`
        (a directory, e.g. the one `export_root_keys` filled) and in `root_key` (one file). A role with a
        threshold above 1 is refused: rotating it to a single key would quietly undo the threshold; rotate it key by
        key with `add_keys` and `revoke_key`. A new root key goes to `offline_root` when given, never the workdir.
        """
        unknown = sorted(set(new_keys) - set(ROLES))
        if unknown or not new_keys:
            raise ReleaseError(f"rotate_root needs new keys for some of {', '.join(ROLES)}; got {unknown or 'none'}")

        def edit(root: Root) -> None:
            for role, signer in new_keys.items():
                if root.roles[role].threshold > 1:
                    raise ReleaseError(
                        f"{role} is {root.roles[role].threshold}-of-{len(root.roles[role].keyids)}: rotate its keys one "
                        "at a time (`keys add`, then `keys revoke`) so the threshold stays"
                    )
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(signer.public_key, role)

        loaded = [load_signer(root_key, self.passphrase)] if root_key is not None else []
        return self._change_root(edit, {role: [signer] for role, signer in new_keys.items()}, offline_root, [*loaded, *extra_signers])

    def add_keys(
        self,
        role: str,
        new_keys: Sequence[CryptoSigner],
        threshold: int | None = None,
        offline_root: Path | None = None,
        key_out: Path | None = None,
        extra_signers: Sequence[Signer] = (),
    ) -> int:
        """Trust `new_keys` for `role` (root or targets) and set its threshold (default: unchanged); publish root N+1.

        `key_out` (a file, one new key only) receives the new private key instead of the workdir: a targets key meant
        for another holder never has to sit on the server. The new keys sign the metadata re-signed here, so a
        threshold raised to k needs only k - len(new_keys) of the existing keys at hand.
        """
        if role not in THRESHOLD_ROLES:
            raise ReleaseError(f"keys can be added to {' and '.join(THRESHOLD_ROLES)} only, not {role}")
        if key_out is not None and len(new_keys) != 1:
            raise ReleaseError("a key file names one key: add several keys one at a time with --out")
        if not new_keys and threshold is None:
            raise ReleaseError("nothing to change: give new keys or a threshold")

        def edit(root: Root) -> None:
            for signer in new_keys:
                root.add_key(signer.public_key, role)
            if threshold is not None:
                root.roles[role].threshold = threshold
            _check_threshold(root, role)

        return self._change_root(
            edit, {role: list(new_keys)}, offline_root, extra_signers, key_out={role: key_out} if key_out is not None else {}
        )

    def revoke_key(self, role: str, keyid: str, offline_root: Path | None = None, extra_signers: Sequence[Signer] = ()) -> int:
        """Stop trusting the key of `role` whose id starts with `keyid` (at least 8 hex digits); publish root N+1.

        Refused if fewer keys than the threshold would remain. The revoked key's file is deleted from the workdir.
        """
        if len(keyid) < 8:
            raise ReleaseError("give at least 8 hex digits of the key id (`cairn coordinator keys list` shows them)")

        def edit(root: Root) -> None:
            if role not in root.roles:
                raise ReleaseError(f"unknown role {role}; one of {', '.join(ROLES)}")
            matches = [k for k in root.roles[role].keyids if k.startswith(keyid.lower())]
            if len(matches) != 1:
                raise ReleaseError(f"{len(matches)} keys of {role} start with {keyid}")
            if len(root.roles[role].keyids) == 1:
                raise ReleaseError(f"{matches[0][:16]} is the only {role} key; rotate it instead")
            root.revoke_key(matches[0], role)
            _check_threshold(root, role)

        return self._change_root(edit, {}, offline_root, extra_signers)

    def encrypt_keys(self) -> list[Path]:
        """Encrypt the plain root and targets keys in the workdir with `passphrase`; return the files rewritten.

        For a workdir created without a passphrase (or before keys could be encrypted). Each file is replaced
        atomically by the same key, encrypted, and read back first: nothing is lost if it stops half-way.
        """
        if self.passphrase is None:
            raise ReleaseError("no passphrase to encrypt with: give --passphrase-file FILE or $CAIRN_KEY_PASSPHRASE")
        rewritten = []
        with self._locked():
            for role in ENCRYPTED_ROLES:
                for path in self._key_files(role, self.keys_dir):
                    if is_encrypted(path):
                        continue
                    signer = load_signer(path)
                    destination = self.keys_dir / _key_name(role, signer)
                    save_signer(signer, destination, self.passphrase)
                    if load_signer(destination, self.passphrase).public_key.keyid != signer.public_key.keyid:
                        raise ReleaseError(f"{destination} does not read back as the key it replaces")
                    if destination != path:  # a key file of the layout before thresholds: now named by its key id
                        path.unlink()
                    rewritten.append(destination)
            fsync_directory(self.keys_dir)
        return rewritten

    def check_online_keys(self, warn: Callable[[str], None]) -> None:
        """Fail now, not an hour into a run, if the snapshot or timestamp keys cannot sign; `warn` if targets cannot.

        Without enough targets keys (encrypted and no passphrase, or a k-of-n role whose other keys are held
        elsewhere) the coordinator still serves and refreshes the timestamp, but its releases wait for
        `cairn coordinator keys sign-release`.
        """
        root = self._load().root.signed
        for role in (Snapshot.type, Timestamp.type):
            self._signers(role, root)
        try:
            self._signers(Targets.type, root)
        except ReleaseError as error:
            warn(f"releases will be built but not signed: {error}")

    def key_status(self) -> dict[str, dict]:
        """Per role: threshold, trusted key ids, and which of them have a private key in the workdir (and encrypted)."""
        root = self._load().root.signed
        status = {}
        for role in ROLES:
            local = {}
            for path in self._key_files(role, self.keys_dir):
                local[self._keyid_of(path)] = is_encrypted(path)
            status[role] = {
                "threshold": root.roles[role].threshold,
                "version": root.version,
                "keys": {keyid: local.get(keyid) for keyid in root.roles[role].keyids},
            }
        return status

    def _change_root(
        self,
        edit: Callable[[Root], None],
        new_keys: Mapping[str, Sequence[CryptoSigner]],
        offline_root: Path | None,
        extra_signers: Sequence[Signer],
        key_out: Mapping[str, Path] | None = None,
    ) -> int:
        """Apply `edit` to a copy of root N, publish it as N+1 and re-sign what the new root's keys must now vouch for.

        Every signature is collected and counted against both roots' thresholds before anything is written, so a
        refusal (a missing offline key, a wrong passphrase) leaves the repository and the key files as they were.
        New private keys are written before root N+1 (under names no published root uses, so a crash leaves at most
        an unused key file, never a published key without its private half); the revoked keys' files in the workdir
        are deleted after the re-signed metadata is in place.
        """
        key_out = dict(key_out or {})
        for path in key_out.values():
            if Path(path).exists():
                raise ReleaseError(f"{path} already exists; refusing to overwrite a key file")
        if offline_root is not None and not Path(offline_root).is_dir():
            raise ReleaseError(f"--offline-root {offline_root} is not a directory")
        with self._locked():
            state = self._load()
            old = state.root.signed
            root = copy.deepcopy(old)
            edit(root)
            root.version += 1
            root.expires = self._expiry(Root.type)
            in_memory: list[Signer] = [*extra_signers, *(signer for signers in new_keys.values() for signer in signers)]
            root_signers = _unique(
                [
                    *self._signers(Root.type, old, in_memory, offline_root, "current"),
                    *self._signers(Root.type, root, in_memory, offline_root, "new"),
                ]
            )
            targets_changed = _role_changed(old, root, Targets.type)
            online = {role: self._signers(role, root, in_memory) for role in ROLES[1:] if role != Targets.type or targets_changed}
            for role, signers in new_keys.items():
                for signer in signers:
                    if role in key_out:
                        destination = key_out[role]
                    elif role == Root.type and offline_root is not None:
                        destination = Path(offline_root) / _key_name(role, signer)
                    else:
                        destination = self.keys_dir / _key_name(role, signer)
                    save_signer(signer, destination, self._passphrase_for(role))
            self._write(root, f"{root.version}.root.json", root_signers, old)
            state.root = Metadata(root)
            self._commit(state, state.targets.signed if targets_changed else None, signers=online)
            trusted = {keyid for role in root.roles.values() for keyid in role.keyids}
            for role in ROLES:
                for path in self._key_files(role, self.keys_dir):
                    if self._keyid_of(path) not in trusted:
                        path.unlink()
            fsync_directory(self.keys_dir)
            return root.version

    # ---- publishing -------------------------------------------------------------------------

    def publish_release(self, release_dir: Path, extra_signers: Sequence[Signer] = ()) -> ReleaseVersion:
        """Sign the release in `release_dir` as targets `releases/{version}/{name}`; return its version.

        The directory must pass `check_release_dir` (so a mixed or tampered release is never signed)
        and its version must be greater than every published one. The targets signatures come from the targets
        keys in the workdir plus `extra_signers` (other holders' keys); fewer than the threshold is refused
        before anything is written.
        """
        release_dir = Path(release_dir)
        manifest = check_release_dir(release_dir)
        with self._locked():
            state = self._load()
            latest = max(signed_releases(state.targets.signed), default=None)
            if latest is not None and manifest.version <= latest:
                raise ReleaseError(f"release {manifest.version} is not newer than the latest published release {latest}")
            signers = self._online_signers(state.root.signed, extra_signers)  # refused before a target file is copied
            custom = release_custom(manifest)
            targets = state.targets.signed
            for name in (MANIFEST_FILE, *sorted(manifest.files)):
                target = self._store_target(release_target(manifest.version, name), release_dir / name)
                target.unrecognized_fields["custom"] = custom
                targets.targets[target.path] = target
            self._commit(state, targets, signers=signers)
            return manifest.version

    def publish_landmarks(self, path: Path, version: int, extra_signers: Sequence[Signer] = ()) -> str:
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
            signers = self._online_signers(state.root.signed, extra_signers)
            target = self._store_target(target_path, path)
            target.unrecognized_fields["custom"] = landmarks_custom(ref)
            state.targets.signed.targets[target_path] = target
            self._commit(state, state.targets.signed, signers=signers)
            return target_path

    def refresh_timestamp(self, lifetime: timedelta | None = None) -> int:
        """Re-sign the timestamp with a fresh expiry (default `lifetimes.timestamp`); return its version."""
        with self._locked():
            state = self._load()
            timestamp = state.timestamp.signed
            timestamp.version += 1
            timestamp.expires = self._clock() + (lifetime if lifetime is not None else self.lifetimes.timestamp)
            self._write(timestamp, "timestamp.json", self._signers(Timestamp.type, state.root.signed), state.root.signed)
            return timestamp.version

    # ---- queries ----------------------------------------------------------------------------

    def list_versions(self) -> list[ReleaseVersion]:
        """Published release versions, oldest first."""
        return sorted(signed_releases(self._load().targets.signed))

    def latest_version(self) -> ReleaseVersion | None:
        """The newest published release, or None before the first."""
        return max(self.list_versions(), default=None)

    # ---- internals --------------------------------------------------------------------------

    def _commit(
        self, state: _State, targets: Targets | None, signers: Mapping[str, list[Signer]] | None = None, extra: Sequence[Signer] = ()
    ) -> None:
        """Write new targets (if given), then snapshot, then timestamp, bumping each version.

        All signers are gathered (and counted against the thresholds) before the first write, so a missing key
        refuses the whole step instead of leaving a targets version that no snapshot names.
        """
        root = state.root.signed
        signers = dict(signers or {})
        for role in ([Targets.type] if targets is not None else []) + [Snapshot.type, Timestamp.type]:
            if role not in signers:
                signers[role] = self._signers(role, root, extra)
        snapshot = state.snapshot.signed
        if targets is not None:
            targets.version += 1
            targets.expires = self._expiry(Targets.type)
            data = self._write(targets, f"{targets.version}.targets.json", signers[Targets.type], root)
            snapshot.meta["targets.json"] = MetaFile.from_data(targets.version, data, ["sha256"])
        snapshot.version += 1
        snapshot.expires = self._expiry(Snapshot.type)
        data = self._write(snapshot, f"{snapshot.version}.snapshot.json", signers[Snapshot.type], root)
        timestamp = state.timestamp.signed
        timestamp.version += 1
        timestamp.expires = self._expiry(Timestamp.type)
        timestamp.snapshot_meta = MetaFile.from_data(snapshot.version, data, ["sha256"])
        self._write(timestamp, "timestamp.json", signers[Timestamp.type], root)

    def _write(self, signed: _Role, filename: str, signers: list[Signer], trusted_root: Root) -> bytes:
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

    def _signers(self, role: str, root: Root, extra: Sequence[Signer] = (), offline: Path | None = None, which: str = "") -> list[Signer]:
        """The signers of `role` that `root` trusts, from `extra`, the workdir and `offline`; at least its threshold.

        Key files named by key id are opened only if `root` trusts that id, so an encrypted key of another role
        or a stale key never asks for a passphrase it does not need.
        """
        wanted = set(root.roles[role].keyids)
        found: dict[str, Signer] = {}
        for signer in extra:
            if signer.public_key.keyid in wanted:
                found.setdefault(signer.public_key.keyid, signer)
        for directory in (self.keys_dir, offline):
            for path in self._key_files(role, directory) if directory is not None else []:
                named = _keyid_in_name(path)
                if named is not None and (named not in wanted or named in found):
                    continue
                signer = load_signer(path, self.passphrase)
                if signer.public_key.keyid in wanted:
                    found.setdefault(signer.public_key.keyid, signer)
        threshold = root.roles[role].threshold
        if len(found) < threshold:
            hint = {
                Root.type: "bring the offline root keys with --offline-root DIR (or --key FILE)",
                Targets.type: "pass the other holders' keys with --key FILE",
            }.get(role, f"restore the {role} key")
            name = f"the {which} root v{root.version}" if which else f"root v{root.version}"
            raise ReleaseError(
                f"{role} metadata needs {threshold} of the {len(wanted)} {role} keys {name} trusts, but only "
                f"{len(found)} {'is' if len(found) == 1 else 'are'} at hand in {self.keys_dir}"
                f"{f' or {offline}' if offline is not None else ''}: {hint}"
            )
        return list(found.values())

    def _online_signers(self, root: Root, extra: Sequence[Signer] = ()) -> dict[str, list[Signer]]:
        """The signers of targets, snapshot and timestamp: what a publish needs, gathered before it writes anything."""
        return {role: self._signers(role, root, extra) for role in (Targets.type, Snapshot.type, Timestamp.type)}

    @staticmethod
    def _key_files(role: str, directory: Path) -> list[Path]:
        """`<role>.pem` (the layout before thresholds) and `<role>-<keyid>.pem` in `directory`, sorted."""
        if not Path(directory).is_dir():
            return []
        return sorted(
            p
            for p in Path(directory).iterdir()
            if p.is_file() and (p.name == f"{role}.pem" or (p.name.startswith(f"{role}-") and p.name.endswith(".pem")))
        )

    def _keyid_of(self, path: Path) -> str:
        """The key id of a key file: from its name, or (old layout, never encrypted) from the key itself."""
        return _keyid_in_name(path) or load_signer(path, self.passphrase).public_key.keyid

    def _passphrase_for(self, role: str) -> bytes | None:
        return self.passphrase if role in ENCRYPTED_ROLES else None

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


def _key_name(role: str, signer: Signer) -> str:
    return f"{role}-{signer.public_key.keyid}.pem"


def _keyid_in_name(path: Path) -> str | None:
    """The key id in `<role>-<keyid>.pem`, or None for another name."""
    match = _KEY_FILE.fullmatch(Path(path).name)
    return match.group(1) if match else None


def _unique(signers: Sequence[Signer]) -> list[Signer]:
    """One signer per key id (a key trusted by both the old and the new root signs once)."""
    return list({signer.public_key.keyid: signer for signer in signers}.values())


def _role_changed(old: Root, new: Root, role: str) -> bool:
    return old.roles[role].keyids != new.roles[role].keyids or old.roles[role].threshold != new.roles[role].threshold


def _check_threshold(root: Root, role: str) -> None:
    """A threshold is at least 1 and at most the number of keys: anything else could never be met."""
    keys, threshold = len(root.roles[role].keyids), root.roles[role].threshold
    if not 1 <= threshold <= keys:
        raise ReleaseError(f"{role} threshold {threshold} is impossible with {keys} key{'s' if keys != 1 else ''}: it must be 1 to {keys}")


def _copy_key(source: Path, destination: Path) -> Path:
    """Copy a key file byte for byte to `destination` (created 0600, never overwritten), fsynced and read back."""
    data = source.read_bytes()
    destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ReleaseError(f"{destination} already exists; refusing to overwrite a key file") from None
    except OSError as error:
        raise ReleaseError(f"cannot write {destination}: {error.strerror or error}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_directory(destination.parent)
    if destination.read_bytes() != data:
        raise ReleaseError(f"{destination} does not read back as written; the key stays in {source.parent}")
    return destination
