"""Top-k sparsification with error feedback: DiLoCo's pseudo-gradients sent as their largest values only (issue 13).

The option `SwarmConfig.outer_topk` (a fraction, 0 = off) follows Covenant-72B / SparseLoCo (top-k 1.6 % with error
feedback, 30 inner steps) and Deep Gradient Compression before it: each outer round a peer sends only the k largest
(by magnitude) values of each tensor of (this round's pseudo-gradient + what it did not send before), and keeps the
rest for the next round. Nothing is dropped, only delayed: after any number of rounds, what was sent plus what is
still held equals everything the peer computed (tests/test_error_feedback.py). The values travel as
`SparseBlockwiseQuantization` (cairn/peer/compression.py): positions and blockwise 8-bit values.

Per tensor, not over the whole model: every tensor keeps a share of the round (a global top-k starves the tensors
with small values, such as the LayerNorm gains, for many rounds). The held values are this peer's own: a joiner
starts with none, and a peer keeps them across a state download (they are progress of this peer's own inner steps,
as valid on top of the swarm's state as the inner progress `OverlappedDiLoCoSteps.state_loaded` carries over).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class ErrorFeedbackTopK:
    """Keeps what the last rounds did not send; `sparsify_` turns a round's tensors into what this round sends."""

    def __init__(self, fraction: float):
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"a top-k fraction must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.held: list[torch.Tensor] | None = None  # per tensor: values computed but not sent yet

    @torch.no_grad()
    def sparsify_(self, tensors: Sequence[torch.Tensor]) -> None:
        """In place: each tensor := the top-k (by magnitude) of (tensor + held); held := the rest."""
        if self.held is None or len(self.held) != len(tensors):
            self.held = [torch.zeros_like(tensor) for tensor in tensors]
        for tensor, held in zip(tensors, self.held):
            held.add_(tensor)  # everything owed to the swarm, this round's included
            flat = held.view(-1)
            k = max(1, math.ceil(self.fraction * flat.numel()))
            chosen = flat.abs().topk(k, sorted=False).indices
            tensor.zero_()
            tensor.view(-1)[chosen] = flat[chosen]
            flat[chosen] = 0.0  # sent: no longer held

    def held_norm(self) -> float:
        """The L2 norm of everything held back: a peer's summary reports it (it should stay bounded)."""
        return math.sqrt(sum(float(held.float().pow(2).sum()) for held in self.held)) if self.held else 0.0
