"""Prometheus metrics of the coordinator, served at /metrics beside the release repository."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        common: dict[str, Any] = dict(namespace="cairn_coordinator", registry=self.registry)
        self.global_step = Gauge("global_step", "The swarm's global step (hivemind epoch)", **common)
        self.peers_online = Gauge("peers_online", "Peers with a contribution record in the last minute", **common)
        self.credited_samples = Gauge("credited_samples", "Samples credited by the ledger, all peers", **common)
        self.claimed_samples = Gauge("claimed_samples", "Samples claimed by peers, all peers", **common)
        self.releases = Counter("releases", "Releases cut by this process", **common)
        self.spot_checks = Counter("spot_checks", "Spot checks of peers' probe losses by result", ["result"], **common)
        for result in ("passed", "own_state", "failed"):  # own_state: passed on the state the peer serves
            self.spot_checks.labels(result=result)

    async def handle(self, request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(self.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response
