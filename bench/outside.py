"""Outside reference: the evaluation suite for Cairn's encoder next to all-MiniLM-L6-v2 and TF-IDF+SVD, and how
alike their geometries are (mutual kNN@10).

    python bench/outside.py [--budgets 20000,40000,60000] [--release 2]

Cairn: release N+2 of bench/compatibility.py (tiny model, 60k WordNet samples), relational (prefixes 16..256)
and absolute. Reference rows (MiniLM, LSA = TF-IDF + TruncatedSVD 256) come from bench/out/reference.json,
written by bench/reference_baselines.py (run it first if absent; this script runs it for you).
Mutual kNN@10 (Huh et al. 2024) on held-out texts: the 2,000 held-out WordNet glosses, and a 500-article
BBC subsample (100 per topic; MiniLM embeds long articles slowly on 2 cores). Chance is about 10 / n.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
from common import (
    OUT,
    REPO,
    RUNS,
    Probe,
    Run,
    log,
    markdown_table,
    write_outputs,
)
from compatibility import release_from_arguments

from cairn.corpora.wordnet import heldout_gloss_lemma
from cairn.evaluation import METRICS, SuiteData, mutual_knn, run_suite
from cairn.evaluation.suite import subsample_articles

REFERENCE = OUT / "reference.json"
MINILM_CACHE = OUT / "minilm_vectors.npz"


def minilm_vectors(texts: list[str]) -> np.ndarray:
    """MiniLM embeddings, cached on disk by a digest of the texts."""
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    if MINILM_CACHE.exists():
        cached = np.load(MINILM_CACHE)
        if key in cached:
            return cached[key]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from reference_baselines import minilm_embed_fn

    log(f"MiniLM: embedding {len(texts)} texts")
    vectors = np.asarray(minilm_embed_fn()(texts), dtype=np.float32)
    existing = dict(np.load(MINILM_CACHE)) if MINILM_CACHE.exists() else {}
    np.savez(MINILM_CACHE, **existing, **{key: vectors})
    return vectors


def lsa_fn():
    from reference_baselines import lsa_embed_fn, wordnet_texts

    _, documents, _ = wordnet_texts()
    return lsa_embed_fn(documents + list(SuiteData.load().bbc.texts))


def main() -> None:
    path, _, budget = release_from_arguments(__doc__.split("\n\n")[0])
    started = time.perf_counter()
    run = Run(path)
    from cairn.tasks.api import open_release

    embedder = open_release(path, "cpu").embedder
    if not REFERENCE.exists():
        log("bench/out/reference.json absent: running bench/reference_baselines.py (about 5 minutes)")
        subprocess.run([sys.executable, str(REPO / "bench" / "reference_baselines.py"), "--out", str(REFERENCE)], check=True)
    reference = json.loads(REFERENCE.read_text())

    log("evaluation suite on the Cairn encoder")
    from common import wordnet

    report = run_suite(
        {"cairn relational": lambda t: embedder.relational(t)[:, :256], "cairn absolute": embedder.absolute},
        heldout_gloss_lemma(wordnet()),
        dims=(16, 32, 64, 128, 256),
        prefix_rows=("cairn relational",),
    )
    rows = []
    for name, views in [(k, v) for k, v in report.items() if k != "meta"] + [(k, v) for k, v in reference.items() if k != "meta"]:
        for view, scores in views.items():
            if name.startswith("lsa") and view not in ("32", "full"):
                continue
            rows.append([name, view] + [scores[m] for m in METRICS])

    log("mutual kNN@10")
    probe = Probe.load()
    bbc = subsample_articles(SuiteData.load().bbc, 100)
    sets = {"held-out WordNet glosses (2,000)": list(probe.queries), "BBC articles (500)": list(bbc.texts)}
    lsa = lsa_fn()
    seeds = [RUNS / "stab-seed0-30000", RUNS / "stab-seed1-30000"]
    knn_rows = []
    for set_name, texts in sets.items():
        mini = minilm_vectors(texts)
        ours_rel, ours_abs = run.shipped(texts)[:, :256], run.absolute(texts)
        lsa_vectors = lsa(texts)
        row = {
            "texts": set_name,
            "n": len(texts),
            "chance": 10 / (len(texts) - 1),
            "cairn rel vs MiniLM": mutual_knn(ours_rel, mini),
            "cairn abs vs MiniLM": mutual_knn(ours_abs, mini),
            "LSA vs MiniLM": mutual_knn(lsa_vectors, mini),
            "cairn rel vs LSA": mutual_knn(ours_rel, lsa_vectors),
            "cairn rel vs cairn abs": mutual_knn(ours_rel, ours_abs),
        }
        if all((s / "bench_run.json").exists() for s in seeds):
            row["cairn seed0 vs seed1 (30k, rel)"] = mutual_knn(Run(seeds[0]).shipped(texts), Run(seeds[1]).shipped(texts))
        knn_rows.append(row)
    knn_header = list(knn_rows[0])
    markdown = (
        f"Encoder: {path.name} ({budget} samples, tiny model: 2 layers, width 128, max 64 tokens). Reference rows from "
        "bench/out/reference.json (bench/reference_baselines.py). LSA rows at 32 and 256 (full) components only.\n\n"
        + markdown_table(["row", "view", "gloss→lemma R@1", "R@10", "SimLex ρ", "WordSim ρ", "BBC probe acc"], rows)
        + "\nMutual kNN@10 (cosine neighbours; 1 = same neighbourhoods, chance ≈ 10/n):\n\n"
        + markdown_table(knn_header, [[r.get(h) for h in knn_header] for r in knn_rows])
    )
    write_outputs(
        "outside",
        markdown,
        {"encoder": str(path), "suite": report, "mutual_knn": knn_rows, "seconds": round(time.perf_counter() - started, 1)},
    )


if __name__ == "__main__":
    main()
