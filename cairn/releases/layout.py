"""Names shared by publisher, server and client: release file names and TUF target paths.

Every name that ends up in a filesystem path is checked against one strict pattern here, so no
component coming from a manifest, a server or a command line can contain a slash or start a `..`.
"""

from __future__ import annotations

import re

from cairn.releases.version import SEMVER_PATTERN, ReleaseVersion

MANIFEST_FILE = "manifest.json"
LANDMARKS_FILE = "landmarks.json"
REQUIRED_FILES = ("model.safetensors", "config.json", "tokenizer.json", LANDMARKS_FILE)
INSTALL_METADATA_DIR = ".tuf"
"""Inside an installed release: the signed TUF metadata it was verified against."""

FILE_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}"
_FILE_NAME_RE = re.compile(FILE_NAME)
_RELEASE_TARGET_RE = re.compile(rf"releases/({SEMVER_PATTERN})/({FILE_NAME})")


def is_file_name(name: object) -> bool:
    """True for a plain file name: no separators, no leading dot, at most 100 characters."""
    return isinstance(name, str) and _FILE_NAME_RE.fullmatch(name) is not None


def release_target(version: ReleaseVersion, name: str) -> str:
    """The TUF target path of one file of a release."""
    return f"releases/{version}/{name}"


def landmarks_target(landmarks_version: int) -> str:
    """The TUF target path of a standalone landmark set."""
    return f"landmarks/v{landmarks_version}/{LANDMARKS_FILE}"


def parse_release_target(path: str) -> tuple[ReleaseVersion, str] | None:
    """(version, file name) for a release target path, None for any other target."""
    match = _RELEASE_TARGET_RE.fullmatch(path)
    if match is None:
        return None
    return ReleaseVersion.parse(match.group(1)), match.group(5)
