"""The user side: list, pull and install signed releases from a coordinator's repository.

A pull is refused, and any previously installed release left untouched, unless every layer agrees:
TUF (signatures chained from the pinned root, versions, expiry, signed lengths and hashes), the
signed binding of manifest and landmark set (`signed`), the release directory's own consistency
(`check_release_dir`), and the release-level rollback record (`trust`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tuf.api.metadata import Metadata, Targets
from tuf.ngclient import Updater, UpdaterConfig

from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.releases.fetcher import ProgressFetcher
from cairn.releases.installs import InstallRecord
from cairn.releases.install import install_dir, installed_version, recover_interrupted_install, staging_dir
from cairn.releases.layout import INSTALL_METADATA_DIR, MANIFEST_FILE
from cairn.releases.manifest import Manifest, check_release_dir, read_landmarks_ref, read_manifest
from cairn.releases.offline import ROOT_HISTORY, load_root
from cairn.releases.signed import SignedRelease, check_manifest_binding, signed_landmarks, signed_releases
from cairn.releases.trust import TrustStore, default_cache_dir
from cairn.releases.tuf_errors import tuf_errors
from cairn.releases.version import ReleaseVersion

logger = logging.getLogger(__name__)
SOURCE_FILE = "source.json"
"""In an installed release's .tuf/: the repository URL, so `verify` can find the pinned root."""


class DownloadProgress(Protocol):
    """Receives progress of target downloads (the CLI draws a bar with it)."""

    def start(self, name: str, total: int) -> None: ...

    def advance(self, amount: int) -> None: ...


class ReleaseClient:
    """Talks to one repository URL; trust state lives under `cache_dir` (default ~/.cache/cairn).

    `root` is the trusted initial root metadata. Without it the client fetches `1.root.json` from
    the server on first contact, pins it and calls `warn`, because trust on first use must not be
    silent.
    """

    def __init__(
        self,
        url: str,
        cache_dir: Path | None = None,
        *,
        root: bytes | None = None,
        warn: Callable[[str], None] = logger.warning,
        progress: DownloadProgress | None = None,
    ):
        if not url.startswith(("http://", "https://")):
            raise ReleaseError(f"repository URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self.trust = TrustStore(self.cache_dir, self.url)
        self._root = root
        self._warn = warn
        self._progress = progress
        self._fetcher = ProgressFetcher()

    def list_releases(self) -> list[SignedRelease]:
        """Releases in the repository's current signed targets metadata, oldest first."""
        _, targets = self._refresh()
        return [release for _, release in sorted(signed_releases(targets).items())]

    def pull(self, destination: Path, version: str | None = None) -> Manifest:
        """Download, verify and atomically install release `version` (default: latest) at `destination`."""
        updater, targets = self._refresh()
        releases = signed_releases(targets)
        if not releases:
            raise ReleaseError(f"no releases are published at {self.url}")
        wanted = ReleaseVersion.parse(version) if version is not None else max(releases)
        release = releases.get(wanted)
        if release is None:
            available = ", ".join(str(v) for v in sorted(releases))
            raise ReleaseError(f"release {wanted} is not published at {self.url} (available: {available})")
        manifest_sha256 = release.files[MANIFEST_FILE].hashes["sha256"]
        self.trust.check_not_rollback(wanted, manifest_sha256, requested=version is not None)
        recover_interrupted_install(Path(destination))
        current = installed_version(Path(destination))
        if current is not None and wanted < current:
            raise ReleaseError(
                f"refusing release {wanted}: {destination} already holds release {current} (rollback); "
                f"pull {wanted} into another --to directory to keep both"
            )
        try:
            with staging_dir(Path(destination)) as staging:
                self._download(updater, release.files[MANIFEST_FILE].path, MANIFEST_FILE, staging)
                manifest = read_manifest(staging)
                check_manifest_binding(release, manifest)
                for name in sorted(manifest.files):
                    self._download(updater, release.files[name].path, name, staging)
                check_release_dir(staging)
                self._copy_metadata(staging / INSTALL_METADATA_DIR)
                # Recorded once verified, before the swap: a failed swap then cannot lose the record.
                self.trust.record_installed(wanted, manifest_sha256)
                install_dir(staging, Path(destination))
                InstallRecord(self.cache_dir).record(Path(destination), self.url, wanted, manifest_sha256)
        except OSError as error:
            raise ReleaseError(f"cannot install into {destination}: {error.strerror or error}") from None
        return manifest

    def download_landmarks(self, landmarks_version: int, destination: Path) -> Path:
        """Download standalone landmark set v`landmarks_version` to the file `destination`, verified."""
        updater, targets = self._refresh()
        found = signed_landmarks(targets, landmarks_version)
        if found is None:
            raise ReleaseError(f"landmark set v{landmarks_version} is not published at {self.url}")
        target, expected = found
        destination = Path(destination)
        destination.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{destination.name}.", dir=destination.parent) as staging:
            downloaded = Path(staging) / destination.name
            self._download(updater, target.path, destination.name, Path(staging))
            if read_landmarks_ref(downloaded) != expected:
                raise ReleaseError(f"landmark set v{landmarks_version}: the file names a different set than its signed metadata")
            downloaded.replace(destination)
        return destination

    # ---- internals --------------------------------------------------------------------------

    def _refresh(self) -> tuple[Updater, Targets]:
        """A refreshed Updater (one per operation: python-tuf refreshes once per instance) and its targets."""
        with tuf_errors(f"refused metadata from {self.url}"):
            root = self._trusted_root()
            self.trust.metadata_dir.mkdir(parents=True, exist_ok=True)
            updater = Updater(
                metadata_dir=str(self.trust.metadata_dir),
                metadata_base_url=f"{self.url}/metadata/",
                target_base_url=f"{self.url}/targets/",
                fetcher=self._fetcher,
                bootstrap=root,
            )
            updater.refresh()
            # refresh() has verified targets.json and persisted exactly the bytes it trusts.
            targets = Metadata[Targets].from_file(str(self.trust.metadata_dir / "targets.json")).signed
        return updater, targets

    def _trusted_root(self) -> bytes:
        if self._root is not None:
            self.trust.pin_root(self._root)
            return self._root
        pinned = self.trust.pinned_root()
        if pinned is not None:
            return pinned
        url = f"{self.url}/metadata/1.root.json"
        with tuf_errors(f"cannot fetch the initial root from {self.url}"):
            data = self._fetcher.download_bytes(url, UpdaterConfig().root_max_length)
        if load_root(data, url).signed.version != 1:
            raise ReleaseError(f"{url} is not version 1 of the root metadata")
        self.trust.pin_root(data)
        self._warn(
            f"trusting root on first use: fetched {url} without --root and pinned it in {self.trust.directory}; check its keys out of band"
        )
        return data

    def _download(self, updater: Updater, target_path: str, name: str, staging: Path) -> None:
        """Download one target into `staging/name`; TUF checks length (while receiving) and hash."""
        subject = f"refused {target_path} from {self.url}"
        with tuf_errors(subject):
            target = updater.get_targetinfo(target_path)
            if target is None:
                raise ReleaseError(f"{subject}: not in the signed targets metadata")
            if self._progress is not None:
                self._progress.start(name, target.length)
                self._fetcher.on_bytes = self._progress.advance
            try:
                updater.download_target(target, str(staging / name))
            finally:
                self._fetcher.on_bytes = None

    def _copy_metadata(self, tuf_dir: Path) -> None:
        """Keep the metadata this release was verified against, for `cairn release verify` offline."""
        source = self.trust.metadata_dir
        (tuf_dir / ROOT_HISTORY).mkdir(parents=True)
        for root_file in (source / ROOT_HISTORY).glob("*.root.json"):
            shutil.copyfile(root_file, tuf_dir / ROOT_HISTORY / root_file.name)
        for role in ("timestamp", "snapshot", "targets"):
            shutil.copyfile(source / f"{role}.json", tuf_dir / f"{role}.json")
        atomic_write_bytes(tuf_dir / SOURCE_FILE, json.dumps({"url": self.url}).encode("utf-8"), mode=0o644)
