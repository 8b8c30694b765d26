"""Evaluation suite: gloss->lemma retrieval, word similarity, topic probe, and representation alignment."""

from cairn.evaluation.alignment import mutual_knn
from cairn.evaluation.data import Articles, WordPairs, load_bbc, load_simlex, load_wordsim
from cairn.evaluation.metrics import l2_normalise, linear_probe_accuracy, retrieval_recall, spearman_similarity
from cairn.evaluation.suite import DEFAULT_DIMS, METRICS, EmbedFn, SuiteData, run_suite

__all__ = [
    "DEFAULT_DIMS",
    "METRICS",
    "Articles",
    "EmbedFn",
    "SuiteData",
    "WordPairs",
    "l2_normalise",
    "linear_probe_accuracy",
    "load_bbc",
    "load_simlex",
    "load_wordsim",
    "mutual_knn",
    "retrieval_recall",
    "run_suite",
    "spearman_similarity",
]
