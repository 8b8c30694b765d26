"""Which embedded ANN library backs `cairn index`: usearch, hnswlib and faiss-cpu (HNSW) side by side.

Same data, same HNSW parameters (M=16, efConstruction=128, efSearch=128), one thread, inner product on
L2-normalised vectors shaped like Cairn's coarse prefix (64 dims, clustered, low intrinsic rank).
Reports build throughput, query p50/p99 for a 100-candidate shortlist, recall@100 against exact search,
and the index's bytes per vector. Usage: nice python bench/ann_libraries.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

M, EF_CONSTRUCTION, EF_SEARCH, SHORTLIST = 16, 128, 128, 100


def data(n: int, dims: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(24, dims))
    centres = rng.normal(size=(200, 24))

    def draw(count: int) -> np.ndarray:
        latent = centres[rng.integers(0, len(centres), count)] + rng.normal(scale=0.7, size=(count, 24))
        x = latent @ basis + rng.normal(scale=0.3, size=(count, dims))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(queries)


def exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T
    return np.argsort(-scores, axis=1)[:, :k]


def run_usearch(vectors, queries):
    from usearch.index import Index

    index = Index(
        ndim=vectors.shape[1], metric="ip", dtype="f32", connectivity=M, expansion_add=EF_CONSTRUCTION, expansion_search=EF_SEARCH
    )
    start = time.perf_counter()
    index.add(np.arange(len(vectors)), vectors, threads=1)
    build = time.perf_counter() - start
    search = lambda q: index.search(q, SHORTLIST, threads=1).keys
    with tempfile.TemporaryDirectory() as d:
        index.save(os.path.join(d, "i"))
        size = os.path.getsize(os.path.join(d, "i"))
    return build, search, size


def run_hnswlib(vectors, queries):
    import hnswlib

    index = hnswlib.Index(space="ip", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), M=M, ef_construction=EF_CONSTRUCTION)
    index.set_num_threads(1)
    start = time.perf_counter()
    index.add_items(vectors, np.arange(len(vectors)))
    build = time.perf_counter() - start
    index.set_ef(EF_SEARCH)
    search = lambda q: index.knn_query(q, SHORTLIST)[0]
    with tempfile.TemporaryDirectory() as d:
        index.save_index(os.path.join(d, "i"))
        size = os.path.getsize(os.path.join(d, "i"))
    return build, search, size


def run_faiss(vectors, queries):
    import faiss

    faiss.omp_set_num_threads(1)
    index = faiss.IndexHNSWFlat(vectors.shape[1], M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = EF_CONSTRUCTION
    start = time.perf_counter()
    index.add(vectors)
    build = time.perf_counter() - start
    index.hnsw.efSearch = EF_SEARCH
    search = lambda q: index.search(q, SHORTLIST)[1]
    with tempfile.TemporaryDirectory() as d:
        faiss.write_index(index, os.path.join(d, "i"))
        size = os.path.getsize(os.path.join(d, "i"))
    return build, search, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    vectors, queries = data(args.n, args.dims, args.queries)
    truth = exact(vectors, queries, SHORTLIST)
    rows = {}
    for name, runner in (("usearch", run_usearch), ("hnswlib", run_hnswlib), ("faiss-cpu", run_faiss)):
        build, search, size = runner(vectors, queries)
        latencies, found = [], []
        for q in queries:
            start = time.perf_counter()
            keys = search(q[None, :])
            latencies.append(time.perf_counter() - start)
            found.append(np.asarray(keys).reshape(-1))
        recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / SHORTLIST for f, t in zip(found, truth)]))
        rows[name] = {
            "build_vectors_per_s": round(args.n / build),
            "p50_ms": round(1e3 * float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(1e3 * float(np.percentile(latencies, 99)), 3),
            f"recall@{SHORTLIST}": round(recall, 4),
            "bytes_per_vector": round(size / args.n, 1),
        }
        print(name, rows[name], flush=True)
    print(
        json.dumps(
            {
                "n": args.n,
                "dims": args.dims,
                "queries": args.queries,
                "M": M,
                "ef_construction": EF_CONSTRUCTION,
                "ef_search": EF_SEARCH,
                "rows": rows,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
