"""How far ahead of what the coordinator last verified a global step can honestly be (issue 12, attack 1).

hivemind trusts epochs that peers declare: the tracker's global epoch is the highest any peer reports, and a
state download takes the donor with the highest declared state-sharing priority. A peer declaring epoch 10^9
would be every joiner's donor, and every peer would believe it is behind and keep downloading. The coordinator
knows the last global step it loaded and checked (its *trusted epoch*); a swarm cannot step faster than one
averaging round per `MIN_SECONDS_PER_STEP`, so anything beyond `plausible_epoch_limit` is a lie.

The coordinator computes the bound from its ledger and answers it over RPC (`EpochBound` in cairn.proto);
peers keep the last answer and extrapolate it with their own monotonic clock (`EpochBound` below), so neither
side's wall clock has to agree with the other's.
"""

from __future__ import annotations

import time
from typing import Callable

# the fastest a swarm can step: an averaging round takes matchmaking (seconds) plus the all-reduce. An epoch further
# ahead of the last one trusted than this allows is a peer's lie (issue 12: epoch 10^9 froze --release-every)
MIN_SECONDS_PER_STEP = 0.5


def plausible_epoch_limit(trusted_epoch: int, trusted_at: float, now: float, min_seconds_per_step: float = MIN_SECONDS_PER_STEP) -> int:
    """The highest global step the swarm can have reached by `now`, from the last one the coordinator trusted."""
    return trusted_epoch + 1 + int(max(now - trusted_at, 0.0) / min_seconds_per_step)


class EpochBound:
    """The highest global step this node accepts from others: the last bound it was told, grown by the clock since.

    `set(limit)` records a bound (the coordinator's answer, or the coordinator's own ledger); `limit()` is that
    bound extrapolated to now, or None while none was ever set (then nothing is filtered: hivemind's behaviour).
    Read from any thread: the progress tracker's and the averager's callers read it, the main thread sets it.
    """

    def __init__(self, min_seconds_per_step: float = MIN_SECONDS_PER_STEP, clock: Callable[[], float] = time.monotonic):
        self.min_seconds_per_step = min_seconds_per_step
        self.clock = clock
        self._told: tuple[int, float] | None = None  # (bound, clock() when told): one tuple, replaced atomically

    def set(self, limit: int) -> None:
        self._told = (int(limit), self.clock())

    def limit(self) -> int | None:
        told = self._told
        if told is None:
            return None
        bound, at = told
        return bound + int(max(self.clock() - at, 0.0) / self.min_seconds_per_step)

    def allows(self, epoch: float) -> bool:
        limit = self.limit()
        return limit is None or epoch <= limit
