"""The evaluation suite: one report per embedding function, at Matryoshka prefix sizes for relational rows.

Model-agnostic on purpose: it receives callables (texts -> vectors), so the same code scores Cairn's
relational embedding, its absolute encoder output, and outside reference models alike.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np

from cairn.protocol.errors import CorpusError
from cairn.evaluation.data import Articles, WordPairs, load_bbc, load_simlex, load_wordsim
from cairn.evaluation.metrics import l2_normalise, linear_probe_accuracy, retrieval_recall, spearman_similarity

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> (n, D) array, not necessarily normalised

DEFAULT_DIMS = (16, 32, 64, 128, 256)
GLOSS_CAP, QUICK_GLOSS_CAP = 2000, 500
FOLDS, QUICK_FOLDS = 5, 3
QUICK_ARTICLES_PER_LABEL = 100  # 5 topics -> 500 articles
SEED = 0
EMBED_BATCH = 256  # texts per embed_fn call: bounds the encoder's activation memory
METRICS = ("gloss_lemma_r1", "gloss_lemma_r10", "simlex_spearman", "wordsim_spearman", "bbc_probe_acc")


@dataclass(frozen=True)
class SuiteData:
    """The fixed benchmark data; injectable so callers (and tests) can load it once or substitute it."""

    simlex: WordPairs
    wordsim: WordPairs
    bbc: Articles

    @classmethod
    def load(cls) -> SuiteData:
        return cls(load_simlex(), load_wordsim(), load_bbc())


@dataclass(frozen=True)
class GlossTask:
    """Gloss->lemma retrieval: each distinct gloss is a query; a hit is any lemma string paired with it."""

    queries: tuple[str, ...]
    candidates: tuple[str, ...]
    gold: tuple[tuple[int, ...], ...]


def _hash_order(key: str) -> str:
    """Order by content hash, so a cap picks the same items whatever order the caller lists them in."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def gloss_task(pairs: Sequence[tuple[str, str]], cap: int) -> GlossTask:
    """At most `cap` distinct glosses (by hash order); candidates are the distinct lemmas of those glosses.

    Grouping by gloss matters because WordNet pairs a definition with every lemma of its synset: counting
    each pair as its own query would make recall@1 unreachable for synsets with several lemmas.
    """
    lemmas_of: dict[str, set[str]] = {}
    for gloss, lemma in pairs:
        lemmas_of.setdefault(gloss, set()).add(lemma)
    if not lemmas_of:
        raise CorpusError("no held-out gloss->lemma pairs to evaluate")
    queries = tuple(sorted(lemmas_of, key=_hash_order)[:cap])
    candidates = tuple(sorted({lemma for gloss in queries for lemma in lemmas_of[gloss]}))
    index = {lemma: i for i, lemma in enumerate(candidates)}
    gold = tuple(tuple(sorted(index[lemma] for lemma in lemmas_of[gloss])) for gloss in queries)
    return GlossTask(queries, candidates, gold)


def subsample_articles(articles: Articles, per_label: int) -> Articles:
    """The first `per_label` articles of each topic in hash order of their ids: balanced and deterministic."""
    keep = []
    for label in range(len(articles.label_names)):
        members = [i for i, y in enumerate(articles.labels) if y == label]
        keep += sorted(members, key=lambda i: _hash_order(articles.ids[i]))[:per_label]
    keep.sort()
    return Articles(
        tuple(articles.texts[i] for i in keep),
        tuple(articles.labels[i] for i in keep),
        articles.label_names,
        tuple(articles.ids[i] for i in keep),
    )


def embed_unique(embed_fn: EmbedFn, texts: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """Embed each distinct text once, in length-sorted batches (less padding); returns text->row and rows."""
    unique = sorted(set(texts), key=lambda t: (len(t), t))
    parts = []
    for start in range(0, len(unique), EMBED_BATCH):
        batch = unique[start : start + EMBED_BATCH]
        vectors = np.asarray(embed_fn(list(batch)), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(batch):
            raise ValueError(f"embed_fn returned shape {vectors.shape} for {len(batch)} texts; expected (n, D)")
        parts.append(vectors)
    return {text: i for i, text in enumerate(unique)}, np.concatenate(parts)


def _finite(value: float) -> float | None:
    """NaN/inf become None so the report is strict JSON."""
    return value if np.isfinite(value) else None


def evaluate_view(vectors: np.ndarray, row_of: dict[str, int], task: GlossTask, data: SuiteData, folds: int) -> dict[str, float | None]:
    """All metrics for one view (already sliced and L2-normalised) of one embedding table."""

    def rows(texts: Sequence[str]) -> np.ndarray:
        return vectors[[row_of[text] for text in texts]]

    recall = retrieval_recall(rows(task.queries), rows(task.candidates), task.gold, ks=(1, 10))
    simlex, wordsim = (spearman_similarity(rows(pairs.words_a), rows(pairs.words_b), pairs.gold) for pairs in (data.simlex, data.wordsim))
    probe = linear_probe_accuracy(rows(data.bbc.texts), data.bbc.labels, folds=folds, seed=SEED)
    values = (recall[1], recall[10], simlex, wordsim, probe)
    return {name: _finite(value) for name, value in zip(METRICS, values)}


def run_suite(
    embed_fns: dict[str, EmbedFn],
    heldout_gloss_lemma: list[tuple[str, str]],
    *,
    dims: Sequence[int] = DEFAULT_DIMS,
    quick: bool = False,
    prefix_rows: Collection[str] = ("relational",),
    data: SuiteData | None = None,
) -> dict:
    """Score every embedding function; JSON-serialisable report with stable keys.

    Rows named in `prefix_rows` are scored at each prefix size m in `dims` not wider than their output
    (first m columns, rows re-L2-normalised: the Matryoshka coarse embedding) and at "full"; other rows at
    "full" only. `quick` caps retrieval at 500 glosses and probes 500 articles with 3 folds.
    """
    started = time.perf_counter()
    data = data or SuiteData.load()
    task = gloss_task(heldout_gloss_lemma, QUICK_GLOSS_CAP if quick else GLOSS_CAP)
    if quick:
        data = SuiteData(data.simlex, data.wordsim, subsample_articles(data.bbc, QUICK_ARTICLES_PER_LABEL))
    folds = QUICK_FOLDS if quick else FOLDS
    texts = [*task.queries, *task.candidates, *data.bbc.texts]
    for pairs in (data.simlex, data.wordsim):
        texts += [*pairs.words_a, *pairs.words_b]

    report: dict = {}
    seconds: dict[str, dict[str, float]] = {}
    widths: dict[str, int] = {}
    for name, embed_fn in embed_fns.items():
        clock = time.perf_counter()
        row_of, table = embed_unique(embed_fn, texts)
        embedded = time.perf_counter()
        width = widths[name] = table.shape[1]
        sizes = [m for m in dims if m <= width] if name in prefix_rows else []
        views = {str(m): m for m in sizes} | {"full": width}
        report[name] = {key: evaluate_view(l2_normalise(table[:, :m]), row_of, task, data, folds) for key, m in views.items()}
        seconds[name] = {"embed": round(embedded - clock, 3), "evaluate": round(time.perf_counter() - embedded, 3)}

    report["meta"] = {
        "quick": quick,
        "dims": list(dims),
        "widths": widths,
        "sizes": {
            "gloss_queries": len(task.queries),
            "lemma_candidates": len(task.candidates),
            "simlex_pairs": len(data.simlex.gold),
            "wordsim_pairs": len(data.wordsim.gold),
            "bbc_articles": len(data.bbc.texts),
            "bbc_folds": folds,
            "distinct_texts": len(set(texts)),
        },
        "seconds": seconds,
        "total_seconds": round(time.perf_counter() - started, 3),
    }
    return report
