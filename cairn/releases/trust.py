"""What a user's machine remembers about one release repository, under <cache>/trust/<site>/.

    root.pinned.json   the root this machine decided to trust (from --root, or on first use)
    metadata/          python-tuf's metadata cache (root_history/, timestamp, snapshot, targets)
    installed.json     the highest release version installed from this repository, and its manifest hash

The pinned root is never replaced silently: trusting a different root means deleting the directory.
`installed.json` adds rollback protection at the release level, beyond TUF's metadata versions:
even if the metadata cache is lost, a repository whose *latest* release is older than one this machine
already installed is refused (a replayed or frozen repository). An older release asked for by
version is not an attack: keeping 0.1.0 beside 0.2.0 is how task models stay on the release they
were trained for. Each install directory guards its own history instead (`ReleaseClient.pull`
refuses to replace a newer release in the same directory with an older one).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes, cache_dir
from cairn.releases.offline import load_root
from cairn.releases.version import ReleaseVersion


def default_cache_dir() -> Path:
    """The machine's Cairn cache (cairn.protocol.fsutil.cache_dir)."""
    return cache_dir()


def site_name(url: str) -> str:
    """A directory name for a repository URL: readable, and unique through a hash of the full URL."""
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", url.split("://", 1)[-1]).strip("_.")[:64]
    return f"{readable}-{hashlib.sha256(url.encode('utf-8')).hexdigest()[:12]}"


@dataclass(frozen=True)
class InstalledRecord:
    """The highest release installed from a repository."""

    version: ReleaseVersion
    manifest_sha256: str


class TrustStore:
    """The pinned root, metadata cache and installed-version record for one repository URL."""

    def __init__(self, cache_dir: Path, url: str):
        self.url = url
        self.directory = Path(cache_dir) / "trust" / site_name(url)
        self.pinned_root_path = self.directory / "root.pinned.json"
        self.metadata_dir = self.directory / "metadata"
        self._installed_path = self.directory / "installed.json"

    def pinned_root(self) -> bytes | None:
        """The pinned root metadata, or None if this machine has not trusted this repository yet."""
        try:
            return self.pinned_root_path.read_bytes()
        except FileNotFoundError:
            return None

    def pin_root(self, data: bytes) -> None:
        """Pin `data` (a valid self-signed root); refuse if a different root is already pinned."""
        load_root(data, "root to pin")
        pinned = self.pinned_root()
        if pinned is not None and pinned != data:
            raise ReleaseError(
                f"a different root is already pinned for {self.url} (in {self.directory}); delete that directory to trust a new root"
            )
        if pinned is None:
            atomic_write_bytes(self.pinned_root_path, data, mode=0o644)

    def installed(self) -> InstalledRecord | None:
        """The highest release installed from this repository so far, or None."""
        try:
            document = json.loads(self._installed_path.read_bytes())
            return InstalledRecord(ReleaseVersion.parse(document["version"]), str(document["manifest_sha256"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, ReleaseError):
            raise ReleaseError(f"{self._installed_path} is corrupt; delete it only if you trust the repository") from None

    def check_not_rollback(self, version: ReleaseVersion, manifest_sha256: str, requested: bool = False) -> None:
        """Refuse a known version with new content, and, unless the user `requested` this version by number,
        a latest release older than one already installed (the repository went back: replay or freeze)."""
        record = self.installed()
        if record is None:
            return
        if version < record.version and not requested:
            raise ReleaseError(
                f"refusing release {version} as the latest: release {record.version} from {self.url} was already installed "
                "on this machine (rollback); to keep an older release on purpose, ask for it with --version into its own --to directory"
            )
        if version == record.version and manifest_sha256 != record.manifest_sha256:
            raise ReleaseError(f"refusing release {version}: it was installed before with a different manifest; a release never changes")

    def record_installed(self, version: ReleaseVersion, manifest_sha256: str) -> None:
        """Remember `version` if it is the highest installed so far (written atomically)."""
        record = self.installed()
        if record is None or version > record.version:
            document = {"version": str(version), "manifest_sha256": manifest_sha256}
            atomic_write_bytes(self._installed_path, json.dumps(document).encode("utf-8"), mode=0o644)
