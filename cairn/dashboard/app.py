"""The dashboard's aiohttp application: routes, thin handlers, middlewares and lifecycle.

Each page is registered twice from one table entry: the HTML page and its `/api/...` JSON twin,
both fed by the same function of cairn.dashboard.views. Data functions run on one worker thread (SQLite
and files block); results are cached for `cache_seconds` and computed once however many clients
ask at the same moment, so a crowd of browsers costs the ledger one query per page per interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cairn.dashboard import pages, views
from cairn.dashboard.ledger import SORT_COLUMNS
from cairn.dashboard.live import LiveRecords
from cairn.dashboard.metrics import DashboardMetrics, create_metrics, metrics_middleware
from cairn.dashboard.security import (
    MAX_BODY_BYTES,
    RateLimiter,
    add_security_headers,
    body_limit,
    rate_limit_middleware,
)
from cairn.protocol.errors import CairnError
from cairn.protocol.workdir import Workdir
from cairn.releases.version import ReleaseVersion

logger = logging.getLogger("cairn.dashboard")

PUBLIC_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class DashboardConfig:
    workdir: Path
    rate_per_second: float = 10.0
    rate_burst: float = 60.0
    rate_max_clients: int = 4096
    cache_seconds: float = 2.0
    dht_join: tuple[str, ...] = ()
    run_id: str | None = None  # for --dht-join; default: the run id in DIR/run.json


@dataclass
class Dashboard:
    """Per-app state, stored under one AppKey."""

    config: DashboardConfig
    sources: views.Sources
    limiter: RateLimiter
    metrics: DashboardMetrics
    executor: ThreadPoolExecutor
    static: dict[str, tuple[bytes, str, str]]
    templates: Any
    cache: TTLCache

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run a data function on the worker thread, through the cache."""
        loop = asyncio.get_running_loop()
        return await self.cache.get((function.__name__, *args), lambda: loop.run_in_executor(self.executor, function, self.sources, *args))


DASHBOARD = web.AppKey("dashboard", Dashboard)


class TTLCache:
    """At most `size` results, each reused for `ttl` seconds; concurrent callers share one computation."""

    def __init__(self, ttl: float, size: int = 256):
        self.ttl, self.size = ttl, size
        self._entries: OrderedDict[Any, tuple[float, asyncio.Future]] = OrderedDict()

    async def get(self, key: Any, compute: Callable[[], Awaitable[Any]]) -> Any:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now or (entry[1].done() and entry[1].exception() is not None):
            future = asyncio.ensure_future(compute())
            entry = self._entries[key] = (now + self.ttl, future)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return await asyncio.shield(entry[1])


# ---- responses ---------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: replace them with null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def json_text(data: Any) -> str:
    return json.dumps(_finite(data), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json_text(data), status=status, content_type="application/json")


def render(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    dashboard = request.app[DASHBOARD]
    html = dashboard.templates.get_template(template).render(request_path=request.path, **context)
    return web.Response(text=html, status=status, content_type="text/html")


# ---- pages and their JSON twins ----------------------------------------------------------------


def _sort(request: web.Request) -> tuple[str]:
    sort = request.query.get("sort", "samples")
    if sort not in SORT_COLUMNS:
        raise web.HTTPBadRequest(reason=f"sort must be one of {', '.join(SORT_COLUMNS)}")
    return (sort,)


def _public_id(request: web.Request) -> tuple[str]:
    public_id = request.match_info["public_id"]
    if PUBLIC_ID.fullmatch(public_id) is None:
        raise web.HTTPNotFound(reason="no contributor with this id")
    return (public_id,)


def _no_args(request: web.Request) -> tuple:
    return ()


@dataclass(frozen=True)
class Page:
    """A page and its JSON twin: one data function of cairn.dashboard.views (by name), a template, its charts."""

    path: str
    api_path: str
    view: str
    template: str
    charts: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    args: Callable[[web.Request], tuple] = _no_args  # validated request parameters for the view


PAGES = (
    Page("/", "/api/swarm", "swarm", "swarm.html", pages.swarm_charts),
    Page("/contributors", "/api/contributors", "contributors", "contributors.html", args=_sort),
    Page(
        "/contributors/{public_id}",
        "/api/contributors/{public_id}",
        "contributor",
        "contributor.html",
        pages.contributor_charts,
        _public_id,
    ),
    Page("/convergence", "/api/convergence", "convergence", "convergence.html", pages.convergence_charts),
    Page("/releases", "/api/releases", "releases", "releases.html"),
    Page("/landmarks", "/api/landmarks", "landmarks", "landmarks.html"),
)


def page_handlers(page: Page):
    """The HTML and JSON handlers of `page`; both outputs are cached like the data they come from."""

    async def answer(request: web.Request, kind: str) -> str:
        dashboard = request.app[DASHBOARD]
        args = page.args(request)

        async def build() -> str | None:
            data = await dashboard.call(getattr(views, page.view), *args)
            if data is None:
                return None
            if kind == "json":
                return json_text(data)
            charts = page.charts(data) if page.charts is not None else {}
            api = page.api_path.format(**request.match_info)
            return dashboard.templates.get_template(page.template).render(request_path=request.path, data=data, charts=charts, api=api)

        text = await dashboard.cache.get((kind, page.view, *args), build)
        if text is None:
            raise web.HTTPNotFound(reason="not found")
        return text

    async def html(request: web.Request) -> web.Response:
        return web.Response(text=await answer(request, "html"), content_type="text/html")

    async def api(request: web.Request) -> web.Response:
        return web.Response(text=await answer(request, "json"), content_type="application/json")

    return html, api


async def release_file(request: web.Request) -> web.StreamResponse:
    """A signed release file, with Range support; the name must be one the signed metadata lists."""
    try:
        version = ReleaseVersion.parse(request.match_info["version"])
    except CairnError:
        raise web.HTTPNotFound() from None
    name = request.match_info["name"]
    dashboard = request.app[DASHBOARD]
    found = await asyncio.get_running_loop().run_in_executor(dashboard.executor, dashboard.sources.repository.release_file, version, name)
    if found is None:
        raise web.HTTPNotFound(reason="no such file in this signed release")
    path, _ = found
    return web.FileResponse(
        path,
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',  # name matched FILE_NAME: no quotes or slashes
            "Cache-Control": "public, max-age=31536000, immutable",
            "Content-Type": "application/octet-stream",
        },
    )


async def static_file(request: web.Request) -> web.Response:
    asset = request.app[DASHBOARD].static.get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound()
    data, content_type, digest = asset
    cache = "public, max-age=31536000, immutable" if request.query.get("v") == digest else "public, max-age=300"
    return web.Response(
        body=data,
        content_type=content_type,
        charset="utf-8" if content_type != "image/svg+xml" else None,
        headers={"Cache-Control": cache, "ETag": f'"{digest}"'},
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    dashboard = request.app[DASHBOARD]
    swarm = await dashboard.call(views.swarm)
    dashboard.metrics.peers_online.set(swarm["peers_online"])
    if swarm["global_step"] is not None:
        dashboard.metrics.global_step.set(swarm["global_step"])
    body = generate_latest(dashboard.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# ---- errors ------------------------------------------------------------------------------------


@web.middleware
async def error_pages(request: web.Request, handler):
    """Every error as a small page (HTML, or JSON under /api/), never a traceback."""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _error_response(request, error.status, error.reason, error.headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        logger.exception("dashboard: error serving %s", request.path)
        return _error_response(request, 500, "Internal Server Error", {})


def _error_response(request: web.Request, status: int, reason: str, headers) -> web.Response:
    if request.path.startswith("/api/"):
        response = json_response({"error": reason, "status": status}, status=status)
    else:
        response = render(request, "error.html", status=status, status_code=status, reason=reason, api=None)
    for name in ("Allow", "Retry-After"):
        if name in headers:
            response.headers[name] = headers[name]
    return response


# ---- the app -----------------------------------------------------------------------------------


def make_app(config: DashboardConfig, *, clock: Callable[[], float] = time.time, live: LiveRecords | None = None) -> web.Application:
    """The dashboard over `config.workdir`; `live` (or `config.dht_join`) adds DHT records to the swarm view."""
    if live is None and config.dht_join:
        live = LiveRecords(config.run_id or _run_id(config.workdir), config.dht_join)
    static = pages.load_static()
    dashboard = Dashboard(
        config=config,
        sources=views.Sources.for_workdir(config.workdir, live=live, clock=clock),
        limiter=RateLimiter(config.rate_per_second, config.rate_burst, config.rate_max_clients),
        metrics=create_metrics(),
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="cairn-dashboard-data"),
        static=static,
        templates=pages.make_environment(static),
        cache=TTLCache(config.cache_seconds),
    )
    app = web.Application(
        client_max_size=MAX_BODY_BYTES,
        middlewares=[metrics_middleware(dashboard.metrics), error_pages, rate_limit_middleware(dashboard.limiter), body_limit],
    )
    app[DASHBOARD] = dashboard
    app.on_response_prepare.append(add_security_headers)
    app.cleanup_ctx.append(partial(_lifecycle, dashboard))
    for page in PAGES:
        html, api = page_handlers(page)
        app.router.add_get(page.path, html)
        app.router.add_get(page.api_path, api)
    app.router.add_get("/releases/{version}/files/{name}", release_file)
    app.router.add_get("/static/{name}", static_file)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


async def _lifecycle(dashboard: Dashboard, app: web.Application):
    if dashboard.sources.live is not None:
        dashboard.sources.live.start()
    yield
    if dashboard.sources.live is not None:
        await asyncio.get_running_loop().run_in_executor(None, dashboard.sources.live.shutdown)
    dashboard.executor.shutdown(wait=True, cancel_futures=True)
    dashboard.sources.ledger.close()


def _run_id(workdir: Path) -> str:
    layout = Workdir(Path(workdir))
    if not layout.is_initialised():
        raise CairnError(f"--dht-join needs the run id: {layout.run_config_path} is missing (or pass --run-id)")
    return layout.load_run_config().run_id
