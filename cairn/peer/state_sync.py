"""Whether this peer's shared state is still the swarm's: the premise of its spot checks, and of DiLoCo.

The coordinator recomputes a peer's probe loss on the state it downloads for the probe's epoch
(cairn/coordinator/service.py), from whichever peer serves it. That comparison is fair only while the peer's shared
state is the one its partners hold at that epoch. A round that failed or timed out applies this peer's own update
instead (hivemind's fallback): from then on its state is its own, and every later outer step lands on that different
base, so the difference stays until the peer synchronises again, by a state download or by a state averaging round
with the whole group. In between, its probes are honest losses of a state nobody else holds, and a spot check takes
its credit back (docs/benchmarks.md §10, "The churn row a third time": two honest peers lost 60,416 and 79,872
samples so). While diverged, a peer publishes no probe.

DiLoCo averages full state only every `average_state_every` outer rounds (minutes to hours), so a DiLoCo peer whose
round failed downloads the swarm's state at once (`catch_up`) and keeps the inner progress it made on top of it: one
download per failed round, seconds on a home link against an outer round of a minute or more. Per-step modes wait for
their state averaging round, a few steps away.

A round "alone" (no other peer in the swarm) does not diverge: this peer's state is then the only one there is.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# hivemind's TrainingStateAverager, after a state averaging round (cairn/network/hivemind_contract.py checks it)
STATE_AVERAGED = re.compile(r"^Averaged parameters with (\d+) peers")
# cairn.peer.instrumentation's outcomes that applied this peer's own update (on some slices, for "partial")
DIVERGING_OUTCOMES = ("failure", "timeout", "partial")


class StateSync:
    """Follows what made this peer's shared state its own, and what made it the swarm's again."""

    def __init__(self, expected_peers: Callable[[], int] = lambda: 0, partial_rounds: Callable[[], int] = lambda: 0):
        self.expected_peers = expected_peers  # training peers the tracker knows, this one included
        # rounds so far that came back partly as this peer's own values (cairn/peer/aggregation.py
        # PartialRoundCountingContainer): hivemind reports them as successes
        self.partial_rounds = partial_rounds
        self._partial_seen = 0
        self.diverged = False
        self.download_tried = False  # catch_up asks once per divergence: a swarm with no donor is not asked forever
        self.catch_ups = 0  # downloads catch_up applied, for the peer's summary
        self._downloads_seen = 0
        self._lock = threading.Lock()

    def round_ended(self, outcome: str) -> None:
        """A gradient (or pseudo-gradient) round ended so (cairn.peer.instrumentation outcomes). A "success" whose
        all-reduce kept this peer's own values on some slices (a reducer failed or was refused) diverges too."""
        partial = self.partial_rounds()
        with self._lock:
            if partial != self._partial_seen:
                self._partial_seen = partial
                outcome = "partial" if outcome == "success" else outcome
            if outcome in DIVERGING_OUTCOMES:
                self.diverged, self.download_tried = True, False

    def state_averaged(self, group_size: int) -> None:
        """A state averaging round closed with this many peers: with all the tracker knows, the state is theirs."""
        if group_size >= max(2, self.expected_peers()):
            with self._lock:
                self.diverged = False

    def follow_downloads(self, applied: int) -> None:
        """`applied`: the downloads the state averager has applied so far (`BoundedStateAverager.applied_downloads`).
        Any download synchronises: catch_up's, and hivemind's own when the peer fell behind."""
        if applied != self._downloads_seen:
            with self._lock:
                self._downloads_seen, self.diverged = applied, False

    @property
    def wants_download(self) -> bool:
        return self.diverged and not self.download_tried


class StateAveragingHandler(logging.Handler):
    """hivemind reports a state averaging round only through its log: this turns the report into `state_averaged`."""

    def __init__(self, sync: StateSync):
        super().__init__(level=logging.DEBUG)
        self.sync = sync

    def emit(self, record: logging.LogRecord) -> None:
        found = STATE_AVERAGED.match(record.getMessage())
        if found:
            self.sync.state_averaged(int(found.group(1)))


def watch_state_sync(sync: StateSync) -> StateAveragingHandler:
    handler = StateAveragingHandler(sync)
    state_logger = logging.getLogger("hivemind.optim.state_averager")
    state_logger.setLevel(logging.DEBUG)
    state_logger.addHandler(handler)
    return handler


def catch_up(optimizer: Any, steps: Any, sync: StateSync) -> bool:
    """DiLoCo after a failed round: take the swarm's state now (its epoch's, `consistent_state`), keeping the inner
    progress made since. True when a download was applied. `optimizer` is a BoundedOptimizer (it counts the
    downloads it applied); `steps` a DiLoCo steps object (`state_loaded`)."""
    if not (sync.wants_download and getattr(steps, "catches_up_after_failed_rounds", False)):
        return False
    sync.download_tried = True
    before, started = optimizer.state_averager.applied_downloads, time.monotonic()
    optimizer.load_state_from_peers()
    if optimizer.state_averager.applied_downloads == before:
        logger.info("after a failed round no peer served the swarm's state: this peer's own state goes on, unprobed")
        return False
    steps.state_loaded()
    sync.catch_ups += 1
    sync.follow_downloads(optimizer.state_averager.applied_downloads)
    logger.info("after a failed round, took the swarm's state at epoch %s (%.1f s)", optimizer.local_epoch, time.monotonic() - started)
    return True
