"""The project's own error type: everything a user can cause ends as one of these, one line each."""


class CairnError(Exception):
    """Base of every error Cairn reports to a user; the CLI prints it as one line, never a traceback."""


class CorpusError(CairnError):
    """A corpus could not be read: missing file, wrong columns, empty, or not UTF-8."""


class LandmarkError(CairnError):
    """A landmark set is malformed, inconsistent with its digest, or not a prefix of its successor."""


class ReleaseError(CairnError):
    """A release is malformed, unsigned, tampered with, rolled back, expired or mixed with another."""


class ProtocolMismatch(CairnError):
    """A peer's protocol version or digests do not match the run configuration."""
