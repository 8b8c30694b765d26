"""Release versions: strict "MAJOR.MINOR.PATCH" semver, ordered numerically.

Rollback checks compare versions, so the parser accepts exactly one spelling per version (no
leading zeros, no pre-release suffix): "1.02.0" and "1.2.0" must not be two different releases.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from cairn.protocol.errors import ReleaseError

SEMVER_PATTERN = r"(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})\.(0|[1-9][0-9]{0,8})"
_SEMVER = re.compile(SEMVER_PATTERN)


class ReleaseVersion(NamedTuple):
    """A release version; tuple ordering is semver precedence."""

    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: object) -> ReleaseVersion:
        """Parse "MAJOR.MINOR.PATCH"; anything else is a ReleaseError."""
        if not isinstance(text, str):
            raise ReleaseError(f"release version must be a string like '1.2.3', got {type(text).__name__}")
        match = _SEMVER.fullmatch(text)
        if match is None:
            raise ReleaseError(f"release version must look like '1.2.3' (no leading zeros), got {text[:40]!r}")
        return cls(*(int(part) for part in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"
