"""Real hivemind averaging groups in the test process: DHTs on loopback, torn down in one place."""

from __future__ import annotations

from collections.abc import Iterable

import hivemind


def linked_dhts(count: int) -> list[hivemind.DHT]:
    """`count` in-process DHTs (each with its own p2pd) on loopback, all bootstrapped from the first."""
    first = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    return [first] + [
        hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=first.get_visible_maddrs()) for _ in range(count - 1)
    ]


def shut_down(averagers: Iterable, dhts: Iterable[hivemind.DHT]) -> None:
    """Averagers first (their processes use the DHTs), then the DHTs."""
    for averager in averagers:
        averager.shutdown()
    for dht in dhts:
        dht.shutdown()
