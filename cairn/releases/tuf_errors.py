"""Turn python-tuf's exceptions into one-line ReleaseErrors that say which defence fired.

A user seeing "refused: metadata expired" should learn it may be a freeze attack, not just read a
library class name; and nothing TUF raises should reach the CLI as a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from securesystemslib.exceptions import Error as SecureSystemsLibError
from tuf.api import exceptions

from cairn.protocol.errors import ReleaseError


@contextmanager
def tuf_errors(subject: str) -> Iterator[None]:
    """Re-raise any TUF failure inside the block as ReleaseError(f"{subject}: ...")."""
    try:
        yield
    except exceptions.ExpiredMetadataError as error:
        raise ReleaseError(
            f"{subject}: signed metadata has expired ({error}); the server may be replaying stale data (freeze attack)"
        ) from None
    except exceptions.UnsignedMetadataError as error:
        raise ReleaseError(f"{subject}: metadata is not signed by the keys the trusted root names ({error})") from None
    except exceptions.BadVersionNumberError as error:
        raise ReleaseError(f"{subject}: metadata version went backwards or skipped ({error}); possible rollback attack") from None
    except exceptions.LengthOrHashMismatchError as error:
        raise ReleaseError(f"{subject}: content does not match its signed hash and length ({error})") from None
    except exceptions.DownloadLengthMismatchError as error:
        raise ReleaseError(f"{subject}: the server sent more than the signed length ({error}); download aborted") from None
    except exceptions.DownloadHTTPError as error:
        raise ReleaseError(f"{subject}: the server answered HTTP {error.status_code}") from None
    except exceptions.DownloadError as error:
        raise ReleaseError(f"{subject}: download failed ({_reason(error)})") from None
    except (exceptions.RepositoryError, SecureSystemsLibError) as error:
        raise ReleaseError(f"{subject}: invalid repository metadata ({error})") from None
    except OSError as error:
        raise ReleaseError(f"{subject}: local file error ({error.strerror or error})") from None


def _reason(error: BaseException) -> str:
    """The most specific message in an exception chain (urllib3 hides it in MaxRetryError.reason)."""
    cause = error.__cause__ or error.__context__ or error
    return str(getattr(cause, "reason", None) or cause or type(cause).__name__)[:200]
