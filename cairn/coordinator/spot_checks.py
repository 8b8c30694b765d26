"""A spot check's verdict, with a second opinion before credit is taken back.

The coordinator recomputes a peer's probe on the state it loaded for the probe's epoch, from one donor. An honest
peer whose state is not that donor's fails the check: after a failed round (cairn/peer/state_sync.py keeps such a peer
from probing), and when a swarm's outer round formed two groups, each successful by its members' count (seen in a
churn run: 5 of 18 checks failed, 517,120 samples of credit taken back; docs/benchmarks.md section 10). A peer cannot
tell the second case from a group without a peer that just left. So before a failed check forfeits anything, the
coordinator downloads the state the peer itself serves, and recomputes the probe on it: a match at the probe's epoch
is an honest divergence, and the check passes on that state.

What the check proves is unchanged: the peer ran the probe's forward pass on a state it holds and serves at that
epoch. A peer could already download the swarm's state and compute a probe on it without training; serving a state
of its own instead costs it the same forward pass. The download is applied nowhere (`BoundedStateAverager.state_of`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

SPOT_CHECK_TOLERANCE = 0.05  # absolute loss difference: fp16 state transfer + 8-bit averaging drift


@dataclass(frozen=True)
class Verdict:
    passed: bool
    recomputed: float
    on_own_state: bool  # passed on the state the peer serves, not on the one the coordinator loaded


def judge_probe(claimed: float, on_loaded: float, on_own_state: Callable[[], float | None]) -> Verdict:
    """Passed when the loaded state reproduces the claim; otherwise asked again on the peer's own state (None: it
    served none at the probe's epoch, and the failure stands)."""
    if abs(on_loaded - claimed) <= SPOT_CHECK_TOLERANCE:
        return Verdict(True, on_loaded, False)
    own = on_own_state()
    if own is not None and abs(own - claimed) <= SPOT_CHECK_TOLERANCE:
        return Verdict(True, own, True)
    return Verdict(False, on_loaded, False)


def parameters_of(served: tuple | None, epoch: int, model: torch.nn.Module) -> list[torch.Tensor] | None:
    """The model's parameters out of a served state (metadata, tensors), or None unless it is at `epoch` with the
    model's shapes: a peer's state is untrusted input."""
    if served is None:
        return None
    metadata, tensors = served
    if not isinstance(metadata, dict) or metadata.get("epoch") != epoch:
        return None  # it moved on (or never was there): no second opinion
    parameters = list(model.parameters())
    if len(tensors) < len(parameters):
        return None
    chosen = list(tensors[: len(parameters)])
    if any(t.shape != p.shape or not bool(torch.isfinite(t).all()) for t, p in zip(chosen, parameters)):
        return None
    return chosen


@contextlib.contextmanager
@torch.no_grad()
def parameters_swapped(model: torch.nn.Module, values: Sequence[torch.Tensor]) -> Iterator[None]:
    """The model holds `values` for the while, and its own parameters again afterwards, whatever happens."""
    parameters = list(model.parameters())
    saved = [p.detach().clone() for p in parameters]
    try:
        for parameter, value in zip(parameters, values):
            parameter.copy_(value.to(parameter.device, parameter.dtype))
        yield
    finally:
        for parameter, value in zip(parameters, saved):
            parameter.copy_(value)
