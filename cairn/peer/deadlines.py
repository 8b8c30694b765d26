"""Averaging deadlines that follow the rounds this peer's groups actually take (issue 13; hivemind issue #676).

hivemind bounds a round twice with one fixed number, the run's `--averaging-timeout`: the training process waits
that long for a round's result, and the averager's process cancels an all-reduce that runs longer. One number is
wrong both ways (#676). Too short: behind 10 Mbit/s links a DiLoCo round of the default encoder (7.8 MB sent per
peer, 6.3 s on the wire at best) took long enough that one peer of four gave up at 15 s while its group finished
and applied its own pseudo-gradient instead (docs/benchmarks.md, section 10). Too long: where rounds take a second,
a group that stalls holds its peers for the whole 15 s.

`RoundDeadlines` sets each all-reduce's deadline from the durations of this averager's recent successful
all-reduces (the group that formed is in them: its size, its slowest link):
- with no history, the run's setting;
- a round that ran out of time doubles the deadline, up to the ceiling (a slow link finds its deadline in a few
  rounds; a stall is bounded by the ceiling);
- after successes, `FACTOR` x the median of the recent ones (one slow round does not move it), never below the
  minimum and never above the ceiling. The minimum is twice hivemind's `next_chunk_timeout`: a sender that dies is
  dropped after that long without a chunk, and the round finishes without its part; a deadline under it would fail
  the whole round instead.

The averager's process (`AdaptiveDeadlines`, mixed into the peer's gradient averager) applies the deadline to each
all-reduce and publishes it; the training process then waits for a round at least that long plus the matchmaking
time (`follow_round_deadline`, before each step), never less than the run's setting.

Matchmaking follows the group too (#676's quorum): a round's group starts as soon as it holds every peer it
expects (`GroupQuorum`), instead of always waiting out `--matchmaking-time`. hivemind starts a group early once it
reaches `target_group_size`; Cairn set none, so every leader waited the whole matchmaking time even when everyone
had joined in the first tenth of it. The expected size is the larger of two counts: the training peers whose
progress reports are live in hivemind's tracker (`expect_group`, before each step), and the size of this averager's
last successful group (a tracker that has not yet seen everyone's first report must not start a group without
them). The matchmaking time stays the deadline for the peers that do not come: a peer that left keeps a live report
until it expires (hivemind's `metadata_expiration`, 60 s) and is in the last group, so the group waits out the time
and starts without it, exactly as before; the round after that expects the smaller group. A newcomer whose report
has not reached the leader yet can find the group started without it, and joins the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import multiprocessing as mp
import statistics
import time
from collections import deque
from typing import Any, AsyncIterator

from hivemind.averaging.partition import AllreduceException
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2
from hivemind.utils.asyncio import achain, anext, as_aiter

logger = logging.getLogger("cairn.peer.deadlines")

FACTOR = 3.0  # a deadline of 3x the typical round: room for a slower group, far below a stall
HISTORY = 8  # successful rounds remembered: the median of the last eight
CEILING_FACTOR = 8.0  # the longest deadline, in multiples of the run's setting (120 s at the 15 s default)


class RoundDeadlines:
    """The next all-reduce's deadline, from how the recent ones went (module docstring)."""

    def __init__(self, initial: float, minimum: float, ceiling: float) -> None:
        if not 0 < minimum <= ceiling:
            raise ValueError(f"deadlines need 0 < minimum <= ceiling, got {minimum} and {ceiling}")
        self.minimum, self.ceiling = minimum, ceiling
        self.current = min(max(initial, minimum), ceiling)
        self.durations: deque[float] = deque(maxlen=HISTORY)

    def succeeded(self, seconds: float) -> None:
        self.durations.append(seconds)
        self.current = min(max(FACTOR * statistics.median(self.durations), self.minimum), self.ceiling)

    def timed_out(self) -> None:
        # the history no longer describes the groups that form now (a slower link joined, the link got slower)
        self.durations.clear()
        self.current = min(2 * self.current, self.ceiling)


class AdaptiveDeadlines:
    """Mixin for a hivemind DecentralizedAverager (before it in the MRO): each all-reduce runs under `RoundDeadlines`.

    hivemind's own bound on an all-reduce (`allreduce_timeout`) becomes the ceiling; the adaptive deadline is applied
    inside it, in the averager's process, where the all-reduce runs. `round_deadline` is the current deadline, shared
    with the training process (the run's setting until a round has taught it otherwise)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        configured = kwargs.get("allreduce_timeout") or 60.0  # hivemind.Optimizer passes the run's averaging timeout
        minimum = 2.0 * (kwargs.get("next_chunk_timeout") or 5.0)
        ceiling = max(CEILING_FACTOR * configured, minimum)
        self._round_deadlines = RoundDeadlines(configured, minimum, ceiling)  # the averager's process keeps its copy
        self.round_deadline = mp.Value(ctypes.c_double, self._round_deadlines.current)  # before hivemind forks
        kwargs["allreduce_timeout"] = ceiling
        super().__init__(*args, **kwargs)

    async def _aggregate_with_group(self, group_info, *args: Any, **kwargs: Any):  # in the averager's process
        deadlines = self._round_deadlines
        limit, started = deadlines.current, time.monotonic()
        task = asyncio.create_task(super()._aggregate_with_group(group_info, *args, **kwargs))  # type: ignore[misc]
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            deadlines.timed_out()
            self.round_deadline.value = deadlines.current
            logger.warning(
                "averaging: the all-reduce of a group of %d ran past its deadline of %.1f s; the next one gets %.1f s",
                len(group_info.peer_ids),
                limit,
                deadlines.current,
            )
            raise AllreduceException(f"the all-reduce ran past its deadline of {limit:.1f} s")
        result = task.result()  # a failed round raises here, as hivemind's own would, and teaches nothing
        deadlines.succeeded(time.monotonic() - started)
        self.round_deadline.value = deadlines.current
        return result


class GroupQuorum:
    """Mixin for a hivemind DecentralizedAverager (before it in the MRO): a leader starts its group as soon as it holds
    the expected number of peers (itself included): `expected_group`, set by the training process through a shared
    value, or the size of this averager's last successful group if larger. `expected_group` 0: hivemind's own rule
    (wait out the matchmaking time), as with fewer than two expected."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.expected_group = mp.Value(ctypes.c_int, 0)  # before hivemind forks the averager's process
        self._last_group = 0  # the averager's process keeps its own
        super().__init__(*args, **kwargs)

    def _quorum(self) -> int | None:
        reported = int(self.expected_group.value)
        expected = max(reported, self._last_group) if reported > 0 else 0
        return expected if expected >= 2 else None

    async def _step(self, *, step: Any, future_for_init: Any) -> Any:  # in the averager's process, one per round
        # hivemind's leader assembles the group the moment it reaches target_group_size (Matchmaking.rpc_join_group)
        self._matchmaking.target_group_size = self._quorum()  # type: ignore[attr-defined]
        return await super()._step(step=step, future_for_init=future_for_init)  # type: ignore[misc]

    async def _aggregate_with_group(self, group_info: Any, *args: Any, **kwargs: Any) -> Any:  # in the averager's process
        self._last_group = 0  # a round that fails says nothing about who is there
        result = await super()._aggregate_with_group(group_info, *args, **kwargs)  # type: ignore[misc]
        self._last_group = len(group_info.peer_ids)
        return result


class LateGroupRegistration:
    """Mixin for a hivemind DecentralizedAverager (before it in the MRO): a groupmate's part for a group this averager
    has not registered yet waits for the registration (bounded) instead of being answered BAD_GROUP_ID.

    hivemind registers a group only once its own step has been triggered, and a part that arrives earlier waits on an
    event that the step clears when its matchmaking begins. With overlapped outer rounds the next round's matchmaking
    (pre-scheduled a matchmaking time ahead) begins while the previous round's all-reduce is still running, and that
    round's end sets the event again: a groupmate whose step was triggered first (0.1 s earlier, in a logged test run)
    then got BAD_GROUP_ID, treated this averager as a failed reducer and kept its own values for this averager's slice
    ("received 53.0% results"), and this averager's reducer averaged without that groupmate's part: two peers that
    both reported a successful round ended apart by most of a round's update. Waiting for the group id itself, not for
    the event, closes that; a group that never registers is answered as hivemind would, after `GROUP_WAIT_SECONDS`.
    """

    GROUP_WAIT_SECONDS = 5.0  # hivemind's next_chunk_timeout (Cairn's floor): how long the sender waits for an answer
    GROUP_POLL_SECONDS = 0.02

    # hivemind reads an RPC handler's request and reply types off these annotations (ServicerBase._collect_rpc_handlers)
    async def rpc_aggregate_part(
        self, stream: AsyncIterator[averaging_pb2.AveragingData], context: P2PContext
    ) -> AsyncIterator[averaging_pb2.AveragingData]:  # in the averager's process
        request = await anext(stream)
        deadline = time.monotonic() + self.GROUP_WAIT_SECONDS
        while request.group_id not in self._running_groups and time.monotonic() < deadline:  # type: ignore[attr-defined]
            await asyncio.sleep(self.GROUP_POLL_SECONDS)
        async for message in super().rpc_aggregate_part(achain(as_aiter(request), stream), context):  # type: ignore[misc]
            yield message


def expect_group(optimizer: Any, quorum: bool) -> None:
    """Tell the averager how many peers a round's group should hold: the training peers with a live progress report in
    hivemind's tracker (auxiliary peers such as the coordinator never report, and never average gradients)."""
    shared = getattr(optimizer.grad_averager, "expected_group", None)
    if shared is not None:
        shared.value = int(optimizer.tracker.global_progress.num_peers) if quorum else 0


def follow_round_deadline(optimizer: Any, configured: float, matchmaking_time: float) -> None:
    """Let the training process wait for a round as long as its all-reduce may take plus matchmaking (at least the
    run's setting), so it never gives up on a round its averager is still running. hivemind reads
    `Optimizer.averaging_timeout` whenever it schedules or waits for a round."""
    shared = getattr(optimizer.grad_averager, "round_deadline", None)
    deadline = float(shared.value) if shared is not None else math.nan
    if math.isfinite(deadline):
        optimizer.averaging_timeout = max(configured, deadline + matchmaking_time + 1.0)
