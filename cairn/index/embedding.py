"""Texts to the vectors an index stores and compares: L2-normalised relational coordinates of one release.

An index built with release N holds N's first K_N coordinates. A query embedded by a later release N+1 whose
landmark set is an append-only successor (the same first K_N anchors, in order) is cut to those K_N coordinates:
coordinate k is "similarity to anchor k" in both releases, whatever the encoder, so the stored vectors stay usable
without re-embedding. Any other landmark set is refused by the task models' rule (check_prefix_compatible).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import prefix
from cairn.tasks.api import Release, open_release
from cairn.tasks.model import check_prefix_compatible

REBUILD = "build a new index with this release (`cairn index build`)"


def as_release(release: Release | Path | str, device: str = "auto") -> Release:
    """A Release as given, or the release (checked against its manifest) or bundle at a path."""
    return release if isinstance(release, Release) else open_release(Path(release), device)


def check_release(meta: Any, release: Release) -> None:
    """One LandmarkError line unless `release`'s landmark set starts with the index's anchors (cairn.index.meta.IndexMeta)."""
    check_prefix_compatible(
        release.landmarks, meta.anchors, meta.landmarks_version, meta.landmarks_digest, owner="index", made="built", remedy=REBUILD
    )


def embed_documents(release: Release, texts: Sequence[str], batch_size: int, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """(n, K) float32: all K relational coordinates per text, L2-normalised, in batches of `batch_size`."""
    chunks = []
    for start in range(0, len(texts), batch_size):
        chunks.append(prefix(release.embedder.relational(list(texts[start : start + batch_size])), None).astype(np.float32))
        if progress is not None:
            progress(min(start + batch_size, len(texts)))
    return np.concatenate(chunks) if chunks else np.zeros((0, release.landmarks.size), dtype=np.float32)


def embed_queries(release: Release, queries: Sequence[str], dims: int) -> np.ndarray:
    """(q, dims) float32 query vectors: the first `dims` coordinates, L2-normalised; a query with no known token is refused."""
    tokenizer = release.embedder.tokenizer.tokenizer
    unknown = tokenizer.token_to_id("[UNK]")
    for query in queries:
        if not isinstance(query, str) or not any(token != unknown for token in tokenizer.encode(query).ids):
            raise CairnError(f"query {query!r} has no token this release's vocabulary knows; nothing to search for")
    return prefix(release.embedder.relational(list(queries)), dims).astype(np.float32)
