"""Landmark sets and the relational embedding: invariance, digests, files, Matryoshka prefixes, ordering."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cairn.protocol.errors import LandmarkError
from cairn.protocol.landmarks import (
    FORMAT,
    LandmarkSet,
    LandmarkStats,
    compute_stats,
    cosines,
    farthest_point_order,
    l2_normalise,
    prefix,
    random_order,
    relational,
    select_landmarks,
)
from cairn.training.objective import relational_torch

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # huge stats -> inf, refused

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """Haar-ish random orthogonal matrix: QR of a normal matrix, signs fixed so R has a positive diagonal."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))[None, :]


def random_stats(rng: np.random.Generator, k: int) -> LandmarkStats:
    return LandmarkStats(rng.uniform(-0.5, 0.5, k).astype(np.float32), rng.uniform(0.05, 2.0, k).astype(np.float32))


# ---- invariance of the relational embedding -----------------------------------------------------------


@FAST
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 12),
    k=st.integers(1, 24),
    d=st.integers(2, 48),
    scale=st.floats(1e-3, 1e3),
    with_stats=st.booleans(),
)
def test_rotation_and_scaling_leave_relational_unchanged(seed, n, k, d, scale, with_stats):
    rng = np.random.default_rng(seed)
    vectors, anchors = rng.standard_normal((n, d)), rng.standard_normal((k, d))
    stats = random_stats(rng, k) if with_stats else None
    q = random_orthogonal(rng, d)
    assert np.allclose(q.T @ q, np.eye(d), atol=1e-9)
    reference = relational(vectors, anchors, stats)
    assert reference.shape == (n, k)
    np.testing.assert_allclose(relational(vectors @ q, anchors @ q, stats), reference, atol=2e-4)
    # a global rescale, and an independent positive rescale of every row, change no cosine
    np.testing.assert_allclose(relational(scale * vectors, scale * anchors, stats), reference, atol=2e-4)
    row_scales = rng.uniform(0.01, 100.0, (n, 1))
    np.testing.assert_allclose(relational(row_scales * (vectors @ q), anchors @ q, stats), reference, atol=2e-4)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 12), d=st.integers(3, 48))
def test_absolute_cosines_to_a_fixed_basis_do_change_under_rotation(seed, n, d):
    """The contrast: coordinates tied to a fixed basis (the absolute vector itself) are not rotation invariant."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, d))
    basis = np.eye(d)
    q = random_orthogonal(rng, d)
    moved = np.abs(cosines(vectors @ q, basis) - cosines(vectors, basis)).max()
    assert moved > 1e-2


def test_relational_torch_twin_matches_numpy_and_is_rotation_invariant():
    rng = np.random.default_rng(3)
    vectors, anchors, stats = rng.standard_normal((5, 16)), rng.standard_normal((7, 16)), random_stats(rng, 7)
    q = torch.from_numpy(random_orthogonal(rng, 16)).float()
    args = (torch.from_numpy(stats.mean), torch.from_numpy(stats.std))
    twin = relational_torch(torch.from_numpy(vectors).float(), torch.from_numpy(anchors).float(), *args)
    np.testing.assert_allclose(twin.numpy(), relational(vectors, anchors, stats), atol=1e-4)
    rotated = relational_torch(torch.from_numpy(vectors).float() @ q, torch.from_numpy(anchors).float() @ q, *args)
    np.testing.assert_allclose(rotated.numpy(), twin.numpy(), atol=1e-4)


def test_compute_stats_standardises_the_reference_sample():
    rng = np.random.default_rng(0)
    reference, anchors = rng.standard_normal((400, 24)), rng.standard_normal((10, 24))
    stats = compute_stats(reference, anchors)
    z = relational(reference, anchors, stats)
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
    # the stats are rotation invariant too, so a rotated encoder calibrates to the same numbers
    q = random_orthogonal(rng, 24)
    rotated = compute_stats(reference @ q, anchors @ q)
    np.testing.assert_allclose(rotated.mean, stats.mean, atol=1e-5)
    np.testing.assert_allclose(rotated.std, stats.std, atol=1e-5)


def test_relational_without_stats_is_plain_cosine():
    vectors = np.array([[1.0, 0.0], [1.0, 1.0]])
    anchors = np.array([[2.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(relational(vectors, anchors, None), [[1.0, 0.0], [math.sqrt(0.5), math.sqrt(0.5)]], atol=1e-6)


# ---- the digest names exactly one ordered anchor list ---------------------------------------------------

anchor_text = st.text(min_size=1, max_size=20).filter(lambda s: s.strip() != "")
anchor_lists = st.lists(anchor_text, min_size=2, max_size=12, unique=True)


@FAST
@given(anchors=anchor_lists, data=st.data())
def test_swapping_two_anchors_changes_the_digest(anchors, data):
    i, j = data.draw(st.lists(st.integers(0, len(anchors) - 1), min_size=2, max_size=2, unique=True))
    swapped = list(anchors)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    assert LandmarkSet(1, swapped).digest != LandmarkSet(1, anchors).digest


@FAST
@given(anchors=anchor_lists, data=st.data())
def test_editing_one_character_changes_the_digest(anchors, data):
    index = data.draw(st.integers(0, len(anchors) - 1))
    text = anchors[index]
    position = data.draw(st.integers(0, len(text)))  # len(text): insert at the end
    replace = data.draw(st.booleans()) and position < len(text)
    char = data.draw(st.characters(codec="utf-8"))
    edited_text = text[:position] + char + text[position + (1 if replace else 0) :]
    assume(edited_text != text and edited_text.strip() and edited_text not in anchors)
    edited = list(anchors)
    edited[index] = edited_text
    assert LandmarkSet(1, edited).digest != LandmarkSet(1, anchors).digest


@FAST
@given(anchors=anchor_lists, extra=anchor_text)
def test_appending_an_anchor_or_bumping_the_version_changes_the_digest(anchors, extra):
    assume(extra not in anchors)
    original = LandmarkSet(1, anchors)
    assert LandmarkSet(1, anchors + [extra]).digest != original.digest
    assert LandmarkSet(2, anchors).digest != original.digest
    assert LandmarkSet(1, list(anchors)).digest == original.digest  # and it is a function of the content only


@pytest.mark.parametrize(
    "version, anchors",
    [
        (1, []),
        (1, ["a", "a"]),
        (1, ["a", " "]),
        (1, ["a", 3]),
        (0, ["a"]),
        (-1, ["a"]),
        (True, ["a"]),
        ("1", ["a"]),
        (1.0, ["a"]),
        (1, ["ok", "lone \ud800 surrogate"]),
    ],
)
def test_malformed_sets_are_refused(version, anchors):
    with pytest.raises(LandmarkError):
        LandmarkSet(version, anchors)


def test_stats_must_match_the_set():
    with pytest.raises(LandmarkError):
        LandmarkSet(1, ["a", "b"], LandmarkStats(np.zeros(3), np.ones(3)))
    with pytest.raises(LandmarkError):
        LandmarkSet(1, ["a", "b"], LandmarkStats(np.zeros(2), np.array([1.0, 0.0])))
    with pytest.raises(LandmarkError):
        LandmarkSet(1, ["a", "b"], LandmarkStats(np.array([0.0, np.nan]), np.ones(2)))


# ---- files ------------------------------------------------------------------------------------------------


def calibrated_set() -> LandmarkSet:
    return LandmarkSet(3, ["a red fox", "ünïcödé ☃", "the river"], LandmarkStats(np.array([0.1, -0.2, 0.3]), np.array([0.5, 1.0, 2.0])))


def test_save_load_round_trip(tmp_path):
    original = calibrated_set()
    original.save(tmp_path / "landmarks.json")
    loaded = LandmarkSet.load(tmp_path / "landmarks.json")
    assert (loaded.version, loaded.anchors, loaded.digest) == (original.version, original.anchors, original.digest)
    np.testing.assert_array_equal(loaded.stats.mean, original.stats.mean)
    np.testing.assert_array_equal(loaded.stats.std, original.stats.std)
    assert loaded.stats.digest() == original.stats.digest()
    assert loaded.to_json() == original.to_json()
    bare = LandmarkSet(1, ["x", "y"])
    bare.save(tmp_path / "bare.json")
    assert LandmarkSet.load(tmp_path / "bare.json").stats is None


def _tamper(document: dict, how: str) -> dict:
    if how == "digest":
        document["digest"] = "0" * 64
    elif how == "anchor edited":
        document["anchors"][1] = document["anchors"][1] + "!"
    elif how == "anchors reordered":
        document["anchors"].reverse()
    elif how == "version":
        document["version"] += 1
    elif how == "stats mean":
        document["stats"]["mean"][0] += 0.001
    elif how == "stats std":
        document["stats"]["std"][2] = 3.0
    elif how == "stats digest":
        document["stats"]["digest"] = "f" * 64
    elif how == "stats too short":
        document["stats"]["mean"] = document["stats"]["mean"][:2]
    elif how == "stats negative std":
        document["stats"]["std"][0] = -1.0
    elif how == "stats not an object":
        document["stats"] = [1, 2, 3]
    elif how == "format":
        document["format"] = "cairn-landmarks/0"
    return document


@pytest.mark.parametrize(
    "how",
    [
        "digest",
        "anchor edited",
        "anchors reordered",
        "version",
        "stats mean",
        "stats std",
        "stats digest",
        "stats too short",
        "stats negative std",
        "stats not an object",
        "format",
    ],
)
def test_tampered_file_is_refused(tmp_path, how):
    path = tmp_path / "landmarks.json"
    calibrated_set().save(path)
    path.write_text(json.dumps(_tamper(json.loads(path.read_text()), how)))
    with pytest.raises(LandmarkError) as error:
        LandmarkSet.load(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("content", [None, b"", b"{not json", b"\xff\xfe\x00garbage", b"[1, 2, 3]", b'"text"'])
def test_unreadable_file_is_refused(tmp_path, content):
    path = tmp_path / "landmarks.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LandmarkError):
        LandmarkSet.load(path)


# what json.loads can hand over: any str (lone surrogates included, JSON spells them "\\ud800"),
# integers of any size (beyond float range too), floats including NaN and infinities
json_text = st.text(max_size=8) | st.tuples(st.text(max_size=4), st.sampled_from(["\ud800", "\udfff", "\udc80"]), st.text(max_size=3)).map(
    "".join
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400).map(lambda i: i * (-1) ** (i % 2)),
    st.floats(allow_nan=True, allow_infinity=True),
    json_text,
    st.sampled_from([FORMAT, ""]),
)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(json_text, inner, max_size=4), max_leaves=12
)


def _only_landmark_errors(document: object) -> None:
    try:
        result = LandmarkSet.from_json(document)
    except LandmarkError:
        return
    assert isinstance(result, LandmarkSet)


@settings(max_examples=300, deadline=None)
@given(document=json_values)
def test_from_json_fuzz_any_json_value(document):
    _only_landmark_errors(document)


@settings(max_examples=300, deadline=None)
@given(
    fields=st.fixed_dictionaries(
        {},
        optional={
            "version": st.integers(1, 3) | json_values,
            "anchors": st.lists(json_text, min_size=1, max_size=4) | json_values,
            "digest": json_values,
            "stats": json_values,
        },
    )
)
def test_from_json_fuzz_landmark_shaped_documents(fields):
    _only_landmark_errors({"format": FORMAT, **fields})


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["version", "anchors", "digest", "stats", "mean", "std", "stats digest", "anchor"]),
    value=json_values | st.lists(json_scalars, min_size=3, max_size=3),
)
def test_from_json_fuzz_one_field_of_a_valid_document(field, value):
    """Start from a valid calibrated document (so parsing reaches the stats) and replace one field."""
    document = calibrated_set().to_json()
    if field in ("mean", "std"):
        document["stats"][field] = value
    elif field == "stats digest":
        document["stats"]["digest"] = value
    elif field == "anchor":
        document["anchors"][0] = value
    else:
        document[field] = value
    _only_landmark_errors(document)


def test_from_json_fuzz_found_cases():
    """Regressions found by the fuzzers: an integer beyond float range, and a lone surrogate anchor."""
    document = calibrated_set().to_json()
    document["stats"]["mean"] = [10**400, 0, 0]
    with pytest.raises(LandmarkError):
        LandmarkSet.from_json(document)
    with pytest.raises(LandmarkError):
        LandmarkSet.from_json({"format": FORMAT, "version": 1, "anchors": ["\ud800"], "digest": "x"})


@settings(max_examples=100, deadline=None)
@given(content=st.binary(max_size=64))
def test_load_fuzz_arbitrary_bytes(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("fuzz") / "landmarks.json"
    path.write_bytes(content)
    with pytest.raises(LandmarkError):
        LandmarkSet.load(path)


# ---- versions are append-only ----------------------------------------------------------------------------


@FAST
@given(anchors=anchor_lists, new=st.lists(anchor_text, max_size=6, unique=True))
def test_extend_is_append_only(anchors, new):
    old = LandmarkSet(1, anchors)
    newer = old.extend(new)
    assert newer.version == 2
    assert newer.anchors[: old.size] == old.anchors
    assert newer.anchors[old.size :] == [a for a in new if a not in anchors]
    old.check_successor(newer)  # must not raise


@FAST
@given(anchors=anchor_lists, data=st.data())
def test_check_successor_refuses_a_non_prefix(anchors, data):
    old = LandmarkSet(1, anchors)
    i, j = data.draw(st.lists(st.integers(0, len(anchors) - 1), min_size=2, max_size=2, unique=True))
    reordered = list(anchors)
    reordered[i], reordered[j] = reordered[j], reordered[i]
    with pytest.raises(LandmarkError):
        old.check_successor(LandmarkSet(2, reordered + ["zz-new"] if "zz-new" not in anchors else reordered))
    with pytest.raises(LandmarkError):
        old.check_successor(LandmarkSet(2, anchors[1:]))  # dropped the first anchor
    with pytest.raises(LandmarkError):
        old.check_successor(LandmarkSet(1, anchors))  # same version is not a successor


# ---- Matryoshka prefixes -----------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 8), k=st.integers(1, 40), data=st.data())
def test_prefix_is_the_first_m_coordinates_renormalised(seed, n, k, data):
    z = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    m = data.draw(st.integers(1, k))
    out = prefix(z, m)
    assert out.shape == (n, m)
    np.testing.assert_allclose(out, z[:, :m] / np.linalg.norm(z[:, :m], axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(prefix(z, None), prefix(z, k))


@pytest.mark.parametrize("dims", [0, -1, 9, 100])
def test_prefix_out_of_range_is_an_error(dims):
    with pytest.raises(LandmarkError):
        prefix(np.ones((2, 8)), dims)


# ---- ordering ------------------------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 60), count=st.integers(1, 80))
def test_farthest_point_order_returns_distinct_indices(seed, n, count):
    vectors = np.random.default_rng(seed).standard_normal((n, 8))
    order = farthest_point_order(vectors, count)
    assert len(order) == min(n, count)
    assert len(set(order)) == len(order)
    assert all(0 <= i < n for i in order)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), clusters=st.integers(2, 8), per_cluster=st.integers(3, 20))
def test_farthest_point_order_spreads_over_clusters(seed, clusters, per_cluster):
    """On well-separated clusters (in cosine), the first k picks land in k different clusters; random picks rarely do."""
    rng = np.random.default_rng(seed)
    centres = l2_normalise(rng.standard_normal((clusters, 64)))
    labels = np.repeat(np.arange(clusters), per_cluster)
    points = centres[labels] + 0.02 * rng.standard_normal((len(labels), 64))
    shuffle = rng.permutation(len(labels))
    points, labels = points[shuffle], labels[shuffle]
    order = farthest_point_order(points, clusters)
    assert sorted(labels[order]) == list(range(clusters))


def test_farthest_point_order_beats_random_on_clusters():
    rng = np.random.default_rng(7)
    centres = l2_normalise(rng.standard_normal((8, 64)))
    labels = np.repeat(np.arange(8), 25)
    points = centres[labels] + 0.02 * rng.standard_normal((len(labels), 64))
    random_hits = [len(set(labels[random_order(len(points), 8, seed)])) for seed in range(50)]
    assert len(set(labels[farthest_point_order(points, 8)])) == 8
    assert np.mean(random_hits) < 7  # so the test above is not trivially satisfied by any order


CANDIDATES = [
    f"the {adj} {noun} {verb} near the {place}"
    for adj in ("red", "blue", "green", "old", "tiny")
    for noun in ("fox", "dog", "owl", "cat")
    for verb in ("sleeps", "sings", "waits")
    for place in ("river", "hill")
]


def test_select_landmarks_is_deterministic_and_well_formed():
    first = select_landmarks(CANDIDATES, 16)
    second = select_landmarks(list(CANDIDATES), 16)
    assert first.anchors == second.anchors and first.digest == second.digest
    assert first.size == 16 and len(set(first.anchors)) == 16 and set(first.anchors) <= set(CANDIDATES)
    assert first.version == 1 and first.stats is None
    # duplicates and blank candidates are dropped before choosing
    noisy = select_landmarks(CANDIDATES + CANDIDATES[:10] + ["", "   "], 16)
    assert noisy.anchors == first.anchors
    randomised = select_landmarks(CANDIDATES, 16, method="random", seed=1)
    assert randomised.anchors == select_landmarks(CANDIDATES, 16, method="random", seed=1).anchors
    assert randomised.anchors != select_landmarks(CANDIDATES, 16, method="random", seed=2).anchors


def test_select_landmarks_errors():
    with pytest.raises(LandmarkError, match="distinct candidate"):
        select_landmarks(CANDIDATES[:5] * 10, 16)
    with pytest.raises(LandmarkError, match="ordering"):
        select_landmarks(CANDIDATES, 16, method="alphabetical")
