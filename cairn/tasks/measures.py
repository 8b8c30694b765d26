"""Measurements behind the universal embedding's promises, as plain functions on embedding matrices.

Used by bench/stability.py, bench/compatibility.py, bench/matryoshka.py and bench/ablations.py, and tested
on synthetic cases with known answers (tests/test_measurements.py):

* `row_cosine`            mean cosine between two embeddings of the same texts (1 = same vectors, ~0 unrelated)
* `coordinate_spearman`   per-coordinate Spearman correlation across texts between two embeddings
* `stitching`             zero-shot stitching: a head fit on run A's vectors, scored on run B's vectors
* `relational_view`       relational coordinates from absolute vectors: standardised, raw cosines, or
                          Gram-Schmidt nested coordinates (coordinate k depends on anchors 1..k only)
* `prefix_curve`, `pca_curve`, `smallest_k`   Matryoshka prefix curves and the k reaching 95 % of full
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.stats import spearmanr

from cairn.evaluation.compatibility import head_transfer, vector_agreement
from cairn.protocol.landmarks import MIN_STD, cosines, l2_normalise

VIEWS = ("standardised", "raw", "gram_schmidt")


# ---- agreement between two embeddings of the same texts ---------------------------------------


def row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over texts of cos(a_i, b_i) over the shared leading coordinates."""
    return vector_agreement(np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32))


def coordinate_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of column j of `a` with column j of `b` (over texts), for each shared column j.

    A constant column gives NaN. For relational coordinates "column j" means "similarity to anchor j" in both
    runs; for absolute coordinates it means "output unit j", which two training runs have no reason to share.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b):
        raise ValueError(f"need two (n, d) matrices over the same texts, got {a.shape} and {b.shape}")
    if len(a) < 3:
        raise ValueError("need at least 3 texts")
    width = min(a.shape[1], b.shape[1])
    ranks_a = np.apply_along_axis(_ranks, 0, a[:, :width])
    ranks_b = np.apply_along_axis(_ranks, 0, b[:, :width])
    ranks_a -= ranks_a.mean(0)
    ranks_b -= ranks_b.mean(0)
    denominator = np.sqrt((ranks_a**2).sum(0) * (ranks_b**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (ranks_a * ranks_b).sum(0) / denominator, np.nan)


def _ranks(column: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(column).astype(np.float64)


def spearman_summary(values: np.ndarray) -> dict[str, float]:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return {"mean": float("nan"), "median": float("nan"), "min": float("nan")}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)), "min": float(finite.min())}


def stitching(
    train_a: np.ndarray, test_a: np.ndarray, test_b: np.ndarray, y_train: Sequence, y_test: Sequence, seed: int = 0
) -> dict[str, float]:
    """Zero-shot stitching: a logistic head fit on A's training vectors, scored on A's and on B's test vectors.

    `head_ratio` = score on B / score on A: 1.0 when B's vectors mean what A's mean; chance / A's score when
    they are unrelated coordinates. `chance` is the majority-class rate of the test labels.
    """
    train_labels, test_labels = np.asarray(y_train), np.asarray(y_test)
    result = head_transfer(train_a, test_a, test_b, train_labels, test_labels, seed)
    _, counts = np.unique(test_labels, return_counts=True)
    result["chance"] = float(counts.max() / counts.sum())
    return result


# ---- relational coordinates and their variants ------------------------------------------------


def gram_schmidt_basis(anchor_vectors: np.ndarray, tol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal directions q_1..q_K from the anchors in order (q_k: anchor k minus its projection on q_1..q_{k-1}).

    Returns (Q, valid): Q is (K, d) with a zero row where anchor k adds no new direction (always beyond the
    first d anchors), valid marks the other rows. Rotation-equivariant: rotating the anchors rotates Q.
    """
    unit = l2_normalise(np.asarray(anchor_vectors, dtype=np.float64))
    basis = np.zeros_like(unit)
    valid = np.zeros(len(unit), dtype=bool)
    kept: list[np.ndarray] = []
    for k, anchor in enumerate(unit):
        residual = anchor.copy()
        for _ in range(2):  # twice: classical Gram-Schmidt loses orthogonality in one pass
            for q in kept:
                residual -= (residual @ q) * q
        norm = np.linalg.norm(residual)
        if norm > tol:
            basis[k] = residual / norm
            valid[k] = True
            kept.append(basis[k])
    return basis, valid


def relational_view(
    vectors: np.ndarray, anchor_vectors: np.ndarray, reference_vectors: np.ndarray | None = None, view: str = "standardised"
) -> np.ndarray:
    """Relational coordinates (n, K) of absolute `vectors` against ordered anchors.

    standardised: (cos - mean_k) / std_k with per-anchor stats over `reference_vectors` (the shipped form);
    raw:          plain cosines;
    gram_schmidt: cos(x, q_k) for the Gram-Schmidt directions of the anchors (coordinate k depends on anchors
                  1..k only), standardised over the reference like the shipped form; coordinates of anchors
                  that add no direction are 0.
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; use one of {', '.join(VIEWS)}")
    if view == "raw":
        return cosines(vectors, anchor_vectors)
    if view == "gram_schmidt":
        basis, valid = gram_schmidt_basis(anchor_vectors)
        coordinates = l2_normalise(np.asarray(vectors, dtype=np.float64)) @ basis.T
        if reference_vectors is not None:
            reference = l2_normalise(np.asarray(reference_vectors, dtype=np.float64)) @ basis.T
            coordinates = (coordinates - reference.mean(0)) / np.maximum(reference.std(0), MIN_STD)
        coordinates[:, ~valid] = 0.0
        return coordinates.astype(np.float32)
    if reference_vectors is None:
        raise ValueError("the standardised view needs reference vectors for the per-anchor mean/std")
    sims = cosines(vectors, anchor_vectors)
    reference = cosines(reference_vectors, anchor_vectors)
    return ((sims - reference.mean(0)) / np.maximum(reference.std(0), MIN_STD)).astype(np.float32)


# ---- prefix curves ----------------------------------------------------------------------------

ScoreFn = Callable[[np.ndarray], float]  # an (n, k) feature matrix -> a score (higher is better)


def prefix_curve(vectors: np.ndarray, ks: Sequence[int], score: ScoreFn) -> dict[int, float]:
    """score(first k coordinates, rows re-L2-normalised) for each k (the Matryoshka coarse embedding)."""
    return {int(k): float(score(l2_normalise(np.asarray(vectors)[:, :k]))) for k in ks}


def pca_projection(vectors: np.ndarray, k: int) -> np.ndarray:
    """Coordinates on the top-k principal components of the (centred) vectors: the best k-dim linear view."""
    vectors = np.asarray(vectors, dtype=np.float64)
    centred = vectors - vectors.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return (centred @ components[:k].T).astype(np.float32)


def pca_curve(vectors: np.ndarray, ks: Sequence[int], score: ScoreFn) -> dict[int, float]:
    """score(PCA-k projection) for each k: an upper-bound reference for a k-coordinate prefix of the same model."""
    vectors = np.asarray(vectors, dtype=np.float64)
    centred = vectors - vectors.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return {int(k): float(score(l2_normalise((centred @ components[: min(k, len(components))].T).astype(np.float32)))) for k in ks}


def smallest_k(curve: Mapping[int, float], fraction: float = 0.95, full: float | None = None) -> int | None:
    """Smallest k whose score reaches `fraction` of `full` (default: the score at the largest k); None if none."""
    if not curve:
        return None
    target = fraction * (curve[max(curve)] if full is None else full)
    for k in sorted(curve):
        if curve[k] >= target:
            return k
    return None


# ---- synthetic helpers (tests, sanity rows in the benches) ------------------------------------


def random_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """A Haar-random orthogonal matrix (d, d)."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    return float(spearmanr(a, b).statistic)
