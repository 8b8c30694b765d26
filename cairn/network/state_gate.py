"""Load a downloaded state only if it retrieves held-out pairs about as well as the state this node holds (issue 12).

The epoch bound (trusted_state.py) stops a donor that lies about how far the swarm is; it does not stop one that
serves other weights at a believable epoch. Before a downloaded state replaces the node's own, both are scored on
the same fixed held-out pairs: top-1 retrieval of each pair's second text among all the second texts, from its first
(the in-batch task the encoder trains on, measured without its temperature). A state more than `tolerance` below
the node's own is refused, and the next donor asked (trusted_state.BoundedStateAverager).

Why accuracy and not the loss: the held-out InfoNCE of a trained state can sit above that of a random start (a
distilled start is confidently wrong on held-out pairs at temperature 0.05, docs/benchmarks.md section 10), so a
loss rule would refuse honest states; retrieval accuracy rises with training from any start.

What it does not catch: a tampered state within the tolerance (a small targeted change), and a state that is as
good on these pairs and bad elsewhere. Spot checks and the coordinator's release gate stay the defences there.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import numpy as np
import torch

from cairn.protocol.embedder import encode_texts
from cairn.protocol.encoder import TextEncoder
from cairn.protocol.tokenizer import TextTokenizer

logger = logging.getLogger(__name__)

GATE_PAIRS = 256  # held-out pairs a downloaded state is scored on (the coordinator's release gate uses as many)
DOWNLOAD_TOLERANCE = 0.10  # top-1 accuracy a download may lose against the node's own state and still be loaded


def gate_pairs(corpus, num_shards: int, count: int = GATE_PAIRS) -> list:
    """The fixed pairs both gates score on: the corpus's held-out split, or shard 0 when it has none."""
    return list(corpus.heldout[:count]) or list(corpus.shard(0, num_shards)[:count])


def retrieval_accuracy(model: TextEncoder, tokenizer: TextTokenizer, pairs: Sequence) -> float:
    """Share of pairs whose second text is the nearest (cosine) of all second texts to the first."""
    if not pairs:
        return 0.0
    queries = encode_texts(model, tokenizer, [pair.a for pair in pairs])
    targets = encode_texts(model, tokenizer, [pair.b for pair in pairs])
    if not (np.isfinite(queries).all() and np.isfinite(targets).all()):
        return 0.0
    queries /= np.linalg.norm(queries, axis=1, keepdims=True) + 1e-12
    targets /= np.linalg.norm(targets, axis=1, keepdims=True) + 1e-12
    return float(np.mean(np.argmax(queries @ targets.T, axis=1) == np.arange(len(pairs))))


class HeldOutStateGate:
    """A `StateCheck` (trusted_state.py): (downloaded parameters, held parameters) -> why not to load, or None.

    Scores both on a private copy of the model, so the live model (which hivemind may be serving to others) is never
    touched. The parameters come in `model.parameters()` order: hivemind's state is the optimizer's parameters, which
    are the model's own (per-step averaging) or their outer copy in the same order (DiLoCo)."""

    def __init__(self, model: TextEncoder, tokenizer: TextTokenizer, pairs: Sequence, tolerance: float = DOWNLOAD_TOLERANCE):
        self.probe = copy.deepcopy(model)
        self.tokenizer, self.pairs, self.tolerance = tokenizer, list(pairs), tolerance

    @torch.no_grad()
    def accuracy_of(self, parameters: Sequence[torch.Tensor]) -> float:
        for mine, given in zip(self.probe.parameters(), parameters):
            mine.copy_(given.detach().to(device=mine.device, dtype=mine.dtype))
        return retrieval_accuracy(self.probe, self.tokenizer, self.pairs)

    def __call__(self, downloaded: Sequence[torch.Tensor], held: Sequence[torch.Tensor]) -> str | None:
        own = list(self.probe.parameters())
        if len(downloaded) != len(own) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(downloaded, own)):
            return "its parameters do not fit this run's model"
        candidate = self.accuracy_of(downloaded)
        reference = self.accuracy_of(held)
        logger.debug("downloaded state: held-out top-1 %.3f, this node's %.3f", candidate, reference)
        if candidate < reference - self.tolerance:
            return (
                f"it retrieves {candidate:.1%} of {len(self.pairs)} held-out pairs against this node's own state's "
                f"{reference:.1%} (more than {self.tolerance:.0%} worse)"
            )
        return None
