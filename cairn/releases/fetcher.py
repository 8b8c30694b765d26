"""The HTTP fetcher handed to python-tuf: its default one, plus byte counts for a progress bar and
clean errors for connections cut mid-download.

Length limits stay where TUF enforces them (FetcherInterface.download_file stops at the signed
length + 1), so reporting progress cannot weaken the endless-data defence.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import urllib3
from tuf.api.exceptions import DownloadError
from tuf.ngclient.urllib3_fetcher import Urllib3Fetcher


class ProgressFetcher(Urllib3Fetcher):
    """Urllib3Fetcher that calls `on_bytes(n)` for every chunk received while it is set."""

    def __init__(self) -> None:
        super().__init__(app_user_agent="cairn-release")
        self.on_bytes: Callable[[int], None] | None = None

    def _fetch(self, url: str) -> Iterator[bytes]:
        return self._reporting(super()._fetch(url))

    def _reporting(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Also turn errors raised mid-stream (a connection cut short) into TUF's DownloadError,
        which python-tuf only does for errors raised before the first byte."""
        try:
            for chunk in chunks:
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
                yield chunk
        except urllib3.exceptions.HTTPError as error:
            raise DownloadError(f"connection failed mid-download: {error}") from error
