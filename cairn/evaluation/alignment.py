"""Representation alignment between two embeddings of the same items (platonic representation hypothesis)."""

from __future__ import annotations

import numpy as np

from cairn.evaluation.metrics import l2_normalise

_BLOCK = 1024  # rows handled at once: bounds the (block x n) similarity matrices


def _knn(unit: np.ndarray, rows: slice, k: int) -> np.ndarray:
    """Indices of the k most cosine-similar items for each item in `rows`, excluding the item itself."""
    scores = unit[rows] @ unit.T
    own = np.arange(rows.start, rows.start + len(scores))
    scores[np.arange(len(scores)), own] = -np.inf
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def mutual_knn(A: np.ndarray, B: np.ndarray, k: int = 10) -> float:
    """Mean over items of |kNN_A(i) ∩ kNN_B(i)| / k with cosine neighbours (Huh et al. 2024, metrics.py).

    Rotation- and scale-invariant, so it measures agreement of geometry, not of coordinates: an absolute
    and a relational embedding of one model score the same. Chance level is about k / n.
    """
    if len(A) != len(B):
        raise ValueError(f"A has {len(A)} items, B has {len(B)}")
    if not 0 < k < len(A):
        raise ValueError(f"k={k} needs 0 < k < number of items ({len(A)})")
    unit_a, unit_b = l2_normalise(A), l2_normalise(B)
    overlap = 0
    for start in range(0, len(A), _BLOCK):
        rows = slice(start, min(start + _BLOCK, len(A)))
        knn_a, knn_b = _knn(unit_a, rows, k), _knn(unit_b, rows, k)
        in_a = np.zeros((len(knn_a), len(A)), dtype=bool)
        np.put_along_axis(in_a, knn_a, True, axis=1)
        overlap += int(np.take_along_axis(in_a, knn_b, axis=1).sum())
    return overlap / (len(A) * k)
