"""Averaging deadlines that follow the rounds a peer's groups take (cairn/peer/deadlines.py, issue 13).

The rule on known sequences, then two real hivemind averagers whose all-reduce is slower than the run's setting:
the deadline doubles until a round fits, and then follows the rounds that succeed. Then matchmaking's quorum: three
real averagers start their group as soon as all three have joined, and wait out the matchmaking time when one more
is expected than comes.
"""

from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace

import hivemind
import pytest
import torch
from hivemind.averaging import allreduce
from hivemind.averaging.partition import TensorPartReducer

from averaging_util import linked_dhts, shut_down
from cairn.protocol.run_config import SwarmConfig
from cairn.peer.deadlines import (
    FACTOR,
    AdaptiveDeadlines,
    GroupQuorum,
    LateGroupRegistration,
    RoundDeadlines,
    expect_group,
    follow_round_deadline,
)


def test_the_deadline_starts_at_the_setting_doubles_on_a_timeout_and_follows_the_median_of_successes():
    deadlines = RoundDeadlines(initial=15.0, minimum=10.0, ceiling=120.0)
    assert deadlines.current == 15.0  # nothing measured yet: the run's setting
    deadlines.timed_out()
    deadlines.timed_out()
    assert deadlines.current == 60.0  # a slow link: 15, 30, 60
    deadlines.succeeded(25.0)
    assert deadlines.current == pytest.approx(FACTOR * 25.0)  # the rounds that form now take ~25 s
    for seconds in (24.0, 26.0, 25.0, 300.0):  # one stalled-but-successful round does not move the median much
        deadlines.succeeded(seconds)
    assert deadlines.current == pytest.approx(FACTOR * 25.0)
    for _ in range(8):  # a fast network: down to the minimum, never under it
        deadlines.succeeded(0.5)
    assert deadlines.current == 10.0
    for _ in range(10):  # and never over the ceiling
        deadlines.timed_out()
    assert deadlines.current == 120.0
    with pytest.raises(ValueError):
        RoundDeadlines(initial=15.0, minimum=0.0, ceiling=1.0)


def test_the_training_process_waits_at_least_the_setting_and_as_long_as_the_averager_may_run():
    shared = SimpleNamespace(value=math.nan)
    optimizer = SimpleNamespace(grad_averager=SimpleNamespace(round_deadline=shared), averaging_timeout=15.0)
    follow_round_deadline(optimizer, configured=15.0, matchmaking_time=1.0)
    assert optimizer.averaging_timeout == 15.0  # the averager has not published one yet
    shared.value = 40.0
    follow_round_deadline(optimizer, configured=15.0, matchmaking_time=1.0)
    assert optimizer.averaging_timeout == 42.0  # the all-reduce's deadline, matchmaking and a second of slack
    shared.value = 10.0
    follow_round_deadline(optimizer, configured=15.0, matchmaking_time=1.0)
    assert optimizer.averaging_timeout == 15.0  # never less than the run's setting


class DeadlineAverager(AdaptiveDeadlines, hivemind.averaging.DecentralizedAverager):
    """A plain hivemind averager with the peer's deadline rule (the peer mixes it into its gradient averager)."""


class SlowReducer(TensorPartReducer):
    """An honest reducer on a slow link: every part's answer comes 0.25 s late (each within next_chunk_timeout, so
    no sender is dropped; only the round as a whole is slow)."""

    async def accumulate_part(self, *args, **kwargs):
        await asyncio.sleep(0.25)
        return await super().accumulate_part(*args, **kwargs)


@pytest.mark.slow  # two real hivemind averagers (p2pd) and an all-reduce over loopback
def test_a_round_slower_than_the_setting_finds_its_deadline_and_then_succeeds():
    """The setting is 2 s and a round takes ~5 s (20 slow parts): the first attempts run past 2 s and 4 s and fail,
    the third gets 8 s and succeeds; the next deadline is then FACTOR x that round's duration (within the ceiling,
    8 x the setting), and both peers agree on the average."""
    dhts = linked_dhts(2)
    inputs = [torch.full((40 * 1024,), 1.0), torch.full((40 * 1024,), 3.0)]
    averagers = []
    try:
        for index, (dht, tensor) in enumerate(zip(dhts, inputs)):
            slow = index == 1
            if slow:
                allreduce.TensorPartReducer = SlowReducer  # this averager's process forks with it
            try:
                averagers.append(
                    DeadlineAverager(
                        [tensor.clone()],
                        dht=dht,
                        start=True,
                        prefix="deadlines",
                        target_group_size=2,
                        min_group_size=2,
                        min_matchmaking_time=1.0,
                        request_timeout=0.5,
                        allreduce_timeout=2.0,
                        next_chunk_timeout=1.0,
                        part_size_bytes=4096,
                    )
                )
            finally:
                allreduce.TensorPartReducer = TensorPartReducer
        assert [a.round_deadline.value for a in averagers] == [2.0, 2.0]

        seen, outcomes = [], []
        for _ in range(3):
            started = time.monotonic()
            controls = [averager.step(wait=False, timeout=30, allow_retries=False) for averager in averagers]
            results = []
            for control in controls:
                try:
                    control.result(timeout=60)
                    results.append("ok")
                except Exception:
                    results.append("failed")
            outcomes.append((results, round(time.monotonic() - started, 1)))
            seen.append([round(a.round_deadline.value, 1) for a in averagers])
            if results == ["ok", "ok"]:
                break
        # two attempts ran out of time (2 s, then 4 s) and doubled the deadline; the third fit in 8 s
        assert seen[:2] == [[4.0, 4.0], [8.0, 8.0]], (seen, outcomes)
        assert outcomes[-1][0] == ["ok", "ok"] and len(outcomes) == 3, (seen, outcomes)
        # then: FACTOR x the measured duration of that round (~5 s), within the ceiling of 16 s
        for deadline in seen[-1]:
            assert 2.0 <= deadline <= 16.0 and deadline != 8.0, (seen, outcomes)
        for averager in averagers:
            with averager.get_tensors() as (tensor,):
                assert torch.allclose(tensor, torch.full_like(tensor, 2.0))
    finally:
        shut_down(averagers, dhts)


def test_the_expected_group_is_the_trackers_live_peers_or_none_without_a_quorum():
    shared = SimpleNamespace(value=0)
    optimizer = SimpleNamespace(
        grad_averager=SimpleNamespace(expected_group=shared), tracker=SimpleNamespace(global_progress=SimpleNamespace(num_peers=4))
    )
    expect_group(optimizer, quorum=True)
    assert shared.value == 4
    expect_group(optimizer, quorum=False)
    assert shared.value == 0  # hivemind's own rule: wait out the matchmaking time
    expect_group(SimpleNamespace(grad_averager=SimpleNamespace()), quorum=True)  # an averager without the mixin: nothing to set


class QuorumAverager(GroupQuorum, hivemind.averaging.DecentralizedAverager):
    """A plain hivemind averager with the peer's quorum rule (the peer mixes it into its gradient averager)."""


@pytest.mark.slow  # three real hivemind averagers (p2pd) and their matchmaking over loopback
def test_a_group_starts_once_every_expected_peer_has_joined_and_waits_the_matchmaking_time_for_a_missing_one():
    """Matchmaking time 8 s. No quorum (hivemind's rule): the round takes the whole 8 s although all three joined at
    once. Quorum 3: the group starts as soon as all three are in, well before the 8 s. Quorum 4 with three peers (a
    peer that left still has a live report): the group waits out the 8 s and averages the three that came. A tracker
    that counts two (reports not yet seen): the last group's three are still expected, and the round is fast."""
    matchmaking_time = 8.0
    dhts = linked_dhts(3)
    averagers = []
    try:
        for index, dht in enumerate(dhts):
            averagers.append(
                QuorumAverager(
                    [torch.full((1024,), float(index))],
                    dht=dht,
                    start=True,
                    prefix="quorum",
                    min_group_size=2,
                    min_matchmaking_time=matchmaking_time,
                    request_timeout=0.5,
                    allreduce_timeout=30.0,
                    next_chunk_timeout=5.0,
                )
            )

        def one_round(expected: int) -> tuple[float, list[int]]:
            for averager in averagers:
                averager.expected_group.value = expected
            started = time.monotonic()
            controls = [averager.step(wait=False, timeout=30, allow_retries=False) for averager in averagers]
            sizes = [len(control.result(timeout=60)) for control in controls]  # each peer's gathered: its group
            return time.monotonic() - started, sizes

        waited, sizes = one_round(expected=0)
        assert sizes == [3, 3, 3] and waited >= matchmaking_time - 0.5, (waited, sizes)
        waited, sizes = one_round(expected=3)
        assert sizes == [3, 3, 3] and waited < matchmaking_time / 2, (waited, sizes)
        waited, sizes = one_round(expected=4)
        assert sizes == [3, 3, 3] and waited >= matchmaking_time - 0.5, (waited, sizes)
        waited, sizes = one_round(expected=2)
        assert sizes == [3, 3, 3] and waited < matchmaking_time / 2, (waited, sizes)
        for averager in averagers:  # four rounds of the mean of 0, 1 and 2
            with averager.get_tensors() as (tensor,):
                assert torch.allclose(tensor, torch.full_like(tensor, 1.0))
    finally:
        shut_down(averagers, dhts)


@pytest.mark.slow  # four real hivemind averagers (p2pd) and their matchmaking over loopback
def test_peers_whose_rounds_are_scheduled_a_window_apart_average_in_two_groups_and_a_longer_window_joins_them():
    """Why DiLoCo's outer rounds gather groups for longer (`SwarmConfig.outer_matchmaking_time`): hivemind declares a
    group to end a matchmaking time after its round was scheduled, and a peer joins only a group declared to end
    before its own. Two peers schedule their round 1.5 s after the other two, as overlapped DiLoCo peers drift by
    inner steps: with a 1 s window the swarm averages in two groups of two (each by its own count a success, as in a
    churn run of docs/benchmarks.md section 10); with the 5 s default the four form one group, which (with the
    quorum of four) starts as soon as the late two are in."""
    from hivemind.utils import get_dht_time

    offset = 1.5
    dhts = linked_dhts(4)
    averagers = []
    try:
        for window in (1.0, SwarmConfig().outer_matchmaking_time):
            group = [
                QuorumAverager(
                    [torch.full((1024,), float(index))],
                    dht=dht,
                    start=True,
                    prefix=f"split{int(window * 10)}",
                    min_group_size=2,
                    min_matchmaking_time=window,
                    request_timeout=0.5,
                    allreduce_timeout=30.0,
                    next_chunk_timeout=5.0,
                )
                for index, dht in enumerate(dhts)
            ]
            averagers += group
            controls = []
            for index, averager in enumerate(group):
                if index == 2:
                    time.sleep(offset)
                averager.expected_group.value = 4  # the tracker counts all four
                controls.append(averager.step(wait=False, scheduled_time=get_dht_time() + window, timeout=30, allow_retries=False))
            sizes = [len(control.result(timeout=60)) for control in controls]
            assert sizes == ([2, 2, 2, 2] if window < offset else [4, 4, 4, 4]), (window, sizes)
    finally:
        shut_down(averagers, dhts)


class _Stock:
    """hivemind's handler, as far as this test needs it: a part for an unregistered group is answered BAD_GROUP_ID."""

    def __init__(self) -> None:
        self._running_groups: dict[bytes, object] = {}

    async def rpc_aggregate_part(self, stream, context):
        request = await stream.__anext__()
        yield "averaged" if request.group_id in self._running_groups else "BAD_GROUP_ID"


class _Averager(LateGroupRegistration, _Stock):
    GROUP_WAIT_SECONDS = 1.0


def test_a_part_that_arrives_before_its_group_is_registered_waits_for_it_and_an_unknown_group_is_refused():
    """The race of overlapped rounds (LateGroupRegistration's docstring): a groupmate triggered 0.1 s earlier sent its
    part before this averager registered the group, got BAD_GROUP_ID and left this averager's slice out."""
    from hivemind.utils.asyncio import as_aiter

    async def answer(averager: _Averager, group_id: bytes, register_after: float | None) -> tuple[list[str], float]:
        async def register() -> None:
            await asyncio.sleep(register_after)
            averager._running_groups[group_id] = object()

        task = asyncio.create_task(register()) if register_after is not None else None
        started = time.monotonic()
        replies = [reply async for reply in averager.rpc_aggregate_part(as_aiter(SimpleNamespace(group_id=group_id)), None)]
        if task is not None:
            await task
        return replies, time.monotonic() - started

    replies, waited = asyncio.run(answer(_Averager(), b"late", register_after=0.1))
    assert replies == ["averaged"] and waited < 0.9
    replies, waited = asyncio.run(answer(_Averager(), b"never", register_after=None))
    assert replies == ["BAD_GROUP_ID"] and 1.0 <= waited < 2.0  # bounded: a stale or forged group id costs one wait
