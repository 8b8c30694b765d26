"""What a peer checks in its own gradients before hivemind accumulates and averages them (issue 12, attack 3).

A NaN or Inf in one peer's gradient would reach every parameter of the swarm through the average, so a batch
whose gradient is not finite is dropped here, before it is shared. Clipping the norm bounds what one exploding
batch of an honest peer can do; it is a safety net, not a defence against a dishonest peer, which does not run
this code (that needs a robust rule where the senders' parts meet: hivemind's TensorPartReducer).
"""

from __future__ import annotations

from typing import Iterable, cast

import torch

MAX_GRAD_NORM = 10.0  # generous: far above the norms of a healthy step, so only an exploding batch is clipped


def sanitize_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float = MAX_GRAD_NORM) -> bool:
    """Clip the gradients of `parameters` to `max_norm`; False (and gradients cleared) when any is not finite."""
    parameters = [p for p in parameters if p.grad is not None]
    if not parameters:
        return True
    if not all(bool(torch.isfinite(cast(torch.Tensor, p.grad)).all()) for p in parameters):  # only those with a .grad
        for p in parameters:
            p.grad = None
        return False
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    return True
