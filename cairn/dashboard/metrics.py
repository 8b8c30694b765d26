"""The dashboard's own Prometheus metrics, in their own registry (exported as `cairn_dashboard_*`).

Labels stay low-cardinality: the route *template* (`/contributors/{public_id}`, never the path),
"unmatched" for anything the router did not know, and the status code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNMATCHED = "unmatched"


@dataclass(frozen=True)
class DashboardMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    peers_online: Gauge
    global_step: Gauge


def create_metrics() -> DashboardMetrics:
    registry = CollectorRegistry()
    common: dict[str, Any] = {"namespace": "cairn", "subsystem": "dashboard", "registry": registry}
    return DashboardMetrics(
        registry=registry,
        requests=Counter("requests", "HTTP requests by route template and status", ["route", "status"], **common),
        latency=Histogram(
            "request_duration_seconds",
            "Time to produce a response, by route template",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            **common,
        ),
        peers_online=Gauge("peers_online", "Peers online as the dashboard last computed it", **common),
        global_step=Gauge("global_step", "Latest global step in the ledger", **common),
    )


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def metrics_middleware(metrics: DashboardMetrics):
    @web.middleware
    async def measure(request: web.Request, handler):
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as error:
            status = error.status
            raise
        finally:
            route = route_template(request)
            metrics.requests.labels(route=route, status=str(status)).inc()
            metrics.latency.labels(route=route).observe(time.perf_counter() - started)

    return measure
