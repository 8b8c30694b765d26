"""A peer told to stop while its group waits on it steps on to that round first (`TrainingSession._going_on`).

hivemind's `Optimizer.shutdown` joins a round whose group has already formed with weight zero: the groupmates then
count a two-peer success, apply a step of their own gradients alone, and end a global step ahead of the peer that
left (20 against 21 in a CI run of tests/test_swarm.py's two-peer test). The decision is tested here with the
round's control faked (hivemind's `StepControl` is an MPFuture bound to its averager); the swarm tests run it end to
end.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hivemind.averaging.control import AveragingStage

from cairn.peer.node import LEAVE_GRACE_S, TrainingSession


class Round:
    """What `_going_on` reads of hivemind's StepControl: its stage and whether it is done."""

    def __init__(self, stage: AveragingStage):
        self.stage, self.finished = stage, False

    def done(self) -> bool:
        return self.finished


def session(stopped: bool, scheduled: Round | None, matchmaking: float = 1.0) -> SimpleNamespace:
    return SimpleNamespace(
        stop=stopped,
        _limit_reached=lambda: False,
        optimizer=SimpleNamespace(scheduled_grads=scheduled),
        leaving_since=None,
        config=SimpleNamespace(swarm=SimpleNamespace(round_matchmaking_time=matchmaking)),
    )


def round_at(stage: AveragingStage) -> Round:
    return Round(stage)


def going_on(fake: SimpleNamespace) -> bool:
    return TrainingSession._going_on(fake)  # type: ignore[arg-type]


def test_a_running_peer_goes_on_and_a_stopped_one_without_a_formed_group_leaves():
    assert going_on(session(stopped=False, scheduled=None))
    assert not going_on(session(stopped=True, scheduled=None))
    for stage in (AveragingStage.IDLE, AveragingStage.LOOKING_FOR_GROUP, AveragingStage.RUNNING_ALLREDUCE, AveragingStage.FINISHED):
        assert not going_on(session(stopped=True, scheduled=round_at(stage))), stage


def test_a_stopped_peer_whose_group_formed_steps_on_to_the_round_for_a_bounded_time():
    fake = session(stopped=True, scheduled=round_at(AveragingStage.AWAITING_TRIGGER))
    assert going_on(fake) and fake.leaving_since is not None
    assert going_on(fake)  # still within the grace
    fake.leaving_since -= 1.0 + LEAVE_GRACE_S  # the matchmaking time and the grace have passed
    assert not going_on(fake)


def test_a_round_that_has_run_lets_the_peer_leave():
    control = round_at(AveragingStage.AWAITING_TRIGGER)
    fake = session(stopped=True, scheduled=control)
    assert going_on(fake)
    control.finished = True
    assert not going_on(fake)


@pytest.mark.parametrize("limit", [True, False])
def test_a_limit_counts_as_a_stop(limit: bool):
    fake = session(stopped=False, scheduled=None)
    fake._limit_reached = lambda: limit
    assert going_on(fake) is not limit
