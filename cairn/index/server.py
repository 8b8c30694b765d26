"""`cairn index serve`: a small read-only HTTP search endpoint (aiohttp, JSON).

GET /search?q=TEXT&k=10 -> {"query", "hits": [{"id", "score", "text", "metadata"}], "release", "generation"}
GET /info               -> the same object as `cairn index info`
Bad requests answer 400 with {"error": one line}. The index and the release are opened once, in `cleanup_ctx`;
each request first checks whether an upgrade switched generations and follows it (queries then use the
release the index was upgraded to, unless the server was started with --release). Encoding runs in a worker
thread behind a lock (torch on a shared CPU gains nothing from parallel queries), so the event loop stays free.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from cairn.index.index import MAX_K, SearchIndex
from cairn.protocol.errors import CairnError
from cairn.tasks.api import Release

MAX_QUERY_CHARS = 2000
INDEX_KEY = web.AppKey("index", SearchIndex)
LOCK_KEY = web.AppKey("lock", asyncio.Lock)
RELEASE_KEY = web.AppKey("release", Release)
RELEASE_DIR_KEY: web.AppKey[Path | None] = web.AppKey("release_dir")


def make_app(index_dir: Path, release_dir: Path | None = None, device: str = "auto") -> web.Application:
    app = web.Application()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        index = SearchIndex(index_dir, device)
        app[INDEX_KEY], app[LOCK_KEY], app[RELEASE_DIR_KEY] = index, asyncio.Lock(), release_dir
        app[RELEASE_KEY] = index.release(release_dir)  # load (and check) once, before the first request
        yield
        index.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/search", search)
    app.router.add_get("/info", info)
    return app


def _run(app: web.Application, work) -> Any:
    index = app[INDEX_KEY]
    if index.refresh():  # an upgrade switched generations: the index's own release, or the one given, checked again
        app[RELEASE_KEY] = index.release(app[RELEASE_DIR_KEY])
    return work(index)


async def search(request: web.Request) -> web.Response:
    query = request.query.get("q", "")
    if not query.strip():
        return _error("missing query: pass ?q=TEXT")
    if len(query) > MAX_QUERY_CHARS:
        return _error(f"query longer than {MAX_QUERY_CHARS} characters")
    try:
        k = int(request.query.get("k", "10"))
    except ValueError:
        return _error("k must be an integer")
    if not 1 <= k <= MAX_K:
        return _error(f"k must be between 1 and {MAX_K}")
    app = request.app

    def work(index: SearchIndex) -> dict:
        hits = index.search(query, k=k, release=app[RELEASE_KEY])[0]
        return {
            "query": query,
            "release": app[RELEASE_KEY].info.get("version"),
            "generation": index.meta.generation,
            "hits": [{key: hit[key] for key in ("id", "score", "text", "metadata")} for hit in hits],
        }

    return await _answer(app, work)


async def info(request: web.Request) -> web.Response:
    return await _answer(request.app, lambda index: index.info())


async def _answer(app: web.Application, work) -> web.Response:
    async with app[LOCK_KEY]:
        try:
            return web.json_response(await asyncio.to_thread(_run, app, work))
        except CairnError as error:
            return _error(str(error))


def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)
