"""Backward compatibility between two releases, computed, never copied, for every new release.

Two questions a task-model owner asks before upgrading from release N to N+1:
1. Does my head still work? A linear head trained on N's relational vectors is scored on N+1's
   vectors of the same texts (no retraining), as a ratio of its score on N.
2. Do the vectors still mean the same? Mean cosine between N's and N+1's relational vectors of a
   fixed probe set over their shared landmark prefix; and cross-release retrieval (queries embedded
   by N+1 against an index built by N).
3. Does my search index still work (`cairn index`, issue 14)? Same-topic precision@10 of queries embedded by
   N+1 against an index kept from N, as a share of the same against the index re-embedded with N+1.
The absolute (pooled) vectors get the same measurements as the contrast: they live in coordinates
that training is free to rotate, so they are not expected to transfer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from cairn.protocol.landmarks import l2_normalise

EmbedFn = Callable[[list[str]], np.ndarray]


def head_transfer(
    train_old: np.ndarray, test_old: np.ndarray, test_new: np.ndarray, y_train: np.ndarray, y_test: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """Fit a logistic-regression head on old vectors; score it on old and on new test vectors."""
    head = LogisticRegression(max_iter=2000, random_state=seed).fit(l2_normalise(train_old), y_train)
    old_score = float(head.score(l2_normalise(test_old), y_test))
    new_score = float(head.score(l2_normalise(test_new), y_test))
    return {"head_score_old": old_score, "head_score_new": new_score, "head_ratio": new_score / old_score if old_score else 0.0}


def vector_agreement(old: np.ndarray, new: np.ndarray) -> float:
    """Mean cosine between corresponding rows (0 for unrelated spaces, 1 for identical)."""
    width = min(old.shape[1], new.shape[1])
    return float(np.mean(np.sum(l2_normalise(old[:, :width]) * l2_normalise(new[:, :width]), axis=1)))


def cross_retrieval(index_vectors: np.ndarray, query_vectors: np.ndarray, k: int = 1) -> float:
    """Share of items whose query (new release) retrieves its own item from the old index in the top k."""
    width = min(index_vectors.shape[1], query_vectors.shape[1])
    sims = l2_normalise(query_vectors[:, :width]) @ l2_normalise(index_vectors[:, :width]).T
    top = np.argsort(-sims, axis=1)[:, :k]
    return float(np.mean([i in row for i, row in enumerate(top)]))


def topic_precision(index_vectors: np.ndarray, query_vectors: np.ndarray, y_index: np.ndarray, y_query: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's k nearest index rows (cosine) that carry the query's label."""
    sims = l2_normalise(query_vectors) @ l2_normalise(index_vectors).T
    top = np.argsort(-sims, axis=1)[:, :k]
    return float(np.mean(np.asarray(y_index)[top] == np.asarray(y_query)[:, None]))


def index_upgrade(
    old_index: np.ndarray, new_index: np.ndarray, new_queries: np.ndarray, y_index: np.ndarray, y_query: np.ndarray, k: int = 10
) -> dict[str, float]:
    """An index built with the old release and queried with the new one, against the same index re-embedded."""
    kept = topic_precision(old_index, new_queries, y_index, y_query, k)
    reembedded = topic_precision(new_index, new_queries, y_index, y_query, k)
    return {"index_kept_p10": kept, "index_reembedded_p10": reembedded, "index_upgrade_ratio": kept / reembedded if reembedded else 0.0}


def compatibility_report(
    old: dict[str, EmbedFn], new: dict[str, EmbedFn], texts: Sequence[str], labels: Sequence[int], seed: int = 0
) -> dict[str, dict[str, float]]:
    """For each view present in both ("relational", "absolute"): head transfer, agreement, retrieval."""
    texts, y = list(texts), np.asarray(labels)
    train_idx, test_idx = train_test_split(np.arange(len(texts)), test_size=0.3, random_state=seed, stratify=y)
    report: dict[str, dict[str, float]] = {}
    for view in old.keys() & new.keys():
        old_vectors, new_vectors = old[view](texts), new[view](texts)
        if old_vectors.shape[1] != new_vectors.shape[1] and view != "relational":
            report[view] = {"comparable": 0.0}
            continue
        width = min(old_vectors.shape[1], new_vectors.shape[1])
        old_vectors, new_vectors = old_vectors[:, :width], new_vectors[:, :width]
        result = head_transfer(old_vectors[train_idx], old_vectors[test_idx], new_vectors[test_idx], y[train_idx], y[test_idx], seed)
        result["agreement"] = vector_agreement(old_vectors, new_vectors)
        result["cross_retrieval_r1"] = cross_retrieval(old_vectors, new_vectors, k=1)
        result.update(index_upgrade(old_vectors[train_idx], new_vectors[train_idx], new_vectors[test_idx], y[train_idx], y[test_idx]))
        report[view] = result
    return report
