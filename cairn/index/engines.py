"""Where the coarse prefix lives: the approximate shortlist of coarse-to-fine search.

Three engines answer one question, "which `count` rows have the largest inner product with this coarse query":
  hnswlib  the embedded default, an HNSW graph in one file (bench/ann_libraries.py: at equal recall@100, 0.99,
           it built 1.6x faster than usearch and 2.6x faster than faiss-cpu's HNSW, with the lowest p50 and p99;
           docs/architecture.md has the numbers);
  exact    numpy brute force over the prefix: no graph, exact shortlist; for small corpora and as a reference;
  milvus   the path to a distributed engine: the same pymilvus calls talk to milvus-lite (a file inside the index,
           what the tests exercise) or to a Milvus cluster (`milvus_uri`), for corpora that outgrow one machine.
No engine is written by hand: the reranking with all K coordinates happens outside, in cairn/index/index.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from cairn.index.files import atomic_path, load_array, save_array
from cairn.protocol.errors import CairnError

HNSW_M = 16  # graph degree and build effort from bench/ann_libraries.py (recall@100 0.99 on a 64-dim prefix)
HNSW_EF_CONSTRUCTION = 128
HNSW_EF_SEARCH = 128
MILVUS_COLLECTION = "cairn_coarse"
MILVUS_BATCH = 5_000


class CoarseEngine(Protocol):
    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        """(q, count) row numbers, best first; -1 pads when fewer rows exist."""

    def close(self) -> None: ...


def engine_file(engine: str) -> str:
    """The file name of an engine's data inside a generation directory."""
    return {"hnswlib": "coarse.hnsw", "exact": "coarse.npy", "milvus": "coarse.milvus.db"}[engine]


def build_engine(engine: str, directory: Path, vectors: np.ndarray, milvus_uri: str = "", collection: str = MILVUS_COLLECTION) -> None:
    """Write the engine's data for the coarse `vectors` (n, k), L2-normalised, row i = document row i."""
    target = directory / engine_file(engine)
    if engine == "exact":
        save_array(target, vectors)
    elif engine == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=vectors.shape[1])
        index.init_index(max_elements=max(len(vectors), 1), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION, random_seed=0)
        index.add_items(vectors, np.arange(len(vectors)), num_threads=1)  # one thread: deterministic, and the box is shared
        with atomic_path(target) as temporary:
            index.save_index(str(temporary))
    elif engine == "milvus":
        _build_milvus(target, vectors, milvus_uri, collection)
    else:
        raise CairnError(f"unknown engine {engine!r}")


def open_engine(
    engine: str, directory: Path, dims: int, count: int, shortlist: int, milvus_uri: str = "", collection: str = MILVUS_COLLECTION
) -> CoarseEngine:
    path = directory / engine_file(engine)
    if engine == "exact":
        return ExactEngine(load_array(path, mmap=True))
    if engine == "hnswlib":
        return HnswEngine(path, dims, count, shortlist)
    if engine == "milvus":
        return MilvusEngine(path, milvus_uri, collection)
    raise CairnError(f"unknown engine {engine!r}")


class ExactEngine:
    """Brute-force inner products over the whole prefix matrix."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        return top_rows(queries @ np.asarray(self.vectors).T, count)

    def close(self) -> None:
        pass


class HnswEngine:
    """An hnswlib graph loaded from its file; a damaged file is one CairnError line."""

    def __init__(self, path: Path, dims: int, count: int, shortlist: int):
        import hnswlib

        if not path.is_file():
            raise CairnError(f"{path}: missing; the index is incomplete")
        self.index = hnswlib.Index(space="ip", dim=dims)
        try:
            self.index.load_index(str(path), max_elements=max(count, 1))
        except (RuntimeError, ValueError, MemoryError) as error:
            raise CairnError(f"{path}: not a readable HNSW graph ({error})") from None
        if self.index.get_current_count() != count:
            raise CairnError(f"{path}: holds {self.index.get_current_count()} vectors, the index has {count}; the file is damaged")
        self.index.set_num_threads(1)
        self.index.set_ef(max(HNSW_EF_SEARCH, shortlist))
        self.count = count

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        count = min(count, self.count)
        self.index.set_ef(max(HNSW_EF_SEARCH, count))
        labels, _ = self.index.knn_query(np.ascontiguousarray(queries, dtype=np.float32), k=count)
        return labels.astype(np.int64)

    def close(self) -> None:
        pass


class MilvusEngine:
    """A pymilvus client on milvus-lite (the file) or on a Milvus server (`uri`)."""

    def __init__(self, path: Path, uri: str, collection: str):
        from pymilvus import MilvusClient

        if not uri and not path.exists():
            raise CairnError(f"{path}: missing; the index is incomplete")
        self.client = MilvusClient(uri or str(path))
        self.lite_path = None if uri else path
        self.collection = collection
        if not self.client.has_collection(collection):
            self.close()
            raise CairnError(f"milvus at {uri or path} has no collection {collection!r}; the index is incomplete")
        self.client.load_collection(collection)

    def search(self, queries: np.ndarray, count: int) -> np.ndarray:
        results = self.client.search(self.collection, data=[q.tolist() for q in queries], limit=count, search_params={"metric_type": "IP"})
        rows = np.full((len(queries), count), -1, dtype=np.int64)
        for i, hits in enumerate(results):
            ids = [hit["id"] for hit in hits][:count]
            rows[i, : len(ids)] = ids
        return rows

    def close(self) -> None:
        _close(self.client, self.lite_path)


def _close(client, lite_path: Path | None) -> None:
    """Close a pymilvus client; for milvus-lite also stop its in-process server, which otherwise keeps the
    database's lock until the process exits (a second open of the same files, e.g. after a rename, would fail)."""
    client.close()
    if lite_path is not None:
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(lite_path))


def _build_milvus(target: Path, vectors: np.ndarray, uri: str, collection: str) -> None:
    """Fill a milvus-lite database (a directory, built in place: the generation around it becomes visible only when
    complete, see cairn/index/upgrade.py) or a server collection (then `target` is a marker file naming it)."""
    import shutil

    from pymilvus import MilvusClient

    if target.is_dir():
        shutil.rmtree(target)  # a half-built one from an interrupted run
    target.unlink(missing_ok=True)
    client = MilvusClient(uri or str(target))
    try:
        if client.has_collection(collection):
            client.drop_collection(collection)
        client.create_collection(collection, dimension=vectors.shape[1], metric_type="IP", auto_id=False)
        for start in range(0, len(vectors), MILVUS_BATCH):
            chunk = vectors[start : start + MILVUS_BATCH]
            client.insert(collection, [{"id": start + i, "vector": row.tolist()} for i, row in enumerate(chunk)])
        client.flush(collection)
    finally:
        _close(client, None if uri else target)
    if uri:
        target.write_text(f"{uri}\n{collection}\n")  # a marker: the data lives on the server


def top_rows(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` largest scores per row, best first (argpartition, then a sort of the few)."""
    count = min(count, scores.shape[1])
    if count < scores.shape[1]:
        part = np.argpartition(-scores, count - 1, axis=1)[:, :count]
    else:
        part = np.tile(np.arange(scores.shape[1]), (len(scores), 1))
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)
