"""The objective's terms on inputs whose answer is known (issue 11: the relational term trains the product itself)."""

from __future__ import annotations

import math

import pytest
import torch

from cairn.protocol.run_config import ObjectiveConfig
from cairn.training.objective import compat_loss, info_nce, matryoshka_relational_loss


def _distinct(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed)))[0][:n]  # orthonormal rows


def test_info_nce_is_near_zero_for_matched_distinct_pairs_and_ln_batch_for_a_collapsed_batch():
    a = _distinct(16, 32)
    assert float(info_nce(a, a, temperature=0.05)) < 1e-3
    same = torch.ones(16, 32)
    assert float(info_nce(same, same, temperature=0.05)) == pytest.approx(math.log(16), abs=1e-5)


def test_relational_term_rewards_matching_relational_vectors_and_punishes_a_shuffle():
    """Pairs whose relational vectors (similarities to the anchors, standardised over the batch) agree score low;
    the same texts paired at random score near or above chance on every prefix."""
    config = ObjectiveConfig(relational_weight=1.0)
    anchors = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    a = torch.randn(32, 32, generator=torch.Generator().manual_seed(2))
    b = a + 0.01 * torch.randn(32, 32, generator=torch.Generator().manual_seed(3))
    matched, parts = matryoshka_relational_loss(a, b, anchors, config)
    shuffled, shuffled_parts = matryoshka_relational_loss(
        a, b[torch.randperm(32, generator=torch.Generator().manual_seed(4))], anchors, config
    )
    relational = [key for key in parts if key.startswith("rel")]
    assert relational, parts
    assert all(parts[key] < 0.5 * math.log(32) for key in relational), parts
    assert all(shuffled_parts[key] > 0.9 * math.log(32) for key in relational), shuffled_parts
    assert float(matched) < float(shuffled)


def test_relational_term_off_is_the_absolute_term_alone():
    a, b = torch.randn(8, 16), torch.randn(8, 16)
    off, parts = matryoshka_relational_loss(a, b, None, ObjectiveConfig(relational_weight=0.0))
    assert set(parts) == {"abs"} and float(off) == pytest.approx(float(info_nce(a, b, ObjectiveConfig().temperature)))


def test_compat_loss_is_zero_at_the_parent_and_grows_with_drift_in_the_parents_units():
    vectors, anchors = torch.randn(20, 16), torch.randn(10, 16)
    sims = torch.nn.functional.normalize(vectors, dim=-1) @ torch.nn.functional.normalize(anchors, dim=-1).T
    std = torch.full((10,), 0.1)
    assert float(compat_loss(vectors, anchors, sims, std)) == pytest.approx(0.0, abs=1e-10)
    # cosines shifted by exactly 0.05 everywhere: (0.05 / 0.1)^2 = 0.25
    assert float(compat_loss(vectors, anchors, sims - 0.05, std)) == pytest.approx(0.25, rel=1e-4)
