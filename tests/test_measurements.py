"""The measurement functions on synthetic embeddings whose answer is known in advance."""

from __future__ import annotations

import numpy as np
import pytest

from cairn.evaluation.metrics import linear_probe_accuracy
from cairn.tasks.measures import (
    coordinate_spearman,
    gram_schmidt_basis,
    pca_curve,
    prefix_curve,
    random_rotation,
    relational_view,
    row_cosine,
    smallest_k,
    spearman_summary,
    stitching,
)

CLASSES, DIM, PER_CLASS = 5, 64, 80


@pytest.fixture(scope="module")
def space():
    """Five Gaussian clusters in 64 dims (not centred at the origin), an anchor set and a reference sample from them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(CLASSES, DIM))
    labels = np.repeat(np.arange(CLASSES), PER_CLASS)
    vectors = centres[labels] + 0.8 * rng.normal(size=(len(labels), DIM)) + 2.0
    order = rng.permutation(len(labels))
    vectors, labels = vectors[order], labels[order]
    anchors = centres[rng.integers(0, CLASSES, 48)] + 0.8 * rng.normal(size=(48, DIM)) + 2.0
    reference = centres[rng.integers(0, CLASSES, 200)] + 0.8 * rng.normal(size=(200, DIM)) + 2.0
    return vectors, labels, anchors, reference


def split(n: int) -> tuple[np.ndarray, np.ndarray]:
    index = np.arange(n)
    return index[index % 10 < 7], index[index % 10 >= 7]


@pytest.mark.parametrize("view", ["standardised", "raw", "gram_schmidt"])
def test_rotated_copy_stitches_in_relational_form_and_not_in_absolute_form(space, view):
    """Run B = run A rotated and rescaled (what a second training run may do): relational coordinates agree."""
    vectors, labels, anchors, reference = space
    rotation = random_rotation(DIM, seed=1)
    rotated = 3.0 * vectors @ rotation
    rel_a = relational_view(vectors, anchors, reference, view)
    rel_b = relational_view(rotated, 3.0 * anchors @ rotation, 3.0 * reference @ rotation, view)
    train, test = split(len(labels))

    assert row_cosine(rel_a, rel_b) == pytest.approx(1.0, abs=1e-4)
    valid = np.isfinite(coordinate_spearman(rel_a, rel_b))
    assert spearman_summary(coordinate_spearman(rel_a, rel_b))["min"] > 0.999 and valid.sum() > 0
    relational = stitching(rel_a[train], rel_a[test], rel_b[test], labels[train], labels[test])
    assert relational["head_score_old"] > 0.9
    assert relational["head_ratio"] == pytest.approx(1.0, abs=0.01)

    absolute = stitching(vectors[train], vectors[test], rotated[test], labels[train], labels[test])
    assert absolute["head_score_old"] > 0.9
    assert absolute["head_score_new"] < absolute["chance"] + 0.2  # near chance (0.2)
    assert abs(row_cosine(vectors - vectors.mean(0), rotated - rotated.mean(0))) < 0.1
    assert abs(spearman_summary(coordinate_spearman(vectors, rotated))["mean"]) < 0.1


def test_translation_changes_raw_cosines(space):
    """Cosines are not translation-invariant (the research notes: centre first); the measures show it."""
    vectors, _, anchors, reference = space
    shifted = vectors + 5.0
    same = row_cosine(relational_view(vectors, anchors, reference, "raw"), relational_view(shifted, anchors + 5.0, reference + 5.0, "raw"))
    assert same < 0.999


def test_coordinate_spearman_known_values():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(500, 4))
    b = np.column_stack([np.exp(a[:, 0]), -a[:, 1], rng.normal(size=500), np.ones(500)])
    rho = coordinate_spearman(a, b)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert abs(rho[2]) < 0.15 and np.isnan(rho[3])
    assert spearman_summary(rho)["median"] == pytest.approx(np.median(rho[:3]))
    from scipy.stats import spearmanr

    assert rho[2] == pytest.approx(spearmanr(a[:, 2], b[:, 2]).statistic)
    with pytest.raises(ValueError):
        coordinate_spearman(a, b[:10])


def test_row_cosine_known_values():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(200, 32))
    assert row_cosine(a, 2 * a) == pytest.approx(1.0)
    assert row_cosine(a, -a) == pytest.approx(-1.0)
    assert abs(row_cosine(a, rng.normal(size=(200, 32)))) < 0.05
    # only shared leading coordinates count (relational prefixes of a longer landmark set)
    assert row_cosine(a, np.hstack([a, rng.normal(size=(200, 8))])) == pytest.approx(1.0)


def test_gram_schmidt_coordinates_are_nested_and_orthonormal():
    rng = np.random.default_rng(5)
    anchors = rng.normal(size=(12, 8))
    basis, valid = gram_schmidt_basis(anchors)
    assert valid[:8].all() and not valid[8:].any()  # only d directions exist
    np.testing.assert_allclose(basis[:8] @ basis[:8].T, np.eye(8), atol=1e-10)
    x = rng.normal(size=(30, 8))
    full = relational_view(x, anchors, view="gram_schmidt")
    changed = relational_view(x, np.vstack([anchors[:5], rng.normal(size=(7, 8))]), view="gram_schmidt")
    np.testing.assert_allclose(full[:, :5], changed[:, :5], atol=1e-6)  # coordinate k depends on anchors 1..k only
    assert (full[:, 8:] == 0).all()
    np.testing.assert_allclose(full[:, 0], relational_view(x, anchors, view="raw")[:, 0], atol=1e-6)  # q_1 = anchor 1


def test_standardised_view_matches_the_shipped_relational_form(space):
    from cairn.protocol.landmarks import compute_stats, relational

    vectors, _, anchors, reference = space
    shipped = relational(vectors, anchors, compute_stats(reference, anchors))
    np.testing.assert_allclose(relational_view(vectors, anchors, reference), shipped, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        relational_view(vectors, anchors, None, "standardised")
    with pytest.raises(ValueError):
        relational_view(vectors, anchors, reference, "cubic")


def test_smallest_k():
    curve = {4: 0.50, 8: 0.90, 16: 0.96, 32: 0.99, 256: 1.00}
    assert smallest_k(curve) == 16
    assert smallest_k(curve, fraction=0.99) == 32
    assert smallest_k(curve, full=0.5) == 4
    assert smallest_k({4: 0.1, 8: 0.2}, full=1.0) is None
    assert smallest_k({}) is None


def test_pca_is_the_upper_bound_of_a_prefix_when_signal_hides_in_late_coordinates():
    """Class signal lives in two directions spread over all 32 coordinates: PCA-2 finds it, the first 2 coordinates do not."""
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(4), 100)
    signal = np.array([[4, 0], [-4, 0], [0, 4], [0, -4]], dtype=float)[labels] + 0.3 * rng.normal(size=(400, 2))
    vectors = np.hstack([signal, 0.3 * rng.normal(size=(400, 30))]) @ random_rotation(32, seed=7)

    def score(x):
        return linear_probe_accuracy(x, labels, folds=3)

    pca = pca_curve(vectors, (2, 32), score)
    prefix = prefix_curve(vectors, (2, 32), score)
    assert pca[2] > 0.95 and prefix[2] < 0.8
    assert pca[32] == pytest.approx(prefix[32], abs=0.02)
    assert smallest_k(pca) == 2 and smallest_k(prefix) == 32


# ---- per-release promises (cairn.evaluation.promises) ------------------------------------------


def test_prefix_sizes():
    from cairn.evaluation.promises import prefix_sizes

    assert prefix_sizes(256) == [8, 16, 32, 64, 128, 256]
    assert prefix_sizes(100) == [8, 16, 32, 64, 100]
    assert prefix_sizes(8) == [8]


def test_matryoshka_report_finds_signal_in_the_leading_coordinates():
    """Class signal in the first 8 of 64 coordinates: the prefix reaches 95 % at k=8, a random order needs more."""
    from cairn.evaluation.promises import matryoshka_report

    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), 60)
    leading = 3.0 * np.eye(8)[labels * 2] + 0.3 * rng.normal(size=(240, 8))
    relational = np.hstack([leading, rng.normal(size=(240, 56))])
    report = matryoshka_report(relational, relational[:, :32] @ random_rotation(32, seed=1), labels)
    assert report["relational_prefix"]["k95"] == 8
    assert report["random_order"]["k95"] > 8
    assert report["goal"] == {"k95": 8} and report["goal_met"] is True
    assert report["random_order"]["64"] == pytest.approx(report["relational_prefix"]["64"])
    assert set(report["pca_absolute"]) == {"8", "16", "32", "k95"}


def test_outside_report_of_a_rotated_copy_is_fully_aligned():
    from cairn.evaluation.promises import outside_report

    rng = np.random.default_rng(4)
    reference = rng.normal(size=(300, 16))
    report = outside_report(
        {"relational": reference @ random_rotation(16, seed=2), "absolute": rng.normal(size=(300, 16))}, reference, "ref"
    )
    assert report["relational"]["mutual_knn10"] == pytest.approx(1.0)
    assert report["absolute"]["mutual_knn10"] < 0.15
    assert report["chance"]["mutual_knn10"] == pytest.approx(10 / 299)
    assert report["reference"] == "ref on 300 held-out texts of the run's corpus"


def test_alignment_texts_are_distinct_capped_and_independent_of_order():
    from cairn.corpora.base import Pair, PairCorpus
    from cairn.evaluation.promises import alignment_texts

    pairs = [Pair(f"gloss {i}", f"lemma {i % 7}", "lemma_gloss") for i in range(40)]
    first = alignment_texts(PairCorpus("x", [], list(pairs)), cap=20)
    second = alignment_texts(PairCorpus("x", [], list(reversed(pairs))), cap=20)
    assert first == second and len(first) == len(set(first)) == 20
    assert len(alignment_texts(PairCorpus("x", [], pairs), cap=1000)) == 47
