"""A peer's Prometheus metrics, and an opt-in HTTP endpoint that serves them.

The metrics sit in their own CollectorRegistry, not prometheus_client's global one, so that several
peers in one process (tests, the local swarm command) do not collide, and so that the endpoint shows
Cairn's numbers only. Labels have a handful of fixed values: a label per peer or per step would make
every scrape grow.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

RoundOutcome = Literal["success", "failure", "timeout"]
_OUTCOMES: tuple[RoundOutcome, ...] = ("success", "failure", "timeout")


@dataclass(frozen=True)
class PeerMetrics:
    """The metrics a peer updates; exported as `cairn_<name>` from `registry`."""

    registry: CollectorRegistry
    samples: Counter
    steps: Counter
    loss: Gauge
    allreduce_rounds: Counter
    allreduce_duration: Histogram
    bytes_sent: Counter
    bytes_received: Counter
    visible_peers: Gauge
    global_step: Gauge

    def observe_round(self, outcome: RoundOutcome, seconds: float) -> None:
        """Count one all-reduce round and its duration; only the three known outcomes are accepted."""
        if outcome not in _OUTCOMES:
            raise ValueError(f"unknown all-reduce outcome {outcome!r}; expected one of {_OUTCOMES}")
        self.allreduce_rounds.labels(outcome=outcome).inc()
        self.allreduce_duration.observe(seconds)


def create_peer_metrics() -> PeerMetrics:
    """A fresh registry with every peer metric registered (all at zero, every outcome present)."""
    registry = CollectorRegistry()
    common: dict[str, Any] = dict(namespace="cairn", registry=registry)
    rounds = Counter("allreduce_rounds", "All-reduce rounds by outcome", ["outcome"], **common)
    for outcome in _OUTCOMES:
        rounds.labels(outcome=outcome)  # export zeros, so rates work before the first failure
    return PeerMetrics(
        registry=registry,
        samples=Counter("samples", "Training samples processed by this peer", **common),
        steps=Counter("steps", "Local optimizer steps (mini-batches) of this peer", **common),
        loss=Gauge("loss", "Latest training loss of this peer", **common),
        allreduce_rounds=rounds,
        allreduce_duration=Histogram(
            "allreduce_duration_seconds",
            "Wall time of all-reduce rounds",
            buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0),
            **common,
        ),
        bytes_sent=Counter("bytes_sent", "Bytes this peer sent for averaging", **common),
        bytes_received=Counter("bytes_received", "Bytes this peer received for averaging", **common),
        visible_peers=Gauge("visible_peers", "Peers of the run this peer currently sees", **common),
        global_step=Gauge("global_step", "The swarm's global step (hivemind epoch) as seen by this peer", **common),
    )


@dataclass
class MetricsServer:
    """A running metrics endpoint; `stop()` closes its socket and joins its thread."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def start_metrics_server(port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> MetricsServer:
    """Serve `registry` at http://host:port/metrics (any path works). Port 0 picks a free port.

    0.0.0.0 lets a Prometheus on another machine scrape it; pass 127.0.0.1 to keep it local.
    """
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(host=host, port=server.server_port, _server=server, _thread=thread)
