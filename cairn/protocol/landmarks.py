"""Landmark sets and the relational embedding built on them.

A landmark set is an ordered list of K anchor texts. The relational embedding of a text x is, for
each anchor k in order, the standardised cosine between encode(x) and encode(anchor_k):

    z_k(x) = (cos(e_x, e_k) - mean_k) / std_k

Cosines do not change when the encoder's output space is rotated or rescaled, so z is comparable
across training runs and releases. The per-anchor mean/std come from a reference sample and ship
with each release (research: standardisation lifts cross-model stitching from .85 to .94).
The order is part of the contract: the first m coordinates are a usable coarse embedding
(Matryoshka), so anchors that split the data most come first, and new versions only append.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cairn.protocol.errors import LandmarkError
from cairn.protocol.fsutil import atomic_write_bytes

LANDMARKS_FILE = "landmarks.json"
FORMAT = "cairn-landmarks/1"
MIN_STD = 1e-4


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass
class LandmarkStats:
    """Per-anchor mean and std of the cosine over a reference sample, for one encoder."""

    mean: np.ndarray
    std: np.ndarray

    def digest(self) -> str:
        return hashlib.sha256(_canonical({"mean": _floats(self.mean), "std": _floats(self.std)})).hexdigest()


def _floats(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float32)]


@dataclass
class LandmarkSet:
    """An ordered, versioned anchor list; `digest` names it in run configs, releases and task models."""

    version: int
    anchors: list[str]
    stats: LandmarkStats | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or isinstance(self.version, bool) or self.version < 1:
            raise LandmarkError(f"landmark set version must be a positive integer, got {self.version!r}")
        if not self.anchors or not all(isinstance(a, str) and a.strip() for a in self.anchors):
            raise LandmarkError("a landmark set needs a non-empty list of non-empty anchor texts")
        if len(set(self.anchors)) != len(self.anchors):
            raise LandmarkError("landmark anchors must be distinct")
        try:
            for anchor in self.anchors:
                anchor.encode("utf-8")
        except UnicodeEncodeError:
            # JSON can spell lone surrogates ("\\ud800"); they have no UTF-8 form, so no digest
            raise LandmarkError("landmark anchors must be valid Unicode text (no lone surrogates)") from None
        if self.stats is not None:
            self.stats = _checked_stats(self.stats, len(self.anchors))

    @property
    def size(self) -> int:
        return len(self.anchors)

    @property
    def digest(self) -> str:
        """SHA-256 over the canonical encoding of (version, ordered anchors): any edit or reorder changes it."""
        return hashlib.sha256(_canonical({"version": self.version, "anchors": self.anchors})).hexdigest()

    def extend(self, new_anchors: list[str]) -> "LandmarkSet":
        """Version n+1 keeps version n's anchors as its prefix (append-only)."""
        return LandmarkSet(self.version + 1, self.anchors + [a for a in new_anchors if a not in self.anchors])

    def check_successor(self, newer: "LandmarkSet") -> None:
        if newer.version <= self.version or newer.anchors[: self.size] != self.anchors:
            raise LandmarkError(
                f"landmark set v{newer.version} does not extend v{self.version}: its first {self.size} anchors must be v{self.version}'s"
            )

    def with_stats(self, stats: LandmarkStats) -> "LandmarkSet":
        return LandmarkSet(self.version, list(self.anchors), stats)

    def to_json(self) -> dict:
        document: dict = {"format": FORMAT, "version": self.version, "anchors": self.anchors, "digest": self.digest}
        if self.stats is not None:
            document["stats"] = {"mean": _floats(self.stats.mean), "std": _floats(self.stats.std), "digest": self.stats.digest()}
        return document

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), json.dumps(self.to_json(), indent=1, ensure_ascii=False).encode("utf-8"))

    @classmethod
    def from_json(cls, document: object, source: str = "landmark set") -> "LandmarkSet":
        """Parse and check a landmark document; anything malformed is a LandmarkError naming `source`."""
        if not isinstance(document, dict):
            raise LandmarkError(f"{source}: expected a JSON object")
        if document.get("format") != FORMAT:
            raise LandmarkError(f"{source}: unknown format {document.get('format')!r}, expected {FORMAT!r}")
        version, anchors = document.get("version"), document.get("anchors")
        if not isinstance(anchors, list):
            raise LandmarkError(f"{source}: 'anchors' must be a list of texts")
        try:
            landmarks = cls(version, list(anchors))  # type: ignore[arg-type]
        except LandmarkError as error:
            raise LandmarkError(f"{source}: {error}") from None
        if document.get("digest") != landmarks.digest:
            raise LandmarkError(f"{source}: digest does not match its anchors (edited or reordered)")
        raw_stats = document.get("stats")
        if raw_stats is not None:
            if not isinstance(raw_stats, dict):
                raise LandmarkError(f"{source}: 'stats' must be an object")
            try:
                stats = LandmarkStats(
                    np.asarray(raw_stats.get("mean"), dtype=np.float32), np.asarray(raw_stats.get("std"), dtype=np.float32)
                )
            except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float range
                raise LandmarkError(f"{source}: 'stats' mean/std must be lists of numbers") from None
            try:
                landmarks = landmarks.with_stats(stats)
            except LandmarkError as error:
                raise LandmarkError(f"{source}: {error}") from None
            if raw_stats.get("digest") != landmarks.stats.digest():  # type: ignore[union-attr]
                raise LandmarkError(f"{source}: stats digest does not match its values")
        return landmarks

    @classmethod
    def load(cls, path: Path) -> "LandmarkSet":
        path = Path(path)
        try:
            document = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise LandmarkError(f"{path}: no such landmark file") from None
        except (UnicodeDecodeError, ValueError) as error:
            raise LandmarkError(f"{path}: not valid UTF-8 JSON ({error.__class__.__name__})") from None
        return cls.from_json(document, source=str(path))


def _checked_stats(stats: LandmarkStats, size: int) -> LandmarkStats:
    mean, std = np.asarray(stats.mean, dtype=np.float32), np.asarray(stats.std, dtype=np.float32)
    if mean.shape != (size,) or std.shape != (size,):
        raise LandmarkError(f"stats must have one mean and one std per anchor ({size})")
    if not (np.isfinite(mean).all() and np.isfinite(std).all()) or (std <= 0).any():
        raise LandmarkError("stats must be finite with positive std")
    return LandmarkStats(mean, std)


# ---- the math -------------------------------------------------------------------------------


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def cosines(vectors: np.ndarray, anchor_vectors: np.ndarray) -> np.ndarray:
    """(n, d) x (K, d) -> (n, K) cosine similarities."""
    return l2_normalise(np.asarray(vectors, dtype=np.float32)) @ l2_normalise(np.asarray(anchor_vectors, dtype=np.float32)).T


def compute_stats(reference_vectors: np.ndarray, anchor_vectors: np.ndarray) -> LandmarkStats:
    sims = cosines(reference_vectors, anchor_vectors)
    return LandmarkStats(sims.mean(0).astype(np.float32), np.maximum(sims.std(0), MIN_STD).astype(np.float32))


def relational(vectors: np.ndarray, anchor_vectors: np.ndarray, stats: LandmarkStats | None) -> np.ndarray:
    """The full relational vector (n, K): standardised cosines to the anchors, in anchor order."""
    sims = cosines(vectors, anchor_vectors)
    if stats is None:
        return sims
    return (sims - stats.mean[None, :]) / stats.std[None, :]


def prefix(relational_vectors: np.ndarray, dims: int | None) -> np.ndarray:
    """First `dims` coordinates, L2-normalised for cosine use (Matryoshka truncation)."""
    width = relational_vectors.shape[-1]
    if dims is None:
        dims = width
    if not 1 <= dims <= width:
        raise LandmarkError(f"dims must be between 1 and {width}, got {dims}")
    return l2_normalise(relational_vectors[..., :dims])


# ---- ordering: which anchors come first -------------------------------------------------------


def farthest_point_order(vectors: np.ndarray, count: int) -> list[int]:
    """Greedy farthest-point traversal in cosine distance, starting from the point farthest from the
    centroid: each next anchor is the candidate least similar to every anchor chosen so far, so early
    anchors spread over the data and split it most (measured best at k<=8 in the research notes)."""
    unit = l2_normalise(np.asarray(vectors, dtype=np.float64))
    count = min(count, len(unit))
    centroid = l2_normalise(unit.mean(0, keepdims=True))
    first = int(np.argmin(unit @ centroid.T))
    order = [first]
    max_similarity = unit @ unit[first]
    max_similarity[first] = math.inf
    while len(order) < count:
        nxt = int(np.argmin(max_similarity))
        order.append(nxt)
        max_similarity = np.maximum(max_similarity, unit @ unit[nxt])
        max_similarity[nxt] = math.inf
    return order


def random_order(size: int, count: int, seed: int = 0) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(size)[:count]]


def select_landmarks(candidates: list[str], count: int, method: str = "farthest", seed: int = 0) -> LandmarkSet:
    """Choose and order `count` anchors from candidate texts, independent of any encoder.

    Ordering uses a TF-IDF + SVD view of the candidates, so the landmark set (and its digest) can be
    fixed in the run configuration before any model exists, identically on every machine.
    """
    unique = list(dict.fromkeys(c.strip() for c in candidates if c and c.strip()))
    if len(unique) < count:
        raise LandmarkError(f"need at least {count} distinct candidate texts for landmarks, got {len(unique)}")
    if method == "random":
        return LandmarkSet(1, [unique[i] for i in random_order(len(unique), count, seed)])
    if method != "farthest":
        raise LandmarkError(f"unknown landmark ordering {method!r}; use farthest or random")
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform(unique)
    components = min(128, tfidf.shape[1] - 1, len(unique) - 1)
    vectors = TruncatedSVD(components, random_state=seed).fit_transform(tfidf)
    return LandmarkSet(1, [unique[i] for i in farthest_point_order(vectors, count)])
