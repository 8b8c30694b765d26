"""Cross-run stability: do two independently trained encoders give the same relational vectors?

    python bench/stability.py [--samples 30000]

Four tiny-model runs on WordNet with the default TrainingConfig and one shared landmark set (K=256):
  seed pair:   all training pairs; run A = init seed 0 in the trainer's order, run B = init seed 1 with the
               pairs shuffled by seed 1 (different initial weights, dropout and batch order)
  halves pair: corpus.shard(0, 2) with init seed 0 vs corpus.shard(1, 2) with init seed 1 (disjoint data)
For each pair, on held-out texts, relational (shipped standardised form, all 256 and the first 32
coordinates) vs absolute (the 128-d pooled vector):
  * mean cosine between A's and B's vectors of the same text (held-out WordNet glosses+lemmas; BBC articles)
  * per-coordinate Spearman over those texts (mean, median)
  * zero-shot stitching: a logistic head fit on A's BBC train-split vectors scored on B's test-split vectors,
    as a ratio of its score on A's own test vectors (both directions averaged)
  * cross-run gloss->lemma R@10: glosses embedded by B against lemmas embedded by A, vs within A
  * mutual kNN@10 between A and B (rotation-invariant: how alike the two geometries are, the ceiling)
Goals: relational mean cosine >= 0.9 and stitching >= 95 % of unstitched; absolute near 0 / near chance.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import (
    Probe,
    Run,
    log,
    markdown_table,
    probe_accuracy,
    pyplot,
    recall_at_10,
    reference,
    save_plot,
    setup,
    train_encoder,
    write_outputs,
)

from cairn.evaluation.alignment import mutual_knn
from cairn.tasks.measures import (
    coordinate_spearman,
    random_rotation,
    relational_view,
    row_cosine,
    spearman_summary,
    stitching,
)
from cairn.protocol.run_config import TrainingConfig

GOAL_COSINE, GOAL_STITCH = 0.9, 0.95
SHORT = {
    "seed pair (seed0 vs seed1)": "seed pair",
    "halves pair (shard 0/2 vs shard 1/2)": "disjoint halves",
    "control: seed0 vs seed0 rotated": "control:\nA vs A rotated",
}


class RotatedRun:
    """Control: run A's absolute space rotated by a random orthogonal matrix and scaled by 2.5, anchors included.

    The best case of retraining (same geometry, new coordinates): relational vectors are unchanged by
    construction, absolute ones are not. It checks the measurements on real vectors, not the encoder.
    """

    def __init__(self, base: Run, seed: int = 0):
        self.base = base
        self.rotation = 2.5 * random_rotation(base.embedder.model.config.d_model, seed)

    def absolute(self, texts: list[str]) -> np.ndarray:
        return (self.base.absolute(texts) @ self.rotation).astype(np.float32)

    def shipped(self, texts: list[str]) -> np.ndarray:
        return relational_view(self.absolute(texts), self.absolute(list(self.base.landmarks.anchors)), self.absolute(reference()))


def views(run: Run, texts: list[str]) -> dict[str, np.ndarray]:
    relational = run.shipped(texts)
    return {"relational": relational, "relational (first 32)": relational[:, :32], "absolute": run.absolute(texts)}


def compare(a: Run, b: Run, probe: Probe) -> list[dict]:
    wordnet_a, wordnet_b = views(a, probe.wordnet_texts), views(b, probe.wordnet_texts)
    bbc_a, bbc_b = views(a, probe.bbc_texts), views(b, probe.bbc_texts)
    nq = len(probe.queries)
    y, tr, te = probe.bbc_labels, probe.train_idx, probe.test_idx
    rows = []
    for view in wordnet_a:
        wa, wb, ba, bb = wordnet_a[view], wordnet_b[view], bbc_a[view], bbc_b[view]
        rho = spearman_summary(coordinate_spearman(wa, wb))
        forward = stitching(ba[tr], ba[te], bb[te], y[tr], y[te])
        backward = stitching(bb[tr], bb[te], ba[te], y[tr], y[te])
        rows.append(
            {
                "view": view,
                "cosine_wordnet": row_cosine(wa, wb),
                "cosine_bbc": row_cosine(ba, bb),
                "cosine_bbc_centred": row_cosine(ba - ba.mean(0), bb - bb.mean(0)),
                "spearman_mean": rho["mean"],
                "spearman_median": rho["median"],
                "head_own": (forward["head_score_old"] + backward["head_score_old"]) / 2,
                "head_stitched": (forward["head_score_new"] + backward["head_score_new"]) / 2,
                "stitch_ratio": (forward["head_ratio"] + backward["head_ratio"]) / 2,
                "chance": forward["chance"],
                "r10_within": (recall_at_10(wa[:nq], wa[nq:], probe.gold) + recall_at_10(wb[:nq], wb[nq:], probe.gold)) / 2,
                "r10_cross": (recall_at_10(wb[:nq], wa[nq:], probe.gold) + recall_at_10(wa[:nq], wb[nq:], probe.gold)) / 2,
                "mutual_knn10": mutual_knn(wa, wb, k=10),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30_000, help="training samples per run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup(args.threads)
    started = time.perf_counter()
    config = TrainingConfig()
    s = args.samples
    runs = {
        "seed0": train_encoder(f"stab-seed0-{s}", config, s, torch_seed=0),
        "seed1": train_encoder(f"stab-seed1-{s}", config, s, torch_seed=1, data_seed=1),
        "half0": train_encoder(f"stab-half0-{s}", config, s, torch_seed=0, shard=(0, 2)),
        "half1": train_encoder(f"stab-half1-{s}", config, s, torch_seed=1, shard=(1, 2)),
    }
    runs = {name: Run(path, name) for name, path in runs.items()}
    probe = Probe.load()
    log("measuring")
    quality = {
        name: {
            "bbc_probe": probe_accuracy(run.shipped(probe.bbc_texts), probe.bbc_labels),
            "r10": recall_at_10(run.shipped(probe.queries), run.shipped(probe.candidates), probe.gold),
        }
        for name, run in runs.items()
    }
    results = {
        "seed pair (seed0 vs seed1)": compare(runs["seed0"], runs["seed1"], probe),
        "halves pair (shard 0/2 vs shard 1/2)": compare(runs["half0"], runs["half1"], probe),
        "control: seed0 vs seed0 rotated": compare(runs["seed0"], RotatedRun(runs["seed0"]), probe),
    }

    header = [
        "pair",
        "view",
        "mean cos (WordNet)",
        "mean cos (BBC)",
        "BBC, centred",
        "coord. Spearman mean",
        "median",
        "head on own",
        "head stitched",
        "stitch ratio",
        "R@10 within",
        "R@10 cross-run",
        "mutual kNN@10",
    ]
    table_rows = []
    for pair, rows in results.items():
        for row in rows:
            table_rows.append(
                [
                    pair,
                    row["view"],
                    row["cosine_wordnet"],
                    row["cosine_bbc"],
                    row["cosine_bbc_centred"],
                    row["spearman_mean"],
                    row["spearman_median"],
                    row["head_own"],
                    row["head_stitched"],
                    row["stitch_ratio"],
                    row["r10_within"],
                    row["r10_cross"],
                    row["mutual_knn10"],
                ]
            )
    goals = []
    for pair, rows in results.items():
        if pair.startswith("control"):
            continue
        rel, ab = rows[0], rows[2]
        goals.append(
            [
                pair,
                rel["cosine_wordnet"],
                "met" if rel["cosine_wordnet"] >= GOAL_COSINE else "MISSED",
                rel["stitch_ratio"],
                "met" if rel["stitch_ratio"] >= GOAL_STITCH else "MISSED",
                ab["cosine_wordnet"],
                ab["head_stitched"],
                ab["chance"],
            ]
        )
    quality_rows = [[name, q["bbc_probe"], q["r10"]] for name, q in quality.items()]
    markdown = (
        f"Tiny model, WordNet, {s} samples per run (batch 64), default TrainingConfig (absolute InfoNCE; relational read-out), "
        f"K=256 shared landmarks. BBC: 2,225 articles, stratified 70/30 split for the heads; WordNet: 2,000 held-out glosses + "
        f"their lemmas. Stitching ratios average both directions (A->B, B->A). 'BBC, centred': each run's vectors minus their mean "
        f"over the articles first (BBC is far from the WordNet reference sample, so all its relational vectors share an offset "
        f"that inflates the plain cosine). The control row compares run A with itself after a random rotation and rescaling of "
        f"its absolute space (what retraining could do at best): it checks the measurements, not the encoders.\n\n"
        + markdown_table(header, table_rows)
        + "\nGoals (relational = all 256 coordinates):\n\n"
        + markdown_table(
            [
                "pair",
                "relational mean cos",
                "goal >= 0.9",
                "stitch ratio",
                "goal >= 0.95",
                "absolute mean cos",
                "absolute stitched acc",
                "chance",
            ],
            goals,
        )
        + "\nQuality of each run (relational, all 256): BBC 5-fold probe accuracy and gloss->lemma R@10:\n\n"
        + markdown_table(["run", "BBC probe", "R@10"], quality_rows)
    )
    name = "stability" if s == 30_000 else f"stability-{s}"  # other budgets keep the default's outputs
    plot(results, name)
    write_outputs(
        name, markdown, {"samples": s, "results": results, "quality": quality, "seconds": round(time.perf_counter() - started, 1)}
    )


def plot(results: dict, name: str) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    pairs = list(results)
    view_names = [row["view"] for row in results[pairs[0]]]
    width = 0.8 / len(view_names)
    for metric, axis, title in (
        ("cosine_wordnet", axes[0], "mean cosine between runs (held-out WordNet)"),
        ("stitch_ratio", axes[1], "zero-shot stitching (BBC head, ratio to own)"),
    ):
        for i, view in enumerate(view_names):
            values = [next(r[metric] for r in results[p] if r["view"] == view) for p in pairs]
            axis.bar(np.arange(len(pairs)) + i * width, values, width, label=view)
        axis.axhline(GOAL_COSINE if metric == "cosine_wordnet" else GOAL_STITCH, color="black", linestyle="--", linewidth=1, label="goal")
        axis.set_xticks(np.arange(len(pairs)) + width * (len(view_names) - 1) / 2, [SHORT.get(p, p) for p in pairs])
        axis.set_title(title, fontsize=10)
        axis.set_ylim(min(0, axis.get_ylim()[0]), 1.05)
    axes[1].legend(fontsize=8, loc="lower right")
    save_plot(figure, name)


if __name__ == "__main__":
    main()
