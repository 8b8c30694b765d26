"""The training objective: symmetric in-batch InfoNCE on relational prefixes and the absolute vector.

Wrapped the way sentence-transformers' MatryoshkaLoss wraps an inner loss: one forward pass, the
relational vector sliced at each prefix size, re-normalised, and scored with the same InfoNCE.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from cairn.protocol.run_config import ObjectiveConfig


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` should match row i of `b` against every other row in the batch."""
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    targets = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def relational_torch(vectors: torch.Tensor, anchor_vectors: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Differentiable twin of `cairn.protocol.landmarks.relational` (gradient flows through `vectors`)."""
    sims = F.normalize(vectors, dim=-1) @ F.normalize(anchor_vectors, dim=-1).T
    return (sims - mean) / std


def batch_standardised(sims: torch.Tensor) -> torch.Tensor:
    """Standardise each anchor's cosines over the batch itself, with gradient through the statistics.

    Measured (docs/benchmarks.md, "objective"): standardising with reference statistics that are
    held fixed between anchor refreshes lets the encoder escape the relational loss by collapsing every
    text onto the anchors (all cosines -> 1, loss -> chance) within ~30 steps. With the batch's own
    statistics a collapsed batch has no signal left to match, so collapse no longer pays.
    """
    return (sims - sims.mean(0, keepdim=True)) / sims.std(0, keepdim=True).clamp(min=1e-4)


def matryoshka_relational_loss(
    abs_a: torch.Tensor,
    abs_b: torch.Tensor,
    anchor_vectors: torch.Tensor | None,
    config: ObjectiveConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts; anchors are given (refreshed without gradient by the caller), or
    None when the relational term is off."""
    absolute = info_nce(abs_a, abs_b, config.temperature)
    if anchor_vectors is None or config.relational_weight == 0:
        return config.absolute_weight * absolute, {"abs": float(absolute.detach())}
    anchors = F.normalize(anchor_vectors, dim=-1)
    sims = torch.cat([F.normalize(abs_a, dim=-1), F.normalize(abs_b, dim=-1)]) @ anchors.T
    rel_a, rel_b = batch_standardised(sims).split(len(abs_a))
    width = rel_a.shape[1]
    parts: dict[str, float] = {}
    prefix_losses = []
    for dims in sorted({min(d, width) for d in config.prefix_dims}):
        loss = info_nce(rel_a[:, :dims], rel_b[:, :dims], config.relational_temperature)
        parts[f"rel{dims}"] = float(loss.detach())
        prefix_losses.append(loss)
    parts["abs"] = float(absolute.detach())
    total = config.relational_weight * torch.stack(prefix_losses).mean() + config.absolute_weight * absolute
    return total, parts


def compat_loss(vectors: torch.Tensor, anchor_vectors: torch.Tensor, parent_sims: torch.Tensor, parent_std: torch.Tensor) -> torch.Tensor:
    """Mean squared drift of this encoder's anchor cosines from the parent release's, in the parent's units.

    "Backward-compatible training" (Shen et al., CVPR 2020) in relational coordinates: the parent's
    standardised relational vector of a text is (cos_parent - mean) / std, so matching the raw cosines
    scaled by the parent's per-anchor std keeps a task head trained on the parent valid. `parent_sims`
    (texts x parent anchors) comes from the frozen parent; `anchor_vectors` are this encoder's encodings
    of the same anchor texts (refreshed without gradient, as for the relational term).
    """
    sims = F.normalize(vectors, dim=-1) @ F.normalize(anchor_vectors, dim=-1).T
    return (((sims - parent_sims) / parent_std) ** 2).mean()
