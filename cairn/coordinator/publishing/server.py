"""Read-only HTTP serving of the release repository: `/metadata/<name>` and `/targets/<path>`.

No request path is ever joined onto the filesystem as given. Each one must match a strict pattern
of the names the repository actually writes (versioned metadata, hash-prefixed targets), which
contains no `..`, no leading dot and no empty component; symlinks and special files are not served.
Files go out through FileResponse (Range support, sendfile) and at most `max_concurrent` at a time;
beyond that the server answers 503 instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path

from aiohttp import web

from cairn.releases.layout import FILE_NAME
from cairn.releases.version import SEMVER_PATTERN

_METADATA_NAME = re.compile(r"(?:[1-9][0-9]{0,9}\.)?(?:root|targets|snapshot|timestamp)\.json")
_TARGET_PATH = re.compile(rf"(?:releases/{SEMVER_PATTERN}|landmarks/v[1-9][0-9]{{0,8}})/[0-9a-f]{{64}}\.{FILE_NAME}")
_MUTABLE = {"timestamp.json"}
_SLOTS = web.AppKey("slots", asyncio.Semaphore)
_ROOT = web.AppKey("root", Path)


class _BoundedFileResponse(web.FileResponse):
    """Holds one of the app's download slots while the file is being sent."""

    def __init__(self, path: Path, slots: asyncio.Semaphore, cache_control: str):
        super().__init__(path, headers={"Cache-Control": cache_control, "X-Content-Type-Options": "nosniff"})
        self._slots = slots

    async def prepare(self, request: web.BaseRequest):
        async with self._slots:
            return await super().prepare(request)


def make_repository_app(repository_dir: Path, max_concurrent: int = 64) -> web.Application:
    """An aiohttp app serving `repository_dir/metadata` and `repository_dir/targets` read-only."""
    app = web.Application(client_max_size=1024)
    app[_ROOT] = Path(repository_dir).resolve()
    app[_SLOTS] = asyncio.Semaphore(max_concurrent)
    app.router.add_get("/metadata/{name}", _metadata)
    app.router.add_get("/targets/{path:.+}", _target)
    return app


async def _metadata(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if _METADATA_NAME.fullmatch(name) is None:
        raise web.HTTPNotFound()
    # Versioned metadata never changes once written; timestamp.json is replaced on every refresh.
    cache = "no-cache" if name in _MUTABLE else "public, max-age=31536000, immutable"
    return _serve(request, request.app[_ROOT] / "metadata" / name, cache)


async def _target(request: web.Request) -> web.StreamResponse:
    path = request.match_info["path"]
    if _TARGET_PATH.fullmatch(path) is None:
        raise web.HTTPNotFound()
    return _serve(request, request.app[_ROOT] / "targets" / path, "public, max-age=31536000, immutable")


def _serve(request: web.Request, path: Path, cache_control: str) -> web.StreamResponse:
    try:
        mode = path.lstat().st_mode
    except OSError:
        raise web.HTTPNotFound() from None
    if not stat.S_ISREG(mode):
        raise web.HTTPNotFound()
    slots = request.app[_SLOTS]
    if slots.locked():
        raise web.HTTPServiceUnavailable(headers={"Retry-After": "5"})
    return _BoundedFileResponse(path, slots, cache_control)
