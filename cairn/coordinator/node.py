"""`cairn coordinator run`: the run's stable entry point.

It bootstraps the DHT at a fixed address with a persistent identity, answers peers' RPCs (the signed
run configuration), copies peers' signed contribution records into the ledger, serves the signed
release repository over HTTP, refreshes the TUF timestamp, and cuts releases every R global steps.
It never trains.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import hivemind

from cairn.protocol.dht_keys import make_validators
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.protocol.proto import cairn_pb2
from cairn.protocol.rpc import sign_run_config
from cairn.protocol.run_config import RunConfig
from cairn.protocol import PROTOCOL_VERSION

from cairn.protocol.workdir import Workdir

logger = logging.getLogger("cairn.coordinator")


@dataclass
class CoordinatorOptions:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 31337  # the DHT's fixed TCP port
    http_host: str = "127.0.0.1"
    http_port: int = 8700  # release repository
    release_every: int = 0  # every R global steps' worth of samples (0: only on request)
    poll_seconds: float = 3.0
    spot_check_seconds: float = 20.0
    metrics_port: int | None = None  # a separate /metrics listener (health checks), besides the release port
    metrics_host: str = "0.0.0.0"  # how often the averaged state is loaded (spot checks, releases)
    timestamp_refresh_seconds: float = 3600.0
    announce_host: str | None = None  # public address written into the join address
    outside_reference: bool = True  # measure each release's mutual kNN with all-MiniLM-L6-v2 (if installed)
    key_passphrase: bytes | None = field(default=None, repr=False)  # opens encrypted targets keys for unattended releases


class Backend:
    """RPC behaviour: answers from the signed run configuration and the release repository."""

    def __init__(self, config: RunConfig, key, workdir: Workdir, repository_url: str, epoch_limit: Callable[[], int]):
        self.signed_config = sign_run_config(config, key)
        self.workdir = workdir
        self.repository_url = repository_url
        self.epoch_limit = epoch_limit  # must not touch the ledger: this runs on the event loop, the ledger in the worker

    async def run_config(self, request: cairn_pb2.RunConfigRequest) -> cairn_pb2.RunConfigResponse:
        if request.protocol_version != PROTOCOL_VERSION:
            return cairn_pb2.RunConfigResponse(error=f"this run speaks protocol v{PROTOCOL_VERSION}, the peer v{request.protocol_version}")
        return self.signed_config

    async def latest_release(self) -> cairn_pb2.ReleaseAnnouncement:
        from cairn.coordinator.publishing.repository import ReleaseRepository

        latest = ReleaseRepository(self.workdir.root).latest_version()
        if latest is None:
            return cairn_pb2.ReleaseAnnouncement(repository_url=self.repository_url)
        return cairn_pb2.ReleaseAnnouncement(version=str(latest), repository_url=self.repository_url)

    async def epoch_bound(self) -> cairn_pb2.EpochBound:
        return cairn_pb2.EpochBound(limit=max(int(self.epoch_limit()), 0))


def start_dht(workdir: Workdir, config: RunConfig, options: CoordinatorOptions, key) -> hivemind.DHT:
    """A DHT node at a fixed address with a persistent libp2p identity (same PeerID after restarts).

    After a restart it rejoins through the peers it knew (saved at every poll): as the bootstrap
    node it has no one else to ask, and peers only redial it when their routing needs it.
    """
    from hivemind.p2p import P2PDaemonError

    settings = dict(
        start=True,
        host_maddrs=[f"/ip4/{options.host}/tcp/{options.port}"],
        identity_path=str(workdir.p2p_identity),
        record_validators=make_validators(config.run_id, key),
    )
    known = load_known_peers(workdir)
    if known:
        try:
            return hivemind.DHT(initial_peers=known, ensure_bootstrap_success=False, **settings)
        except P2PDaemonError:  # p2pd refuses to start when none of them answers: they have all left
            logger.info("none of the %d peers known from the last run answered; starting a new network", len(known))
    return hivemind.DHT(**settings)


async def _connected_peers(dht: hivemind.DHT, node) -> list[str]:
    return [f"{addr}/p2p/{info.peer_id}" for info in await node.p2p.list_peers() for addr in info.addrs]


def save_known_peers(dht: hivemind.DHT, workdir: Workdir) -> None:
    addresses = dht.run_coroutine(_connected_peers)
    if addresses:
        atomic_write_bytes(workdir.known_peers, json.dumps(addresses[:64]).encode())


def load_known_peers(workdir: Workdir) -> list[str]:
    try:
        addresses = json.loads(workdir.known_peers.read_text())
    except (OSError, ValueError):
        return []
    return [a for a in addresses if isinstance(a, str) and a.startswith("/")] if isinstance(addresses, list) else []


def join_addresses(dht: hivemind.DHT, announce_host: str | None) -> list[str]:
    addresses = [str(a) for a in dht.get_visible_maddrs()]
    if announce_host:
        addresses = [a.replace("/ip4/127.0.0.1/", f"/ip4/{announce_host}/") for a in addresses]
    return addresses
