"""What moves the stability and Matryoshka numbers: standardisation, anchor order, nested coordinates, relational loss.

    python bench/ablations.py [--samples 30000]

Pairs of tiny-model runs on WordNet (init seed 0 in the trainer's order vs init seed 1 with pairs shuffled by
seed 1, one shared landmark set per training recipe), each variant measured like bench/stability.py (mean
cosine between the runs on held-out WordNet texts, per-coordinate Spearman, BBC stitching ratio) and
bench/matryoshka.py (run A's BBC probe and gloss->lemma R@10 at all 256 coordinates, smallest k reaching
95 % of that). Variants:
  read-out only (same trained encoders, relational_weight 0 = the default objective):
    * standardised cosines (shipped) | raw cosines (standardisation off) | Gram-Schmidt nested coordinates
      (coordinate k = cosine with anchor k's component orthogonal to anchors 1..k-1, standardised; with a
      128-d encoder only the first 128 exist, the rest are 0)
    * anchors: farthest-point order (shipped) | the same anchors shuffled | 256 random anchors
  training (new runs; the relational Matryoshka InfoNCE term, batch-standardised, on prefixes 16..256):
    * relational_weight 1 with farthest-point landmarks | relational_weight 1 with random landmarks
      (TrainingConfig(landmark_order="random"): the order also shapes training)
The seed-0/seed-1 runs at relational_weight 0 are shared with bench/stability.py (same names, reused).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
from common import (
    Probe,
    Run,
    log,
    markdown_table,
    probe_accuracy,
    pyplot,
    recall_at_10,
    save_plot,
    setup,
    train_encoder,
    wordnet,
    write_outputs,
)

from cairn.protocol.landmarks import select_landmarks
from cairn.tasks.measures import (
    coordinate_spearman,
    row_cosine,
    smallest_k,
    spearman_summary,
    stitching,
)
from cairn.protocol.run_config import TrainingConfig

KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def measure(a: Run, b: Run, probe: Probe, view: str = "standardised", anchors: list[str] | None = None) -> dict:
    nq = len(probe.queries)
    wa, wb = a.relational(probe.wordnet_texts, view, anchors), b.relational(probe.wordnet_texts, view, anchors)
    ba, bb = a.relational(probe.bbc_texts, view, anchors), b.relational(probe.bbc_texts, view, anchors)
    y, tr, te = probe.bbc_labels, probe.train_idx, probe.test_idx
    forward, backward = stitching(ba[tr], ba[te], bb[te], y[tr], y[te]), stitching(bb[tr], bb[te], ba[te], y[tr], y[te])
    bbc_curve = {k: probe_accuracy(ba[:, :k], y) for k in KS}
    r10_curve = {k: recall_at_10(wa[:nq, :k], wa[nq:, :k], probe.gold) for k in KS}
    return {
        "cosine": row_cosine(wa, wb),
        "spearman": spearman_summary(coordinate_spearman(wa, wb))["mean"],
        "cosine_centred": row_cosine(wa - wa.mean(0), wb - wb.mean(0)),
        "head_own": (forward["head_score_old"] + backward["head_score_old"]) / 2,
        "head_stitched": (forward["head_score_new"] + backward["head_score_new"]) / 2,
        "stitch_ratio": (forward["head_ratio"] + backward["head_ratio"]) / 2,
        "stitch_ratio_32": _stitch32(ba, bb, y, tr, te),
        "bbc": bbc_curve[256],
        "r10": r10_curve[256],
        "k95_bbc": smallest_k(bbc_curve, 0.95),
        "k95_r10": smallest_k(r10_curve, 0.95),
        "bbc_curve": bbc_curve,
        "r10_curve": r10_curve,
    }


def _stitch32(ba, bb, y, tr, te) -> float:
    forward = stitching(ba[tr, :32], ba[te, :32], bb[te, :32], y[tr], y[te])
    backward = stitching(bb[tr, :32], bb[te, :32], ba[te, :32], y[tr], y[te])
    return (forward["head_ratio"] + backward["head_ratio"]) / 2


def absolute_row(a: Run, b: Run, probe: Probe) -> dict:
    nq = len(probe.queries)
    wa, wb = a.absolute(probe.wordnet_texts), b.absolute(probe.wordnet_texts)
    ba, bb = a.absolute(probe.bbc_texts), b.absolute(probe.bbc_texts)
    y, tr, te = probe.bbc_labels, probe.train_idx, probe.test_idx
    forward, backward = stitching(ba[tr], ba[te], bb[te], y[tr], y[te]), stitching(bb[tr], bb[te], ba[te], y[tr], y[te])
    return {
        "cosine": row_cosine(wa, wb),
        "cosine_centred": row_cosine(wa - wa.mean(0), wb - wb.mean(0)),
        "spearman": spearman_summary(coordinate_spearman(wa, wb))["mean"],
        "head_own": (forward["head_score_old"] + backward["head_score_old"]) / 2,
        "head_stitched": (forward["head_score_new"] + backward["head_score_new"]) / 2,
        "stitch_ratio": (forward["head_ratio"] + backward["head_ratio"]) / 2,
        "stitch_ratio_32": None,
        "bbc": probe_accuracy(ba, y),
        "r10": recall_at_10(wa[:nq], wa[nq:], probe.gold),
        "k95_bbc": None,
        "k95_r10": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=30_000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup(args.threads)
    started = time.perf_counter()
    s = args.samples
    base = TrainingConfig()
    relational = replace(base, objective=replace(base.objective, relational_weight=1.0))
    relational_random = replace(relational, landmark_order="random")
    pairs = {
        "rw0": (
            train_encoder(f"stab-seed0-{s}", base, s, torch_seed=0),
            train_encoder(f"stab-seed1-{s}", base, s, torch_seed=1, data_seed=1),
        ),
        "rw1": (
            train_encoder(f"abl-rw1-seed0-{s}", relational, s, torch_seed=0),
            train_encoder(f"abl-rw1-seed1-{s}", relational, s, torch_seed=1, data_seed=1),
        ),
        "rw1-random": (
            train_encoder(f"abl-rw1random-seed0-{s}", relational_random, s, torch_seed=0),
            train_encoder(f"abl-rw1random-seed1-{s}", relational_random, s, torch_seed=1, data_seed=1),
        ),
    }
    runs = {key: (Run(a), Run(b)) for key, (a, b) in pairs.items()}
    probe = Probe.load()
    shipped = list(runs["rw0"][0].landmarks.anchors)
    shuffled = [shipped[i] for i in np.random.default_rng(0).permutation(len(shipped))]
    random_set = list(select_landmarks(wordnet().landmark_candidates(seed=0), 256, "random", seed=0).anchors)
    variants = [
        ("relational_weight 0 (default)", "standardised (shipped)", "farthest-point (shipped)", "rw0", "standardised", None),
        ("relational_weight 0 (default)", "raw cosines (standardisation off)", "farthest-point (shipped)", "rw0", "raw", None),
        ("relational_weight 0 (default)", "Gram-Schmidt nested, standardised", "farthest-point (shipped)", "rw0", "gram_schmidt", None),
        ("relational_weight 0 (default)", "standardised (shipped)", "same anchors shuffled", "rw0", "standardised", shuffled),
        ("relational_weight 0 (default)", "standardised (shipped)", "256 random anchors", "rw0", "standardised", random_set),
        ("relational_weight 1", "standardised (shipped)", "farthest-point (shipped)", "rw1", "standardised", None),
        ("relational_weight 1", "raw cosines (standardisation off)", "farthest-point (shipped)", "rw1", "raw", None),
        ("relational_weight 1", "Gram-Schmidt nested, standardised", "farthest-point (shipped)", "rw1", "gram_schmidt", None),
        (
            "relational_weight 1, landmark_order=random",
            "standardised (shipped)",
            "random (trained with)",
            "rw1-random",
            "standardised",
            None,
        ),
    ]
    results = []
    for training, readout, anchors_name, key, view, anchors in variants:
        log(f"measuring {training} / {readout} / {anchors_name}")
        row = measure(*runs[key], probe, view, anchors)
        results.append({"training": training, "readout": readout, "anchors": anchors_name, **row})
    for key, label in (("rw0", "relational_weight 0 (default)"), ("rw1", "relational_weight 1")):
        results.append({"training": label, "readout": "(contrast) absolute 128-d", "anchors": "-", **absolute_row(*runs[key], probe)})
    losses = {
        key: [__import__("json").loads((r.directory / "bench_run.json").read_text())["train_loss_last50"] for r in pair]
        for key, pair in runs.items()
    }

    header = [
        "training",
        "read-out",
        "anchors",
        "mean cos (seeds)",
        "centred",
        "coord. Spearman",
        "head own",
        "head stitched",
        "stitch ratio",
        "stitch ratio @32",
        "BBC probe",
        "R@10",
        "k95 BBC",
        "k95 R@10",
    ]
    rows = [
        [
            r["training"],
            r["readout"],
            r["anchors"],
            r["cosine"],
            r["cosine_centred"],
            r["spearman"],
            r["head_own"],
            r["head_stitched"],
            r["stitch_ratio"],
            r["stitch_ratio_32"],
            r["bbc"],
            r["r10"],
            r["k95_bbc"] if r["k95_bbc"] is not None else "-",
            r["k95_r10"] if r["k95_r10"] is not None else "-",
        ]
        for r in results
    ]
    markdown = (
        f"Tiny model, WordNet, {s} samples per run (batch 64), two runs per training recipe (seed 0 / seed 1 + shuffled order). "
        "'mean cos', 'coord. Spearman': between the two runs on held-out WordNet texts (2,000 glosses + lemmas); 'stitch ratio': BBC "
        "logistic head fit on one run, scored on the other, ratio to its own score (both directions averaged), also on the first 32 "
        "coordinates ('head own' / 'head stitched': the accuracies behind it on the 30 % test split; chance 0.231, and a ratio "
        "between two chance-level heads means nothing); 'centred': cosine after subtracting each run's mean vector over the texts "
        "(raw cosines share a large offset); 'BBC probe', 'R@10': run A (seed 0) at all 256 coordinates; k95: smallest k with 95 % of that run's own full "
        "score.\n\n"
        + markdown_table(header, rows)
        + "\nTraining loss (last 50 steps, absolute + relational terms where on): "
        + ", ".join(f"{k}: {v[0]} / {v[1]}" for k, v in losses.items())
        + "\n"
    )
    plot(results)
    write_outputs(
        "ablations", markdown, {"samples": s, "results": results, "losses": losses, "seconds": round(time.perf_counter() - started, 1)}
    )


def plot(results: list[dict]) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for r in results:
        if "bbc_curve" not in r:
            continue
        label = f"{r['training'].replace(' (default)', '')} | {r['readout'].split(' (')[0]} | {r['anchors'].split(' (')[0]}"
        for metric, axis in (("bbc_curve", axes[0]), ("r10_curve", axes[1])):
            ks = sorted(r[metric])
            axis.plot(
                ks,
                [r[metric][k] for k in ks],
                marker="o",
                markersize=2,
                label=label,
                linestyle="-" if r["training"].startswith("relational_weight 0") else "--",
            )
    for axis, title in ((axes[0], "BBC probe accuracy (run A)"), (axes[1], "gloss->lemma R@10 (run A)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("k (first coordinates)")
        axis.set_title(title, fontsize=10)
    axes[1].legend(fontsize=6, loc="upper left")
    save_plot(figure, "ablations")


if __name__ == "__main__":
    main()
