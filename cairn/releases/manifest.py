"""The release manifest: a strict parser, a writer, and the content-level check of a release directory.

The manifest is the one file of a release whose contents we interpret, and it arrives from the
network, so the parser trusts nothing: size-capped, strict UTF-8, no duplicate keys, no NaN, exact
types. Whatever is wrong, the only exception that escapes is ReleaseError (a hypothesis test holds
this). `check_release_dir` then ties a directory's bytes to its manifest, including the landmark
set: weights trained against one landmark set must never be shipped or installed with another.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.protocol.errors import ReleaseError
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.releases.files import file_sha256
from cairn.releases.layout import (
    INSTALL_METADATA_DIR,
    LANDMARKS_FILE,
    MANIFEST_FILE,
    REQUIRED_FILES,
    is_file_name,
)
from cairn.releases.version import ReleaseVersion

MAX_MANIFEST_BYTES = 1 << 20
MAX_LANDMARKS_BYTES = 64 << 20
MAX_FILES = 64
_SHA256 = re.compile(r"[0-9a-f]{64}")
_REQUIRED_KEYS = ("version", "parent_version", "run_id", "global_step", "landmarks_version", "landmarks_digest", "files")
_FREE_FORM_KEYS = ("metrics", "compatibility")


@dataclass(frozen=True)
class FileEntry:
    """The expected content of one release file."""

    sha256: str
    length: int


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated manifest.json; `extra` keeps unknown top-level keys so writing round-trips."""

    version: ReleaseVersion
    parent_version: ReleaseVersion | None
    run_id: str
    global_step: int
    landmarks_version: int
    landmarks_digest: str
    files: dict[str, FileEntry]
    metrics: dict[str, Any] = field(default_factory=dict)
    compatibility: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.extra,
            "version": str(self.version),
            "parent_version": None if self.parent_version is None else str(self.parent_version),
            "run_id": self.run_id,
            "global_step": self.global_step,
            "landmarks_version": self.landmarks_version,
            "landmarks_digest": self.landmarks_digest,
            "files": {name: {"sha256": e.sha256, "length": e.length} for name, e in sorted(self.files.items())},
            "metrics": self.metrics,
            "compatibility": self.compatibility,
        }


@dataclass(frozen=True)
class LandmarksRef:
    """What a release needs to know about a landmark file: which set it is, by version and digest."""

    version: int
    digest: str


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest.json bytes; anything malformed raises ReleaseError."""
    doc = _load_json_object(data, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    missing = [key for key in _REQUIRED_KEYS if key not in doc]
    if missing:
        raise ReleaseError(f"manifest.json: missing {', '.join(missing)}")
    version = _versioned("version", doc["version"])
    parent = None if doc["parent_version"] is None else _versioned("parent_version", doc["parent_version"])
    if parent is not None and parent >= version:
        raise ReleaseError(f"manifest.json: parent_version {parent} must be lower than version {version}")
    run_id = doc["run_id"]
    if not isinstance(run_id, str) or not 0 < len(run_id) <= 200 or not run_id.isprintable():
        raise ReleaseError("manifest.json: run_id must be 1-200 printable characters")
    free_form = {key: doc.get(key, {}) for key in _FREE_FORM_KEYS}
    for key, value in free_form.items():
        if not isinstance(value, dict):
            raise ReleaseError(f"manifest.json: {key} must be an object")
    return Manifest(
        version=version,
        parent_version=parent,
        run_id=run_id,
        global_step=_integer("manifest.json: global_step", doc["global_step"], minimum=0),
        landmarks_version=_integer("manifest.json: landmarks_version", doc["landmarks_version"], minimum=1),
        landmarks_digest=_sha256("manifest.json: landmarks_digest", doc["landmarks_digest"]),
        files=_files(doc["files"]),
        extra={k: v for k, v in doc.items() if k not in _REQUIRED_KEYS and k not in _FREE_FORM_KEYS},
        **free_form,
    )


def manifest_bytes(manifest: Manifest) -> bytes:
    """The canonical on-disk form of a manifest (sorted keys, UTF-8, trailing newline)."""
    return json.dumps(manifest.to_json(), indent=2, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n"


def write_manifest(manifest: Manifest, path: Path) -> None:
    """Write manifest.json atomically."""
    atomic_write_bytes(Path(path), manifest_bytes(manifest), mode=0o644)


def parse_landmarks_ref(data: bytes) -> LandmarksRef:
    """Read only the `version` and `digest` fields of a landmarks.json; malformed raises ReleaseError.

    The digest itself is computed and checked by cairn.protocol.landmarks; a release only needs to know
    which landmark set a file claims to be, to refuse pairing it with another release's weights.
    """
    doc = _load_json_object(data, LANDMARKS_FILE, MAX_LANDMARKS_BYTES)
    return LandmarksRef(
        version=_integer("landmarks.json: version", doc.get("version"), minimum=1),
        digest=_sha256("landmarks.json: digest", doc.get("digest")),
    )


def read_manifest(directory: Path) -> Manifest:
    """Parse `directory/manifest.json`, which must be a regular file of bounded size."""
    return parse_manifest(_read_regular_file(Path(directory) / MANIFEST_FILE, MAX_MANIFEST_BYTES))


def read_landmarks_ref(path: Path) -> LandmarksRef:
    """Parse the landmark file at `path`, which must be a regular file of bounded size."""
    return parse_landmarks_ref(_read_regular_file(Path(path), MAX_LANDMARKS_BYTES))


def check_release_dir(directory: Path) -> Manifest:
    """Check a release directory against its own manifest and return the manifest.

    Refused: files missing, extra, symlinked or differing in sha256/length from the manifest, and a
    landmarks.json that is not the landmark set named by the manifest (mix-and-match). An installed
    release's `.tuf/` metadata directory is the one extra entry allowed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ReleaseError(f"{directory}: not a release directory")
    manifest = read_manifest(directory)
    expected = set(manifest.files) | {MANIFEST_FILE}
    for present in os.scandir(directory):
        if present.name == INSTALL_METADATA_DIR and present.is_dir(follow_symlinks=False):
            continue
        if present.name not in expected:
            raise ReleaseError(f"{directory}: unexpected file {present.name!r} is not listed in the manifest")
    for name, entry in sorted(manifest.files.items()):
        _require_regular(directory / name)
        sha256, length = file_sha256(directory / name)
        if (sha256, length) != (entry.sha256, entry.length):
            raise ReleaseError(f"{directory}: {name} does not match the manifest (sha256 or length differ)")
    landmarks = read_landmarks_ref(directory / LANDMARKS_FILE)
    if landmarks.digest != manifest.landmarks_digest or landmarks.version != manifest.landmarks_version:
        raise ReleaseError(
            f"{directory}: landmarks.json is landmark set v{landmarks.version} ({landmarks.digest[:12]}…) but release "
            f"{manifest.version} was built with v{manifest.landmarks_version} ({manifest.landmarks_digest[:12]}…); "
            "refusing to mix weights and landmarks from different releases"
        )
    return manifest


def _load_json_object(data: bytes, what: str, limit: int) -> dict[str, Any]:
    if not isinstance(data, bytes):
        raise ReleaseError(f"{what}: expected bytes")
    if len(data) > limit:
        raise ReleaseError(f"{what}: larger than {limit} bytes")
    try:
        doc = json.loads(data.decode("utf-8"), object_pairs_hook=_without_duplicates, parse_constant=_no_constants)
        json.dumps(doc, ensure_ascii=False).encode("utf-8")  # lone surrogates would break writing it back
    except UnicodeError:
        raise ReleaseError(f"{what}: not valid UTF-8") from None
    except RecursionError:
        raise ReleaseError(f"{what}: nested too deeply") from None
    except ValueError as error:
        raise ReleaseError(f"{what}: not valid JSON ({str(error)[:80]})") from None
    if not isinstance(doc, dict):
        raise ReleaseError(f"{what}: expected a JSON object")
    return doc


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Duplicate keys are refused: two parsers could otherwise disagree on which value counts."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _versioned(key: str, value: object) -> ReleaseVersion:
    try:
        return ReleaseVersion.parse(value)
    except ReleaseError as error:
        raise ReleaseError(f"manifest.json: {key}: {error}") from None


def _integer(key: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ReleaseError(f"{key} must be an integer >= {minimum}")
    return value


def _sha256(key: str, value: object) -> str:
    if not isinstance(value, str) or _SHA256.fullmatch(value) is None:
        raise ReleaseError(f"{key} must be 64 lowercase hex characters (sha256)")
    return value


def _files(value: object) -> dict[str, FileEntry]:
    if not isinstance(value, dict) or not 0 < len(value) <= MAX_FILES:
        raise ReleaseError(f"manifest.json: files must be an object with 1-{MAX_FILES} entries")
    files: dict[str, FileEntry] = {}
    for name, entry in value.items():
        if not is_file_name(name) or name == MANIFEST_FILE:
            raise ReleaseError(f"manifest.json: {name[:40]!r} is not an allowed release file name")
        if not isinstance(entry, dict) or set(entry) != {"sha256", "length"}:
            raise ReleaseError(f"manifest.json: files[{name!r}] must have exactly sha256 and length")
        files[name] = FileEntry(
            _sha256(f"manifest.json: files[{name!r}].sha256", entry["sha256"]),
            _integer(f"manifest.json: files[{name!r}].length", entry["length"], minimum=0),
        )
    absent = [name for name in REQUIRED_FILES if name not in files]
    if absent:
        raise ReleaseError(f"manifest.json: files must list {', '.join(absent)}")
    return files


def _require_regular(path: Path) -> os.stat_result:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise ReleaseError(f"{path.parent}: {path.name} is missing") from None
    if not stat.S_ISREG(info.st_mode):
        raise ReleaseError(f"{path.parent}: {path.name} is not a regular file (symlinks are refused)")
    return info


def _read_regular_file(path: Path, limit: int) -> bytes:
    if _require_regular(path).st_size > limit:
        raise ReleaseError(f"{path.parent}: {path.name} is larger than {limit} bytes")
    return path.read_bytes()
