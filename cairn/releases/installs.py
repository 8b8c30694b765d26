"""What this machine installed where: <cache>/installs.json, outside every release directory.

A release directory is writable by whoever can write there, including its `.tuf/source.json`, so it cannot
vouch for itself. `cairn release pull` records, per resolved directory, the repository URL and the release
(version and manifest hash) it installed; `cairn release verify` and `cairn embed` then take the trust anchor
from this record (not from the directory) and refuse a directory whose release went backwards or changed
content since it was installed (an older, validly signed release swapped in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.releases.version import ReleaseVersion

INSTALLS_FILE = "installs.json"


@dataclass(frozen=True)
class Install:
    url: str
    version: ReleaseVersion
    manifest_sha256: str


class InstallRecord:
    def __init__(self, cache_dir: Path):
        self.path = Path(cache_dir) / INSTALLS_FILE

    def _read(self) -> dict:
        try:
            document = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError:
            raise ReleaseError(f"{self.path} is corrupt; delete it and pull your releases again") from None
        if not isinstance(document, dict):
            raise ReleaseError(f"{self.path} is corrupt; delete it and pull your releases again")
        return document

    def get(self, directory: Path) -> Install | None:
        entry = self._read().get(str(Path(directory).resolve()))
        if entry is None:
            return None
        try:
            return Install(str(entry["url"]), ReleaseVersion.parse(entry["version"]), str(entry["manifest_sha256"]))
        except (KeyError, TypeError, ReleaseError):
            raise ReleaseError(f"{self.path} is corrupt; delete it and pull your releases again") from None

    def record(self, directory: Path, url: str, version: ReleaseVersion, manifest_sha256: str) -> None:
        document = self._read()
        document[str(Path(directory).resolve())] = {"url": url, "version": str(version), "manifest_sha256": manifest_sha256}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(document, indent=1, sort_keys=True).encode("utf-8"), mode=0o644)

    def check(self, directory: Path, version: ReleaseVersion, manifest_sha256: str) -> None:
        """Refuse a directory holding an older release, or the same version with other content, than was installed."""
        install = self.get(directory)
        if install is None:
            return
        if version < install.version:
            raise ReleaseError(
                f"{directory} holds release {version}, but release {install.version} was installed there "
                "(an older release swapped in); pull again to restore it"
            )
        if version == install.version and manifest_sha256 != install.manifest_sha256:
            raise ReleaseError(f"{directory}: release {version} differs from the one installed there (its manifest changed)")
