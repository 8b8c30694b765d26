"""Open an index and search it coarse-to-fine: a shortlist on the first k coordinates, re-ranked with all K.

The coarse engine (cairn/index/engines.py) proposes `shortlist` candidate rows by the k-coordinate prefix; their
stored K-coordinate vectors (a memory-mapped .npy, so opening is instant and memory is paged on demand) are scored
exactly against the query and the best `k` returned. The first coordinates are the anchors that split the data
most (Matryoshka order), which is why a short prefix finds the neighbourhood and the rest only orders it.
`exact=True` scores every stored vector with all K coordinates: the reference the benchmark compares against.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cairn.index.embedding import as_release, check_release, embed_queries
from cairn.index.engines import open_engine, top_rows
from cairn.index.files import file_digest, load_array
from cairn.index.meta import META_FILE, IndexMeta, read_meta
from cairn.index.store import STORE_FILE, TextStore
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import l2_normalise
from cairn.tasks.api import Release

VECTORS_FILE = "vectors.npy"
MAX_K = 1000


class SearchIndex:
    """A read-only view of one generation of an index; `refresh()` follows an upgrade that switched generations."""

    def __init__(self, directory: Path, device: str = "auto"):
        self.directory = Path(directory)
        self.device = device
        self._releases: dict[str, Release] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._open()

    def _open(self) -> None:
        meta = read_meta(self.directory)
        check_sizes(self.directory, meta)
        vectors = load_array(self.directory / meta.generation / VECTORS_FILE, mmap=True)
        if vectors.shape != (meta.count, meta.dims) or vectors.dtype != np.float32:
            raise CairnError(
                f"{self.directory / meta.generation / VECTORS_FILE}: shape {vectors.shape} {vectors.dtype}, index.json "
                f"says ({meta.count}, {meta.dims}) float32; the index is damaged"
            )
        store = TextStore(self.directory / STORE_FILE)
        if store.count != meta.count:
            store.close()
            raise CairnError(f"{self.directory / STORE_FILE}: {store.count} texts, index.json says {meta.count}; the index is damaged")
        engine = open_engine(
            meta.config.engine,
            self.directory / meta.generation,
            meta.coarse_dims,
            meta.count,
            meta.config.shortlist,
            meta.config.milvus_uri,
            meta.engine_collection,
        )
        self.meta, self.vectors, self.store, self.engine = meta, vectors, store, engine
        self._stamp = self._meta_stamp()

    def _meta_stamp(self) -> tuple[int, int, int]:
        stat = os.stat(self.directory / META_FILE)
        return stat.st_ino, stat.st_mtime_ns, stat.st_size

    def refresh(self) -> bool:
        """Reopen if index.json was replaced (an upgrade finished); True when it was."""
        if self._meta_stamp() == self._stamp:
            return False
        old = (self.store, self.engine)
        self._open()
        for part in old:
            part.close()
        return True

    # ---- releases -----------------------------------------------------------------------------

    def release(self, release: Release | Path | str | None = None) -> Release:
        """The release to embed queries with: the one given, else the one the index was built with; refused unless compatible."""
        if isinstance(release, Release):
            check_release(self.meta, release)
            return release
        path = release if release is not None else self.meta.release.get("path")
        if not path or not Path(path).is_dir():
            raise CairnError(
                f"the release this index was built with ({path or 'unknown'}) is not there; pass a release "
                "(--release DIR) whose landmark set extends the index's"
            )
        key = str(Path(path).resolve())
        if key not in self._releases:
            self._releases[key] = as_release(path, self.device)
        check_release(self.meta, self._releases[key])
        return self._releases[key]

    # ---- search -------------------------------------------------------------------------------

    def search(
        self,
        queries: str | Sequence[str],
        k: int = 10,
        release: Release | Path | str | None = None,
        exact: bool = False,
        shortlist: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """For each query, up to `k` hits {"id", "text", "metadata", "score", "row"}, best first."""
        texts = [queries] if isinstance(queries, str) else list(queries)
        if not texts:
            raise CairnError("no query given")
        vectors = embed_queries(self.release(release), texts, self.meta.dims)
        rows, scores = self.search_vectors(vectors, k, exact=exact, shortlist=shortlist)
        results = []
        for row_list, score_list in zip(rows, scores):
            hits = self.store.rows([int(r) for r in row_list])
            results.append([{**hit, "score": round(float(s), 6), "row": int(r)} for hit, r, s in zip(hits, row_list, score_list)])
        return results[:1] if isinstance(queries, str) else results

    def search_vectors(
        self, queries: np.ndarray, k: int = 10, exact: bool = False, shortlist: int | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Rows and scores of the best `k` stored vectors for each (q, K) query vector (normalised here).

        `shortlist` overrides the index's candidate count for this call (more: higher recall, slower)."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise CairnError(f"k must be between 1 and {MAX_K}, got {k!r}")
        queries = l2_normalise(np.asarray(queries, dtype=np.float32)[:, : self.meta.dims])
        if exact:
            full = np.asarray(self.vectors)
            scores = queries @ full.T
            best = top_rows(scores, k)
            return list(best), list(np.take_along_axis(scores, best, axis=1))
        coarse = l2_normalise(queries[:, : self.meta.coarse_dims])
        candidates = self.engine.search(coarse, max(shortlist or self.meta.config.shortlist, k))
        rows_out, scores_out = [], []
        for query, candidate in zip(queries, candidates):
            candidate = np.unique(candidate[candidate >= 0])  # sorted: friendlier to the memory map
            scores = self.vectors[candidate] @ query
            order = np.argsort(-scores, kind="stable")[:k]
            rows_out.append(candidate[order])
            scores_out.append(scores[order])
        return rows_out, scores_out

    # ---- facts --------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        from cairn.index.upgrade import pending_upgrade

        meta = self.meta
        return {
            "path": str(self.directory),
            "documents": meta.count,
            "dims": meta.dims,
            "coarse_dims": meta.coarse_dims,
            "shortlist": meta.config.shortlist,
            "engine": meta.config.engine,
            "generation": meta.generation,
            "release": meta.release,
            "landmarks": {"version": meta.landmarks_version, "digest": meta.landmarks_digest},
            "bytes": sum(int(entry.get("bytes", 0)) for entry in meta.files.values()),
            "history": meta.history,
            "pending_upgrade": pending_upgrade(self.directory, meta.generation),
        }

    def verify(self) -> None:
        """Re-hash every file against index.json (slow on big indices: reads everything once)."""
        for name, entry in self.meta.files.items():
            if "sha256" in entry and file_digest(self.directory / name)["sha256"] != entry["sha256"]:
                raise CairnError(f"{self.directory / name}: SHA-256 differs from index.json; the file is damaged")

    def close(self) -> None:
        self.store.close()
        self.engine.close()

    def __enter__(self) -> "SearchIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_index(directory: Path | str, device: str = "auto") -> SearchIndex:
    """Open an index written by `build_index` (or `cairn index build`) for searching."""
    return SearchIndex(Path(directory), device)


def check_sizes(directory: Path, meta: IndexMeta) -> None:
    """Every file index.json lists exists with its recorded size: catches truncation and deletion at open, cheaply."""
    for name, entry in meta.files.items():
        path = directory / name
        if entry.get("directory"):
            if not path.is_dir():
                raise CairnError(f"{path}: missing; the index is incomplete")
            continue
        if not path.is_file():
            raise CairnError(f"{path}: missing; the index is incomplete")
        if path.stat().st_size != entry.get("bytes"):
            raise CairnError(f"{path}: {path.stat().st_size} bytes, index.json records {entry.get('bytes')}; the file is damaged")
