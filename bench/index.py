"""`cairn index` measured: coarse-to-fine vs exact full-K search, upgrade without re-embedding, latency, build, memory.

Two releases of the tiny static encoder on WordNet, trained here (cached in bench/out/runs):
  N    `cairn train` defaults for --samples-n samples;
  N+1  continues N (--start-from) for --samples-more samples with landmark set v2 = v1 + 64 anchors (append-only).
Corpus: every WordNet gloss and lemma text the corpus holds plus the BBC News articles (deduplicated), capped by --docs
(a seeded sample when --docs is smaller). These are 314,580 distinct texts; a corpus with 1M real distinct texts is not
shipped, so a larger --docs adds *composed* documents after all of them: each is 2 or 3 pieces (count and pieces drawn
with numpy default_rng(1)) joined with "; ", the pieces drawn uniformly from the distinct WordNet texts and the BBC
articles' sentences (split at . ! ? and line breaks); a composition already present is skipped. They are distinct texts
of the corpus's vocabulary and realistic length, not new content: what they give the bench is the number of stored
vectors (recall is measured against exact search over the same vectors, not against labels).

Rows, side by side in one run:
  1. coarse-to-fine (hnswlib shortlist on the first k coordinates, re-rank with all K) against exact full-K brute
     force over the same index: recall@10 (exact's top 10 as truth) and single-query throughput, for several k;
  2. upgrade without re-embedding: held-out gloss->lemma retrieval, lemmas indexed with N, glosses embedded with N+1,
     against an index re-embedded with N+1; the absolute (encoder output) vectors as the contrast;
  3. query latency p50/p99 (the search call, and the search plus embedding the query), build throughput
     (embedding and index writing separately, timed inside the one build_index call), bytes per stored vector on disk
     (per file), peak resident memory of this process (ru_maxrss, the build included), and the resident memory a fresh
     process adds by opening the index and running the queries, then by paging every stored vector in (/proc/self/status).
  4. sentence-transformers' `semantic_search` (exact, torch) on all-MiniLM-L6-v2 vectors: gloss->lemma R@10 on the
     same held-out pairs, and query latency over as many 384-dim vectors as the index holds (MiniLM embeddings of
     --minilm-docs documents, tiled to that count: brute-force search time does not depend on the values; embedding
     every document with MiniLM would take this machine most of an hour).
Usage: nice python bench/index.py [--docs 150000] [--queries 1000] [--minilm-docs 5000] [--latency-queries 200]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import resource
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT, OUT, RUNS, log, markdown_table, prepared, setup, wordnet  # noqa: E402

from cairn.index import Documents, IndexConfig, build_index, open_index  # noqa: E402
from cairn.protocol.embedder import encode_texts  # noqa: E402
from cairn.protocol.landmarks import l2_normalise  # noqa: E402
from cairn.tasks.api import open_release  # noqa: E402
from cairn.training.trainer import train  # noqa: E402

EXTRA_ANCHORS = 64


def landmarks_v2():
    """N's landmark set v1 with EXTRA_ANCHORS appended (append-only): the set every successor of N here carries."""
    _, v1 = prepared(DEFAULT)
    _, wider = prepared(replace(DEFAULT, landmarks=DEFAULT.landmarks + 2 * EXTRA_ANCHORS))
    return v1.extend([a for a in wider.anchors if a not in set(v1.anchors)][:EXTRA_ANCHORS])


def releases(samples_n: int, samples_more: int) -> tuple[Path, Path]:
    """Bundles N and N+1 (N+1 continues N with an append-only landmark set), trained once and cached."""
    n_dir, next_dir = RUNS / f"index-n-{samples_n}", RUNS / f"index-n1-{samples_n}-{samples_more}"
    if not (n_dir / "landmarks.json").exists():
        log(f"training release N ({samples_n} samples)")
        train("wordnet", n_dir, DEFAULT, max_samples=samples_n, device="cpu", evaluate=False, show_progress=False)
    if not (next_dir / "landmarks.json").exists():
        v2 = landmarks_v2()
        log(f"training release N+1 ({samples_more} more samples from N, landmark set v2: {v2.size} anchors)")
        train(
            "wordnet",
            next_dir,
            DEFAULT,
            max_samples=samples_more,
            device="cpu",
            evaluate=False,
            show_progress=False,
            landmarks=v2,
            start_from=n_dir,
        )
    return n_dir, next_dir


def corpus_texts(limit: int) -> tuple[list[str], int]:
    """`limit` distinct documents: the corpus's distinct texts (a seeded sample if fewer), then composed ones (docstring);
    and how many were composed."""
    from cairn.evaluation.data import load_bbc

    corpus = wordnet()
    wordnet_texts = [t for pair in list(corpus.train) + list(corpus.heldout) for t in (pair.a, pair.b)]
    articles = list(load_bbc().texts)
    texts = list(dict.fromkeys(wordnet_texts + articles))
    if len(texts) >= limit:
        rng = np.random.default_rng(0)
        return ([texts[i] for i in np.sort(rng.permutation(len(texts))[:limit])] if len(texts) > limit else texts), 0
    sentences = [s.strip() for article in articles for s in re.split(r"(?<=[.!?])\s+|\n+", article) if s.strip()]
    return texts + composed(list(dict.fromkeys(wordnet_texts + sentences)), set(texts), limit - len(texts)), limit - len(texts)


def composed(pieces: list[str], taken: set[str], count: int) -> list[str]:
    """`count` new distinct texts, each 2 or 3 seeded draws from `pieces` joined with "; ", none of them in `taken`."""
    rng, out = np.random.default_rng(1), []
    while len(out) < count:
        for size, picks in zip(rng.integers(2, 4, count), rng.integers(0, len(pieces), (count, 3))):
            text = "; ".join(pieces[i] for i in picks[:size])
            if text not in taken and len(out) < count:
                taken.add(text)
                out.append(text)
    return out


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def recall(found: list[np.ndarray], truth: list[np.ndarray], k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def per_query(index, vectors: np.ndarray, k: int, exact: bool, shortlist: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
    rows, seconds = [], []
    for vector in vectors:
        start = time.perf_counter()
        found, _ = index.search_vectors(vector[None, :], k, exact=exact, shortlist=shortlist)
        seconds.append(time.perf_counter() - start)
        rows.append(found[0])
    return rows, np.asarray(seconds)


def memory_kib() -> dict[str, int]:
    """This process's VmRSS, VmHWM, RssAnon and RssFile in KiB (/proc/self/status)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def search_memory(directory: Path, vectors: np.ndarray, shortlist: int) -> dict[str, dict[str, int]]:
    """Run in a fresh process: memory before opening the index, after the queries (coarse-to-fine), after paging in every vector."""
    before = memory_kib()
    with open_index(directory, "cpu") as index:
        per_query(index, vectors, 10, exact=False, shortlist=shortlist)
        searched = memory_kib()
        float(np.asarray(index.vectors).sum())
        paged = memory_kib()
    return {"before_open": before, "after_queries": searched, "all_vectors_paged_in": paged}


def gloss_lemma_recall(index_vectors: np.ndarray, query_vectors: np.ndarray, gold_rows: list[set[int]]) -> float:
    scores = l2_normalise(query_vectors) @ l2_normalise(index_vectors).T
    top = np.argsort(-scores, axis=1)[:, :10]
    return float(np.mean([bool(set(row.tolist()) & gold) for row, gold in zip(top, gold_rows)]))


def minilm_rows(texts: list[str], queries: list[str], lemmas: list[str], glosses: list[str], gold: list[set[int]], sample: int) -> dict:
    """all-MiniLM-L6-v2 with sentence-transformers' semantic_search: quality on gloss->lemma, latency at the index's size."""
    import torch
    from sentence_transformers.util import semantic_search

    from cairn.evaluation.reference import minilm_embed_fn

    embed = minilm_embed_fn()
    lemma_vectors = torch.from_numpy(embed(lemmas))
    hits = semantic_search(torch.from_numpy(embed(glosses)), lemma_vectors, top_k=10)
    r10 = float(np.mean([bool({h["corpus_id"] for h in found} & truth) for found, truth in zip(hits, gold)]))
    base, embed_seconds = timed(embed, texts[:sample])
    corpus = torch.from_numpy(np.tile(base, (-(-len(texts) // len(base)), 1))[: len(texts)])
    query_vectors = torch.from_numpy(embed(queries))
    search_seconds, total_seconds = [], []
    for text, vector in zip(queries, query_vectors):
        start = time.perf_counter()
        semantic_search(vector[None, :], corpus, top_k=10)
        search_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        semantic_search(torch.from_numpy(embed([text])), corpus, top_k=10)
        total_seconds.append(time.perf_counter() - start)
    search_seconds, total_seconds = np.asarray(search_seconds), np.asarray(total_seconds)
    row = {
        "gloss_lemma_r10": r10,
        "embed_docs_per_s": sample / embed_seconds,
        "rows": len(texts),
        "search_qps": len(search_seconds) / search_seconds.sum(),
        "search_p50_ms": 1e3 * float(np.percentile(search_seconds, 50)),
        "search_p99_ms": 1e3 * float(np.percentile(search_seconds, 99)),
        "end_to_end_p50_ms": 1e3 * float(np.percentile(total_seconds, 50)),
        "end_to_end_p99_ms": 1e3 * float(np.percentile(total_seconds, 99)),
        "bytes_per_vector": 4 * corpus.shape[1],
    }
    log(f"minilm {row}")
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=150_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--samples-n", type=int, default=100_000)
    parser.add_argument("--samples-more", type=int, default=50_000)
    parser.add_argument("--coarse", default="32,64,96", help="coarse prefix widths k to build")
    parser.add_argument("--minilm-docs", type=int, default=5000, help="documents embedded with all-MiniLM-L6-v2 (0: skip)")
    parser.add_argument("--shortlists", default="100,200,400,800", help="candidate counts re-ranked with all K")
    parser.add_argument("--latency-queries", type=int, default=200, help="queries for end-to-end latency (Cairn and MiniLM)")
    args = parser.parse_args()
    setup(1)
    started = time.time()
    n_dir, next_dir = releases(args.samples_n, args.samples_more)
    release_n, release_next = open_release(n_dir, "cpu"), open_release(next_dir, "cpu")
    texts, composed_count = corpus_texts(args.docs)
    log(f"{len(texts)} documents (WordNet glosses and lemmas, BBC articles; {composed_count} of them composed)")
    documents = Documents(tuple(str(i) for i in range(len(texts))), tuple(texts), tuple({} for _ in texts), "wordnet+bbc")
    work = OUT / "index"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # ---- build: embedding, then writing (texts, vectors, graph) -------------------------------
    coarse_values = [int(k) for k in args.coarse.split(",")]
    embedded_at: list[float] = []  # build_index reports progress per batch: the last report ends the embedding
    build_start = time.perf_counter()
    index = build_index(
        release_n,
        documents,
        work / f"k{coarse_values[0]}",
        IndexConfig(coarse_dims=coarse_values[0]),
        progress=lambda done: embedded_at.append(time.perf_counter()) if done == len(texts) else None,
    )
    build_seconds, embed_seconds = time.perf_counter() - build_start, embedded_at[0] - build_start
    log(f"built in {build_seconds:.0f} s (embedding {embed_seconds:.0f} s)")
    disk_files = {str(p.relative_to(index.directory)): p.stat().st_size for p in index.directory.rglob("*") if p.is_file()}
    disk = sum(disk_files.values())
    rng = np.random.default_rng(1)
    query_texts = [texts[i] for i in rng.choice(len(texts), args.queries, replace=False)]
    query_vectors = l2_normalise(release_n.embedder.relational(query_texts))
    truth, exact_seconds = per_query(index, query_vectors, 10, exact=True)
    log(f"exact: {len(exact_seconds) / exact_seconds.sum():.1f} queries/s")
    rows_ctf = []
    for k in coarse_values:
        current = index if k == coarse_values[0] else build_index(release_n, documents, work / f"k{k}", IndexConfig(coarse_dims=k))
        float(np.asarray(current.vectors).sum())  # page the stored vectors in: the rows compare warm, not a cold disk
        for shortlist in [int(s) for s in args.shortlists.split(",")]:
            per_query(current, query_vectors[:20], 10, exact=False, shortlist=shortlist)
            found, seconds = per_query(current, query_vectors, 10, exact=False, shortlist=shortlist)
            rows_ctf.append(
                {
                    "k": k,
                    "shortlist": shortlist,
                    "recall@10": recall(found, truth),
                    "qps": len(seconds) / seconds.sum(),
                    "exact_qps": len(exact_seconds) / exact_seconds.sum(),
                    "speedup": exact_seconds.sum() / seconds.sum(),
                    "p50_ms": 1e3 * float(np.percentile(seconds, 50)),
                    "p99_ms": 1e3 * float(np.percentile(seconds, 99)),
                }
            )
            log(f"coarse k={k}: {rows_ctf[-1]}")
        if current is not index:
            current.close()
    end_to_end = []
    index.search(query_texts[0], k=10, release=release_n)  # the release is loaded once, not per query
    for text in query_texts[: args.latency_queries]:
        start = time.perf_counter()
        index.search(text, k=10, release=release_n)
        end_to_end.append(time.perf_counter() - start)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        memory = pool.submit(search_memory, index.directory, query_vectors, IndexConfig().shortlist).result()
    memory_per_vector = {
        stage: {name: 1024 * (value - memory["before_open"][name]) / len(texts) for name, value in kib.items()}
        for stage, kib in memory.items()
        if stage != "before_open"
    }
    log(f"search process memory, bytes per vector: {memory_per_vector}")

    # ---- upgrade without re-embedding: gloss -> lemma, held out -------------------------------
    pairs = [(g, l) for g, l in __import__("cairn.corpora.wordnet", fromlist=["x"]).heldout_gloss_lemma(wordnet())][:2000]
    lemmas = list(dict.fromkeys(lemma for _, lemma in pairs))
    position = {lemma: i for i, lemma in enumerate(lemmas)}
    glosses, gold = [g for g, _ in pairs], [{position[lemma]} for _, lemma in pairs]
    dims_n = release_n.landmarks.size
    rel = {
        "N index, N queries": (release_n.embedder.relational(lemmas), release_n.embedder.relational(glosses)),
        "N index, N+1 queries (no re-embedding)": (
            release_n.embedder.relational(lemmas),
            release_next.embedder.relational(glosses)[:, :dims_n],
        ),
        "re-embedded with N+1, N+1 queries": (release_next.embedder.relational(lemmas), release_next.embedder.relational(glosses)),
    }
    upgrade_rows = {name: gloss_lemma_recall(a, b, gold) for name, (a, b) in rel.items()}
    absolute = lambda release, items: encode_texts(release.embedder.model, release.embedder.tokenizer, items)
    upgrade_rows["absolute: N index, N+1 queries (contrast)"] = gloss_lemma_recall(
        absolute(release_n, lemmas), absolute(release_next, glosses), gold
    )
    upgrade_rows["chance (10 of the lemmas)"] = 10 / len(lemmas)
    ratio = upgrade_rows["N index, N+1 queries (no re-embedding)"] / upgrade_rows["re-embedded with N+1, N+1 queries"]
    log(f"upgrade rows {upgrade_rows}, ratio {ratio:.3f}")

    minilm = minilm_rows(texts, query_texts[: args.latency_queries], lemmas, glosses, gold, args.minilm_docs) if args.minilm_docs else None

    result = {
        "command": "nice -n 10 python bench/index.py " + " ".join(sys.argv[1:]),
        "documents": len(texts),
        "composed_documents": composed_count,
        "dims": dims_n,
        "dims_next": release_next.landmarks.size,
        "queries": args.queries,
        "coarse_to_fine": rows_ctf,
        "exact": {
            "qps": len(exact_seconds) / exact_seconds.sum(),
            "p50_ms": 1e3 * float(np.percentile(exact_seconds, 50)),
            "p99_ms": 1e3 * float(np.percentile(exact_seconds, 99)),
        },
        "build": {
            "seconds": build_seconds,
            "docs_per_s": len(texts) / build_seconds,
            "embed_seconds": embed_seconds,
            "embed_docs_per_s": len(texts) / embed_seconds,
            "write_seconds": build_seconds - embed_seconds,
        },
        "latency_end_to_end_ms": {
            "queries": len(end_to_end),
            "p50": 1e3 * float(np.percentile(end_to_end, 50)),
            "p99": 1e3 * float(np.percentile(end_to_end, 99)),
        },
        "disk_bytes_per_vector": disk / len(texts),
        "disk_bytes_per_vector_by_file": {name: size / len(texts) for name, size in disk_files.items()},
        "peak_rss_mib": rss_mib,
        "search_process_memory_kib": memory,
        "search_process_bytes_per_vector": memory_per_vector,
        "upgrade": upgrade_rows,
        "upgrade_ratio": ratio,
        "lemmas": len(lemmas),
        "glosses": len(glosses),
        "minilm": minilm,
        "seconds": time.time() - started,
        "load_average_end": os.getloadavg(),
        "blas": [{key: pool[key] for key in ("internal_api", "num_threads")} for pool in threadpool_info() if pool["user_api"] == "blas"],
    }
    index.close()
    (OUT / "index.json").write_text(json.dumps(result, indent=1))
    print(
        markdown_table(
            ["coarse k", "shortlist", "recall@10 vs exact", "queries/s", "exact queries/s", "speed-up", "p50 ms", "p99 ms"],
            [
                [r["k"], r["shortlist"], r["recall@10"], round(r["qps"]), round(r["exact_qps"]), r["speedup"], r["p50_ms"], r["p99_ms"]]
                for r in rows_ctf
            ],
        )
    )
    print(markdown_table(["gloss->lemma R@10", "value"], [[name, value] for name, value in upgrade_rows.items()] + [["ratio", ratio]]))
    print(
        json.dumps(
            {
                key: result[key]
                for key in (
                    "minilm",
                    "load_average_end",
                    "blas",
                    "exact",
                    "build",
                    "latency_end_to_end_ms",
                    "disk_bytes_per_vector",
                    "disk_bytes_per_vector_by_file",
                    "peak_rss_mib",
                    "search_process_bytes_per_vector",
                    "seconds",
                )
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
