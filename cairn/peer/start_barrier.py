"""Start together: wait (bounded) until the expected number of peers is at the start line.

Why not hivemind's progress tracker: a peer reports its progress only once it has accumulated samples
(ProgressTracker._progress_reporter skips a peer with none), so peers waiting before their first step never
see each other there; every `--wait-for-peers` wait ran to its time-out, and peers then started stepping as
far apart as their start-ups were. With a small global batch the first one met the target alone, its round
found no group, and the other spent the run downloading the state it had fallen behind
(tests/test_shaped_network.py). Each waiting peer therefore writes one entry under the run's `ready` key
(owner-tagged subkey: one per identity) and polls until it sees enough; peers of a running swarm, which no
longer write `ready`, count through the tracker as before.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import hivemind
from hivemind.utils import get_dht_time
from hivemind.utils.crypto import RSAPrivateKey

from cairn.protocol.dht_keys import RunKeys, owner_public_id, owner_subkey

logger = logging.getLogger("cairn.peer")

READY_TTL_S = 60.0  # an entry outlives the longest wait; a peer that left stops counting after this
POLL_S = 0.25  # the skew it leaves between peers' first steps, well inside a round's matchmaking time


def ready_peers(dht: hivemind.DHT, run_id: str) -> set[str]:
    """Public ids of the peers waiting at the start line now (entries that fail the schema are dropped by the DHT)."""
    found = dht.get(RunKeys(run_id).ready, latest=True)
    entries = found.value if found is not None and isinstance(found.value, dict) else {}
    return {owner for owner in map(owner_public_id, entries) if owner is not None}


def wait_for_peers(
    dht: hivemind.DHT,
    run_id: str,
    identity: RSAPrivateKey,
    expected: int,
    *,
    running_peers: Callable[[], int],
    stopped: Callable[[], bool],
    timeout: float = 30.0,
) -> int:
    """Announce this peer and wait until `expected` peers are waiting or training (or `timeout` s, or a stop).

    Returns the count seen last. `running_peers` is the tracker's count of peers already training (a late joiner
    meets a swarm whose peers wrote their `ready` entries long ago)."""
    if expected <= 1:
        return 1
    key, subkey = RunKeys(run_id).ready, owner_subkey(identity)
    deadline, announced, seen = time.monotonic() + timeout, float("-inf"), 0
    while True:
        now = get_dht_time()
        if now - announced > READY_TTL_S / 2:
            dht.store(key, subkey=subkey, value=float(now), expiration_time=now + READY_TTL_S)
            announced = now
        seen = max(len(ready_peers(dht, run_id)), running_peers())
        if seen >= expected or stopped() or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    waited = timeout - max(deadline - time.monotonic(), 0.0)
    if seen < expected:
        logger.info("starting with %d of the %d peers asked for by --wait-for-peers (waited %.0f s)", seen, expected, waited)
    else:
        logger.info("%d peers at the start line after %.1f s", seen, waited)
    return seen
