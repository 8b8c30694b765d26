"""How a peer's batch becomes a shared update: per-step gradient averaging, or DiLoCo (issue 13).

Per-step gradient averaging (`GradientSteps`) hands every batch's gradient to hivemind.Optimizer, which
all-reduces the accumulated gradients once per global step and applies the run's AdamW to the shared parameters:
the network carries one gradient per `target_batch_size` samples.

DiLoCo (`DiLoCoSteps`, Douillard et al. 2023; OpenDiLoCo on hivemind) trains the peer's own copy of the encoder
with a local AdamW for the whole outer round (`outer_every` global steps' worth of samples, all peers together),
then averages the *pseudo-gradient* (shared parameters minus local parameters) and lets an outer SGD with Nesterov
momentum step the shared parameters. The network carries one (compressed) pseudo-gradient per outer round.

The shared ("outer") parameters are what hivemind.Optimizer holds: the state a late joiner downloads and the
coordinator evaluates and releases is always the last outer round's, never a half-finished inner one.

hivemind integration: the outer parameters are separate tensors with `reuse_grad_buffers=True`, so their `.grad`
is what hivemind averages; hivemind divides it by the number of `step()` calls it accumulated, so before each
call the pseudo-gradient is written multiplied by that count (the division then yields exactly outer - local).
"""

from __future__ import annotations

import hivemind
import torch

from cairn.protocol.encoder import TextEncoder


class GradientSteps:
    """Per-step gradient averaging: hivemind accumulates this batch's gradient and steps the shared AdamW."""

    def __init__(self, model: TextEncoder, optimizer: hivemind.Optimizer):
        self.model, self.optimizer = model, optimizer

    def step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad()

    def after_new_epoch(self) -> None:
        """Nothing to do: the model's parameters are the shared ones."""

    def shared_state_into_model(self) -> None:
        """Nothing to do: the model's parameters are the shared ones."""


def outer_parameters(model: TextEncoder) -> list[torch.nn.Parameter]:
    """A copy of the model's parameters for hivemind.Optimizer to hold as the shared (outer) state."""
    return [torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad) for p in model.parameters()]


class DiLoCoSteps:
    """DiLoCo: a local AdamW step on this peer's copy every batch; an outer round every `outer_every` global steps."""

    def __init__(self, model: TextEncoder, optimizer: hivemind.Optimizer, outer: list[torch.nn.Parameter],
                 inner_optimizer: torch.optim.Optimizer, inner_scheduler: torch.optim.lr_scheduler.LRScheduler):
        self.model, self.optimizer, self.outer = model, optimizer, outer
        self.inner_optimizer, self.inner_scheduler = inner_optimizer, inner_scheduler
        self.local = [p for p in model.parameters()]
        if len(self.local) != len(self.outer) or any(a.shape != b.shape for a, b in zip(self.local, self.outer)):
            raise ValueError("the outer parameters do not match the model's")

    def step(self) -> None:
        self.inner_optimizer.step()
        self.inner_scheduler.step()
        self.inner_optimizer.zero_grad(set_to_none=True)
        self._write_pseudo_gradient()
        self.optimizer.step()  # counts the samples; at the end of an outer round, averages and steps the outer SGD

    @torch.no_grad()
    def _write_pseudo_gradient(self) -> None:
        """outer.grad = (outer - local) x (hivemind's accumulation count after this step): see the module docstring."""
        scale = float(self.optimizer.grad_averager.local_times_accumulated + 1)
        for shared, local in zip(self.outer, self.local):
            if shared.grad is None:
                shared.grad = torch.empty_like(shared)
            torch.sub(shared, local.to(shared.device), out=shared.grad).mul_(scale)

    def after_new_epoch(self) -> None:
        """A new outer round began (an outer step, or state loaded from peers): continue from the shared parameters."""
        self.shared_state_into_model()

    @torch.no_grad()
    def shared_state_into_model(self) -> None:
        for shared, local in zip(self.outer, self.local):
            local.copy_(shared.to(local.device))
