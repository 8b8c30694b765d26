"""Whether a peer's shared state is the swarm's (cairn/peer/state_sync.py): what diverges it, what synchronises it,
and DiLoCo's download after a failed round. The download itself is real in tests/test_trusted_state.py."""

from __future__ import annotations

import logging

import pytest

from cairn.peer.state_sync import StateSync, catch_up, watch_state_sync


def test_a_failed_or_timed_out_round_diverges_the_state_and_a_round_alone_or_averaged_does_not():
    sync = StateSync()
    for outcome in ("success", "alone"):
        sync.round_ended(outcome)
        assert not sync.diverged
    sync.round_ended("timeout")
    assert sync.diverged and sync.wants_download
    sync.round_ended("success")  # a later round lands the swarm's step on this peer's own base: still its own
    assert sync.diverged
    sync.follow_downloads(0)  # no download applied yet
    assert sync.diverged
    sync.follow_downloads(1)  # hivemind's own, when the peer fell behind, synchronises as well
    assert not sync.diverged
    sync.round_ended("failure")
    assert sync.diverged


@pytest.mark.parametrize(("group", "known", "synchronised"), [(4, 4, True), (5, 4, True), (3, 4, False), (1, 0, False), (2, 0, True)])
def test_a_state_averaging_round_synchronises_only_with_every_peer_the_tracker_knows(group, known, synchronised):
    sync = StateSync(expected_peers=lambda: known)
    sync.round_ended("failure")
    sync.state_averaged(group)
    assert sync.diverged is not synchronised


def test_hivemind_s_report_of_a_state_averaging_round_is_read_off_its_log():
    sync = StateSync(expected_peers=lambda: 3)
    handler = watch_state_sync(sync)
    hivemind_logger = logging.getLogger("hivemind.optim.state_averager")
    try:
        sync.round_ended("failure")
        hivemind_logger.info("Averaged parameters with 2 peers")  # fewer than the tracker knows: still diverged
        assert sync.diverged
        hivemind_logger.info("Averaging failed with <class 'TimeoutError'>")
        assert sync.diverged
        hivemind_logger.info("Averaged parameters with 3 peers")
        assert not sync.diverged
    finally:
        hivemind_logger.removeHandler(handler)


class _StateAverager:
    def __init__(self, serves: bool):
        self.serves, self.applied_downloads = serves, 0


class _Optimizer:
    """hivemind.Optimizer's download, as BoundedOptimizer counts it: applied when a donor served a state."""

    local_epoch = 7

    def __init__(self, serves: bool):
        self.state_averager = _StateAverager(serves)
        self.downloads_asked = 0

    def load_state_from_peers(self) -> None:
        self.downloads_asked += 1
        if self.state_averager.serves:
            self.state_averager.applied_downloads += 1


class _Steps:
    def __init__(self, catches_up: bool):
        self.catches_up_after_failed_rounds = catches_up
        self.loaded = 0

    def state_loaded(self) -> None:
        self.loaded += 1


def test_a_diloco_peer_downloads_the_swarm_s_state_once_after_a_failed_round_and_is_synchronised():
    sync, optimizer, steps = StateSync(), _Optimizer(serves=True), _Steps(catches_up=True)
    assert not catch_up(optimizer, steps, sync)  # nothing failed: no download
    sync.round_ended("timeout")
    assert catch_up(optimizer, steps, sync)
    assert (optimizer.downloads_asked, steps.loaded, sync.diverged, sync.catch_ups) == (1, 1, False, 1)
    assert not catch_up(optimizer, steps, sync)
    assert optimizer.downloads_asked == 1


def test_with_no_donor_the_peer_asks_once_per_failed_round_and_stays_diverged():
    sync, optimizer, steps = StateSync(), _Optimizer(serves=False), _Steps(catches_up=True)
    sync.round_ended("failure")
    assert not catch_up(optimizer, steps, sync)
    assert not catch_up(optimizer, steps, sync)
    assert (optimizer.downloads_asked, steps.loaded, sync.diverged) == (1, 0, True)
    sync.round_ended("failure")  # the next failed round asks again
    catch_up(optimizer, steps, sync)
    assert optimizer.downloads_asked == 2


def test_per_step_peers_wait_for_their_state_averaging_round_instead_of_downloading():
    sync, optimizer, steps = StateSync(), _Optimizer(serves=True), _Steps(catches_up=False)
    sync.round_ended("failure")
    assert not catch_up(optimizer, steps, sync)
    assert optimizer.downloads_asked == 0 and sync.diverged


def test_a_round_reported_as_a_success_that_kept_this_peer_s_own_values_on_some_slices_diverges():
    """hivemind reports a round whose reducer failed as a success ("received 53.0% results" in the averager's log):
    the averager's count of such rounds (cairn/peer/aggregation.py) turns that success into a divergence."""
    partial = [0]
    sync = StateSync(partial_rounds=lambda: partial[0])
    sync.round_ended("success")
    assert not sync.diverged
    partial[0] = 1
    sync.round_ended("success")
    assert sync.diverged and sync.wants_download
    sync.follow_downloads(1)
    sync.round_ended("success")  # the same partial round is not counted twice
    assert not sync.diverged
