"""What every release reports about the embedding's promises, beyond the evaluation suite.

* Matryoshka prefixes: on a fixed topic probe, the relational prefix curve next to two references,
  the same coordinates in a random landmark order (what the ordering buys) and the PCA-k projection of
  the absolute vector (the best k-dimensional linear view, an upper bound), with the smallest k that
  reaches 95 % of the full relational score. The goal is k <= K/8.
* Outside alignment: mutual kNN@10 (Huh et al. 2024) between this release and an outside reference
  encoder (all-MiniLM-L6-v2) on held-out texts of the run's corpus; chance is about k / n.

Key layout: the coordinator writes these into the manifest's `metrics`, and the dashboard charts
metrics generically (an integer key is a prefix size, the last key names the metric), so the layout
below is what makes "k95 by release" and "mutual_knn10 by release" appear as one chart each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from cairn.corpora.base import PairCorpus
from cairn.evaluation.alignment import mutual_knn
from cairn.evaluation.metrics import linear_probe_accuracy
from cairn.tasks.measures import pca_curve, prefix_curve, smallest_k

MATRYOSHKA_SHARE = 0.95
GOAL_FRACTION = 8  # the goal: k95 <= K / 8
PROBE_FOLDS = 3
ALIGNMENT_TEXTS = 1000
ALIGNMENT_K = 10


def prefix_sizes(width: int, smallest: int = 8) -> list[int]:
    """Powers of two from `smallest` below `width`, then `width` itself (the full vector)."""
    sizes, k = [], smallest
    while k < width:
        sizes.append(k)
        k *= 2
    return [*sizes, width]


def matryoshka_report(relational: np.ndarray, absolute: np.ndarray, labels: Sequence[int], seed: int = 0) -> dict:
    """Probe accuracy vs prefix size for three orderings, and each one's smallest k reaching 95 % of full.

    All k95 values are relative to the full relational score (the same K coordinates in any order), so
    "random_order" shows what the landmark ordering buys and "pca_absolute" how close a prefix gets to
    the best linear k-dim view of the encoder. A curve that never gets there has k95 = None.
    """
    width = relational.shape[1]
    classes = np.asarray(labels)

    def score(features: np.ndarray) -> float:
        return linear_probe_accuracy(features, classes, folds=PROBE_FOLDS, seed=seed)

    sizes = prefix_sizes(width)
    shuffled = relational[:, np.random.default_rng(seed).permutation(width)]
    curves = {
        "relational_prefix": prefix_curve(relational, sizes, score),
        "random_order": prefix_curve(shuffled, sizes, score),
        "pca_absolute": pca_curve(absolute, [k for k in sizes if k <= min(absolute.shape)], score),
    }
    full = curves["relational_prefix"][width]
    report: dict = {
        name: {**{str(k): v for k, v in curve.items()}, "k95": smallest_k(curve, MATRYOSHKA_SHARE, full)} for name, curve in curves.items()
    }
    goal = width // GOAL_FRACTION
    k95 = report["relational_prefix"]["k95"]
    report["goal"] = {"k95": goal}
    report["goal_met"] = k95 is not None and k95 <= goal
    return report


def alignment_texts(corpus: PairCorpus, cap: int = ALIGNMENT_TEXTS) -> list[str]:
    """Up to `cap` distinct held-out texts (both sides of the pairs), in content-hash order: a fixed sample."""
    distinct = {text for pair in corpus.heldout for text in (pair.a, pair.b) if text.strip()}
    return sorted(distinct, key=lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest())[:cap]


def outside_report(views: dict[str, np.ndarray], reference: np.ndarray, reference_name: str, k: int = ALIGNMENT_K) -> dict:
    """Mutual kNN@k of each view ("relational", "absolute") with the reference encoder's vectors of the same texts."""
    count = len(reference)
    metric = f"mutual_knn{k}"
    report: dict = {"reference": f"{reference_name} on {count} held-out texts of the run's corpus"}
    for name, vectors in views.items():
        report[name] = {metric: mutual_knn(vectors, reference, k=k)}
    report["chance"] = {metric: k / (count - 1)}
    return report
