"""Does a compatibility term keep task heads working across releases? (issue 6, item 5; requested change 3)

    python bench/compat_loss.py [--weights 0,0.1,1] [--samples 20000]

Start: release N of bench/compatibility.py (WordNet, 20k samples). Training continues from N through the trainer
(`--start-from`), on the pairs in a new order, with a fresh optimizer and the trainer's warm-up, for
--samples samples to release N+1', then again to N+2' (whose parent is N+1'). The loss is the trainer's
absolute InfoNCE plus w x cairn.training.objective.compat_loss against the frozen parent release: the drift of this
encoder's cosines to the parent's anchors from the parent's own cosines, in the parent's per-anchor std. w = 0
is the control (same continuation, no term). The term is cairn.training.task's, as `cairn train --compat-with` uses it.

Reported per weight: the BBC logistic head on all 256 relational coordinates trained on N and scored on N+1'
and N+2' without retraining (ratio to its score on N on the benches' split, and its mean over 5 more splits;
goal >= 0.97), the head retrained on each release (the
quality that the term may cost), mean cosine of the releases' relational vectors on BBC, and gloss->lemma R@10.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import RUNS, Probe, Run, log, markdown_table, pyplot, recall_at_10, reference, save_plot, setup, write_outputs
from compatibility import release_path

from cairn.evaluation.compatibility import head_transfer
from cairn.protocol.embedder import encode_texts, load_bundle
from cairn.training.objective import compat_loss
from cairn.tasks.measures import row_cosine
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import ParentRelease

BUDGETS = [20000, 40000, 60000]  # bench/compatibility.py's releases; N is the first
GOAL = 0.97
RUN_FILE = "compat_run.json"
SPLITS = 5  # the BBC head's ratio also averaged over this many stratified 70/30 splits (one split's SE is about 0.05)


def mean_ratio(old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> float:
    """Head trained on `old` vectors, scored on `new` ones, ratio to its score on `old`: mean over SPLITS splits."""
    from sklearn.model_selection import train_test_split

    ratios = []
    for seed in range(SPLITS):
        tr, te = train_test_split(np.arange(len(labels)), test_size=0.3, random_state=100 + seed, stratify=labels)
        ratios.append(head_transfer(old[tr], old[te], new[te], labels[tr], labels[te])["head_ratio"])
    return float(np.mean(ratios))


def continue_training(parent_dir, out, weight: float, start_offset: int, samples: int, config: TrainingConfig) -> dict:
    """Train on from the parent release for `samples` more samples with the compat term at `weight`: the trainer's own
    loop (`cairn train --start-from PARENT --compat-with PARENT --compat-weight W`; w = 0: no term), on the pairs
    shuffled by `start_offset` (a new order for each step). The drift from the parent is measured afterwards."""
    from cairn.training.trainer import train

    if (out / RUN_FILE).exists():  # trained before: reuse it and what was measured while training it
        return json.loads((out / RUN_FILE).read_text())
    result = train(
        "wordnet",
        out,
        config,
        max_samples=samples,
        device="cpu",
        evaluate=False,
        show_progress=False,
        data_seed=start_offset,
        start_from=parent_dir,
        compat_with=parent_dir if weight > 0 else None,
        compat_weight=weight if weight > 0 else 1.0,
    )
    student, parent = load_bundle(out, "cpu"), ParentRelease(load_bundle(parent_dir, "cpu"))
    drift = final_drift(student.model, student.tokenizer, parent, reference())
    log(
        f"{out.name}: {result.samples} samples in {result.seconds:.0f}s, InfoNCE (last 50) {np.mean(result.recent_losses):.3f}, "
        f"drift from parent {drift:.3f}"
    )
    details = {"seconds": round(result.seconds, 1), "infonce_last50": float(np.mean(result.recent_losses)), "drift_from_parent": drift}
    (out / RUN_FILE).write_text(json.dumps(details))  # written last: its presence means the bundle is complete
    return details


@torch.no_grad()
def final_drift(model, tokenizer, parent: ParentRelease, texts: list[str]) -> float:
    """compat_loss of the trained encoder against the parent on `texts` (how far the anchor cosines moved, in std units)."""
    vectors = torch.from_numpy(encode_texts(model, tokenizer, texts))
    anchors = torch.from_numpy(encode_texts(model, tokenizer, parent.anchors))
    return float(compat_loss(vectors, anchors, parent.targets(texts), parent.std))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="0,0.1,1")
    parser.add_argument("--samples", type=int, default=20000, help="samples per release step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup(args.threads)
    started = time.perf_counter()
    config = TrainingConfig()
    base = release_path(BUDGETS, 0)
    base_samples = 20032  # where release N stopped (bench/compatibility.md)
    probe = Probe.load()
    tr, te, y = probe.train_idx, probe.test_idx, probe.bbc_labels
    n_run = Run(base)
    n_rel = n_run.shipped(probe.bbc_texts)
    nq = len(probe.queries)
    rows, details = [], {}
    for weight in [float(w) for w in args.weights.split(",")]:
        parent, chain = base, [n_run]
        training = []
        for step in (1, 2):
            out = RUNS / f"compat-w{weight:g}-{args.samples}-step{step}"
            training.append(continue_training(parent, out, weight, base_samples + (step - 1) * args.samples, args.samples, config))
            parent = out
            chain.append(Run(out))
        for step, later in ((1, chain[1]), (2, chain[2])):
            rel = later.shipped(probe.bbc_texts)
            transfer = head_transfer(n_rel[tr], n_rel[te], rel[te], y[tr], y[te])
            retrained = head_transfer(rel[tr], rel[te], rel[te], y[tr], y[te])["head_score_old"]
            wn = later.shipped(probe.wordnet_texts)
            averaged = mean_ratio(n_rel, rel, y)
            rows.append(
                [
                    weight,
                    f"N -> N+{step}'",
                    transfer["head_score_old"],
                    transfer["head_score_new"],
                    transfer["head_ratio"],
                    averaged,
                    "met" if averaged >= GOAL else "missed",
                    retrained,
                    row_cosine(n_rel, rel),
                    recall_at_10(wn[:nq], wn[nq:], probe.gold),
                    training[step - 1].get("infonce_last50"),
                    training[step - 1].get("drift_from_parent"),
                ]
            )
        details[f"w={weight:g}"] = training
    n_wn = n_run.shipped(probe.wordnet_texts)
    markdown = (
        f"Start: release N (tiny, 20k samples; R@10 {recall_at_10(n_wn[:nq], n_wn[nq:], probe.gold):.3f}); each step trains "
        f"{args.samples} more samples from the parent release with a fresh AdamW. BBC logistic head on 256 relational dims "
        "(70/30 split); chance 0.231.\n\n"
        + markdown_table(
            [
                "compat weight",
                "releases",
                "head acc on N",
                "head acc on later (no retraining)",
                "ratio",
                f"ratio, mean of {SPLITS} splits",
                "goal >= 0.97 (mean)",
                "head retrained on later",
                "relational cos with N (BBC)",
                "gloss->lemma R@10 of later",
                "InfoNCE, last 50 steps",
                "drift from its parent",
            ],
            rows,
        )
    )
    write_outputs("compat_loss", markdown, {"rows": rows, "training": details, "seconds": round(time.perf_counter() - started, 1)})
    plot(rows)


def plot(rows: list[list]) -> None:
    """Head ratio (mean of splits) and gloss->lemma R@10 against the compat weight, one line per release step."""
    plt = pyplot()
    if plt is None:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for step in ("N -> N+1'", "N -> N+2'"):
        chosen = [row for row in rows if row[1] == step]
        weights = [str(row[0]).rstrip("0").rstrip(".") for row in chosen]
        left.plot(weights, [row[5] for row in chosen], marker="o", label=step)
        right.plot(weights, [row[9] for row in chosen], marker="o", label=step)
    left.axhline(GOAL, color="grey", linestyle="--", linewidth=1, label="goal 0.97")
    left.set_title("head trained on N: score kept on the later release", fontsize=9)
    left.set_xlabel("compat weight w")
    left.set_ylabel("ratio (mean of 5 splits)")
    right.set_title("what it costs: gloss->lemma R@10 of the later release", fontsize=9)
    right.set_xlabel("compat weight w")
    right.set_ylabel("R@10")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    save_plot(figure, "compat-loss")


if __name__ == "__main__":
    main()
