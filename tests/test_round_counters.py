"""The round counters read hivemind.Optimizer's status messages: outcomes, and the sizes of the groups rounds closed with."""

from __future__ import annotations

import logging

from cairn.peer.instrumentation import RoundCounters, RoundOutcomeHandler


def _emit(handler: RoundOutcomeHandler, message: str) -> None:
    handler.emit(logging.LogRecord("hivemind.optim.optimizer", logging.INFO, __file__, 0, message, None, None))


def test_rounds_are_counted_by_outcome_and_successful_gradient_rounds_by_group_size():
    counters = RoundCounters()
    seen: list[str] = []
    handler = RoundOutcomeHandler(counters, on_outcome=lambda outcome, seconds: seen.append(outcome))
    for message in (
        "Averaged gradients with 3 peers",
        "Averaged gradients with 2 peers",  # a swarm of three split: still a success by this peer's count
        "Averaged gradients with 3 peers",
        "Skipped averaging: no other peers",
        "Averaging gradients failed with TimeoutError()",
        "Averaging gradients failed with AllreduceException('x')",
        "Received parameters from background averaging round",  # a success, but no gradient group to size
        "Beginning optimizer step #7",  # not an outcome
    ):
        _emit(handler, message)
    assert counters.snapshot() == {"success": 4, "alone": 1, "failure": 1, "timeout": 1}
    assert counters.sizes() == {2: 1, 3: 2}
    assert seen == ["success", "success", "success", "timeout", "failure", "success"]  # "alone" is not reported
    assert counters.last_outcome == "success" and counters.total() == 7
