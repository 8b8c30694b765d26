"""`--dht-join`: the dashboard reads contribution records straight from a real hivemind DHT.

One DHT node on 127.0.0.1 with the run's validators stands in for the swarm; a peer's record is
stored under its owner subkey, and the dashboard (a client-mode node with a throwaway key) must show
it on /api/swarm even though the ledger has never heard of that peer.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from cairn.dashboard.app import DashboardConfig, make_app

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
RUN_ID = "t-dashboard-live"


@pytest.fixture
def swarm_node():
    import hivemind
    from hivemind.utils import get_dht_time
    from hivemind.utils.crypto import RSAPrivateKey

    from cairn.protocol.dht_keys import (
        ContributionRecord,
        RunKeys,
        make_validators,
        owner_subkey,
    )

    key = RSAPrivateKey()
    node = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], record_validators=make_validators(RUN_ID, key))
    record = ContributionRecord(
        display_name="dht <peer>",
        peer_id=str(node.peer_id),
        samples=4096,
        steps=32,
        loss=1.25,
        samples_per_second=55.5,
        device="cpu",
        uptime_seconds=300.0,
        shard=7,
        protocol_version=1,
        reported_at=time.time(),
        epoch=12,
        shards_completed=1,
        probe_epoch=-1,
        probe_shard=-1,
        probe_offset=0,
        probe_count=0,
        probe_loss=0.0,
    )
    assert node.store(RunKeys(RUN_ID).contributions, subkey=owner_subkey(key), value=record.dict(), expiration_time=get_dht_time() + 120)
    try:
        yield node
    finally:
        node.shutdown()


@pytest.mark.asyncio
async def test_dashboard_shows_live_dht_records(aiohttp_client, tmp_path, swarm_node):
    address = str(swarm_node.get_visible_maddrs()[0])
    app = make_app(DashboardConfig(workdir=tmp_path, cache_seconds=0.0, dht_join=(address,), run_id=RUN_ID))
    client = await aiohttp_client(app)
    deadline = time.monotonic() + 90
    while True:
        data = await (await client.get("/api/swarm")).json()
        if data["peers"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert data["sources"] == ["ledger", "dht"]
    assert data["global_step"] == 12, "with no ledger yet, the step comes from the records' hivemind epoch"
    (peer,) = data["peers"]
    assert (peer["display_name"], peer["source"], peer["shard"], peer["samples_per_second"]) == ("dht <peer>", "dht", 7, 55.5)
    html = await (await client.get("/")).text()
    assert "dht &lt;peer&gt;" in html
