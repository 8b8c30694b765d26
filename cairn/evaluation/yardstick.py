"""The yardstick every release must beat: TF-IDF + truncated SVD (LSA), scored by the same suite.

An encoder that loses to a bag-of-words baseline fitted in a minute is not worth downloading, so every
release manifest carries the yardstick's scores next to its own and says, task by task, whether it beats
them. The yardstick is fitted on one document per WordNet training pair plus the BBC articles
(unlabelled; transductive, as is usual for LSA), the same supervision Cairn trains on, and scored in the
same suite mode (quick or full) as the release: the two modes use different candidate sets, so only
scores from the same mode are comparable.

Fitting takes about a minute on two cores and depends only on the embedded data, so the scores are
cached per machine (under yardstick/ of cairn.protocol.fsutil.cache_dir), keyed by the data's digests.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from cairn.evaluation.suite import METRICS, EmbedFn, SuiteData, run_suite
from cairn.protocol.fsutil import atomic_write_bytes, cache_dir

logger = logging.getLogger("cairn.evaluation")
NAME = "TF-IDF + SVD (256)"
COMPONENTS = 256
# the tasks a release must win; R@1 is reported but not a promise (R@10 is the retrieval goal)
PROMISED = ("gloss_lemma_r10", "simlex_spearman", "wordsim_spearman", "bbc_probe_acc")


def tfidf_svd_embed_fn(documents: list[str], components: int = COMPONENTS) -> EmbedFn:
    """TF-IDF (sublinear tf, words seen twice or more, no stop list: SimLex and lemmas contain stop words
    such as 'top' or 'back') followed by a truncated SVD; its components are ordered by singular value."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectoriser = TfidfVectorizer(sublinear_tf=True, min_df=2)
    svd = TruncatedSVD(n_components=components, random_state=0)
    svd.fit(vectoriser.fit_transform(documents))
    return lambda texts: svd.transform(vectoriser.transform(texts))


def yardstick_dir() -> Path:
    return cache_dir() / "yardstick"


def yardstick_scores(quick: bool) -> dict[str, float | None]:
    """The yardstick's full-vector suite scores in the given mode (cached per machine)."""
    from cairn.corpora.wordnet import heldout_gloss_lemma, load_wordnet

    corpus = load_wordnet()
    data = SuiteData.load()
    digest = hashlib.sha256(f"{corpus.digest}|{len(data.bbc.texts)}|{COMPONENTS}|{quick}".encode()).hexdigest()[:16]
    path = yardstick_dir() / f"{digest}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable %s (%s); fitting the yardstick again", path, error)
    logger.info("fitting the %s yardstick on %d documents (once per machine)", NAME, len(corpus.train) + len(data.bbc.texts))
    embed = tfidf_svd_embed_fn([f"{pair.a} {pair.b}" for pair in corpus.train] + list(data.bbc.texts))
    report = run_suite({"yardstick": embed}, heldout_gloss_lemma(corpus), quick=quick, prefix_rows=(), data=data)
    scores = {metric: report["yardstick"]["full"][metric] for metric in METRICS}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(scores).encode())
    return scores


def against_yardstick(scores: dict, yardstick: dict, quick: bool) -> dict:
    """The manifest block: the yardstick's scores, and per promised task whether `scores` beat them."""
    beats = {
        metric: scores.get(metric) is not None and yardstick.get(metric) is not None and scores[metric] > yardstick[metric]
        for metric in PROMISED
    }
    return {"name": NAME, "mode": "quick" if quick else "full", "scores": yardstick, "beats": beats, "beats_all": all(beats.values())}
