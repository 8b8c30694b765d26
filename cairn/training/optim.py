"""AdamW whose decoupled decay pulls each parameter toward where training started (L2-SP), not toward zero.

Why (docs/embedding.md, "the recipe"): the static encoder starts from a table distilled from a teacher, and
WordNet alone, trained on for millions of samples, slowly trades the teacher's general similarity for
WordNet's definitions (WordSim-353 fell from 0.69 to 0.56 between 0.3M and 2.4M samples) while two runs drift
apart. Decaying toward the start (Li et al., "Explicit inductive bias for transfer learning", ICML 2018) makes
training settle instead: measured, quality and cross-run agreement hold at any budget.

torch has no such optimizer; this is AdamW with its weight-decay line replaced. The start is kept in the
optimizer state ("start"), so checkpoints and hivemind's state transfer to joining peers carry it: every
peer of a swarm pulls toward the same point.
"""

from __future__ import annotations

import torch


class AdamWTowardStart(torch.optim.AdamW):
    """AdamW plus `p -= lr * start_pull * (p - p_start)` after each step (`start_pull` = 0: plain AdamW)."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.0, start_pull: float = 0.0, **kwargs):
        super().__init__(params, lr=lr, weight_decay=weight_decay, **kwargs)
        for group in self.param_groups:
            group.setdefault("start_pull", start_pull)
        self.start = [parameter.detach().clone() for group in self.param_groups for parameter in group["params"]]

    def _parameters(self) -> list[torch.Tensor]:
        return [parameter for group in self.param_groups for parameter in group["params"]]

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        index = 0
        for group in self.param_groups:
            pull = group["lr"] * group["start_pull"]
            for parameter in group["params"]:
                if pull != 0 and parameter.grad is not None:
                    parameter.sub_(parameter - self.start[index].to(parameter.device), alpha=pull)
                index += 1
        return loss

    def state_dict(self) -> dict:
        """torch's state dict plus the start point, one tensor per parameter in group order."""
        return {**super().state_dict(), "start": list(self.start)}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        start = state_dict.pop("start", None)
        super().load_state_dict(state_dict)
        if start is not None:
            parameters = self._parameters()
            if len(start) != len(parameters) or any(s.shape != p.shape for s, p in zip(start, parameters)):
                raise ValueError("the optimizer state's start point does not match the parameters")
            self.start = [s.detach().clone().to(p.device, p.dtype) for s, p in zip(start, parameters)]
