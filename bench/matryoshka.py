"""Matryoshka prefixes: how good are the first k relational coordinates?

    python bench/matryoshka.py [--budgets 20000,40000,60000] [--release 2]

Encoder: release N+2 of bench/compatibility.py (one trainer run, 60k samples; trained if absent). Scored at
k = 1, 2, 4, ..., 256 on the BBC topic probe (5-fold logistic regression, 2,225 articles) and held-out
gloss->lemma R@10 (2,000 glosses), each prefix re-L2-normalised:
  * relational, shipped landmark order (farthest-point over a TF-IDF view)
  * relational, the same 256 anchors in a random order (ordering alone)
  * relational, 256 randomly chosen anchors (select_landmarks(..., "random"), i.e. landmark_order="random")
  * absolute, PCA-k of the 128-d pooled vector (fit on the evaluated texts): the upper bound for k coordinates
  * absolute, first k coordinates (no ordering at all)
Reported: the smallest k reaching 95 % of the full (256-coordinate, shipped order) score. Goal: k <= K/8 = 32.
"""

from __future__ import annotations

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
    wordnet,
    write_outputs,
)
from compatibility import release_from_arguments

from cairn.protocol.landmarks import select_landmarks
from cairn.tasks.measures import pca_projection, smallest_k

KS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GOAL_K = 32


def curves_for(run: Run, probe: Probe, anchor_sets: dict[str, list[str]]) -> dict[str, dict[str, dict[int, float]]]:
    """{curve name: {"bbc": {k: acc}, "r10": {k: recall}}}."""
    nq = len(probe.queries)
    curves: dict[str, dict[str, dict[int, float]]] = {}
    for name, anchors in anchor_sets.items():
        bbc = run.relational(probe.bbc_texts, anchors=anchors)
        wn = run.relational(probe.wordnet_texts, anchors=anchors)
        curves[name] = {
            "bbc": {k: probe_accuracy(bbc[:, :k], probe.bbc_labels) for k in KS},
            "r10": {k: recall_at_10(wn[:nq, :k], wn[nq:, :k], probe.gold) for k in KS},
        }
        log(f"{name}: BBC {curves[name]['bbc'][256]:.3f}, R@10 {curves[name]['r10'][256]:.3f} at 256")
    bbc_abs, wn_abs = run.absolute(probe.bbc_texts), run.absolute(probe.wordnet_texts)
    width = bbc_abs.shape[1]
    ks = [k for k in KS if k <= width]
    bbc_pca, wn_pca = pca_projection(bbc_abs, width), pca_projection(wn_abs, width)
    curves["absolute PCA-k (upper bound)"] = {
        "bbc": {k: probe_accuracy(bbc_pca[:, :k], probe.bbc_labels) for k in ks},
        "r10": {k: recall_at_10(wn_pca[:nq, :k], wn_pca[nq:, :k], probe.gold) for k in ks},
    }
    curves["absolute first-k"] = {
        "bbc": {k: probe_accuracy(bbc_abs[:, :k], probe.bbc_labels) for k in ks},
        "r10": {k: recall_at_10(wn_abs[:nq, :k], wn_abs[nq:, :k], probe.gold) for k in ks},
    }
    return curves


def anchor_variants(run: Run) -> dict[str, list[str]]:
    shipped = list(run.landmarks.anchors[:256])
    shuffled = [shipped[i] for i in np.random.default_rng(0).permutation(len(shipped))]
    random_set = select_landmarks(wordnet().landmark_candidates(seed=0), 256, "random", seed=0).anchors
    return {
        "relational, farthest-point order (shipped)": shipped,
        "relational, same anchors shuffled": shuffled,
        "relational, random anchors": list(random_set),
    }


def tables(curves: dict, reference_name: str) -> tuple[str, dict]:
    full = {metric: curves[reference_name][metric][256] for metric in ("bbc", "r10")}
    summary = {}
    out = ""
    for metric, title in (("bbc", "BBC probe accuracy (chance 0.23)"), ("r10", "gloss->lemma R@10")):
        rows = []
        for name, curve in curves.items():
            c = curve[metric]
            k95 = smallest_k(c, 0.95, full=full[metric])
            summary.setdefault(name, {})[metric] = k95
            rows.append([name] + [c.get(k) for k in KS] + [k95 if k95 is not None else "not reached"])
        out += f"\n{title} at k coordinates; last column: smallest k reaching 95 % of the shipped full score ({full[metric]:.3f}):\n\n"
        out += markdown_table(["curve"] + [str(k) for k in KS] + ["k95"], rows)
    return out, summary


def main() -> None:
    path, _, budget = release_from_arguments(__doc__.split("\n\n")[0])
    started = time.perf_counter()
    run = Run(path)
    probe = Probe.load()
    reference()  # warm the calibration sample
    curves = curves_for(run, probe, anchor_variants(run))
    shipped_name = "relational, farthest-point order (shipped)"
    # the read-out must equal the release API's vectors (same anchors, same calibration)
    check = float(np.abs(run.relational(probe.queries[:50])[:, :256] - run.shipped(probe.queries[:50])[:, :256]).max())
    text, summary = tables(curves, shipped_name)
    goal = [
        [metric, summary[shipped_name][metric], "met" if (summary[shipped_name][metric] or 10**9) <= GOAL_K else "MISSED"]
        for metric in ("bbc", "r10")
    ]
    markdown = (
        f"Encoder: {path.name} of bench/compatibility.py ({budget} samples, tiny model, WordNet, default config). "
        f"Read-out check: max |bench read-out - Embedder.relational| = {check:.2e}.\n"
        + text
        + "\nGoal: 95 % of the full score within the first K/8 = 32 coordinates (shipped order):\n\n"
        + markdown_table(["metric", "k95", "goal k <= 32"], goal)
    )
    plot(curves)
    write_outputs(
        "matryoshka",
        markdown,
        {
            "encoder": str(path),
            "curves": curves,
            "k95": summary,
            "readout_check": check,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


def plot(curves: dict) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for metric, axis, title in (("bbc", axes[0], "BBC topic probe accuracy"), ("r10", axes[1], "gloss->lemma R@10")):
        for name, curve in curves.items():
            ks = sorted(curve[metric])
            axis.plot(
                ks,
                [curve[metric][k] for k in ks],
                marker="o",
                markersize=3,
                label=name,
                linestyle="--" if name.startswith("absolute") else "-",
            )
        axis.axvline(GOAL_K, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("k (first coordinates)")
        axis.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    save_plot(figure, "matryoshka")


if __name__ == "__main__":
    main()
