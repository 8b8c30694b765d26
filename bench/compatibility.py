"""Backward compatibility across releases: task models trained on release N keep working on N+1 and N+2.

    python bench/compatibility.py [--budgets 20000,40000,60000]

Releases N, N+1, N+2 (1.0.0, 1.1.0, 1.2.0) are checkpoints of ONE run of cairn.training.trainer.train (tiny model,
WordNet, default TrainingConfig) at increasing sample budgets, each packaged as a release directory with a
manifest (open_release verifies it). N+2 also appends 32 anchors to the landmark set (v2, K=288: an
append-only successor), so the task models exercise the prefix rule.

Measured on BBC News (2,225 articles, stratified 70/30 split) and held-out WordNet glosses:
  * task models (cairn.tasks: logreg on all 256 relational coordinates, logreg on the first 32, MLP on 256)
    trained on release N's vectors, saved, re-loaded against the later release's landmark set, and scored on
    the later release's vectors without retraining; ratio to the score on N. Reference: a model retrained on
    the later release. Contrast: the same logistic head on the absolute (pooled) vectors.
  * mean cosine between the releases' vectors of the same texts (relational: the shared 256 coordinates)
  * cross-release retrieval: gloss->lemma R@10 with the lemma index embedded by N and the glosses by the
    later release (vs both by the later release), and same-text R@1 (a text finds its own older vector)
Goal: >= 97 % of the head's score on N.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from common import (
    RUNS,
    Probe,
    Run,
    log,
    markdown_table,
    pyplot,
    recall_at_10,
    reference,
    save_plot,
    setup,
    wordnet,
    write_outputs,
)

from cairn.evaluation.compatibility import cross_retrieval, head_transfer
from cairn.protocol.embedder import calibrate, load_bundle
from cairn.protocol.landmarks import LandmarkSet
from cairn.releases.files import file_sha256
from cairn.releases.layout import REQUIRED_FILES
from cairn.releases.manifest import parse_manifest, write_manifest
from cairn.tasks import (
    evaluate_task_model,
    load_task_model,
    open_release,
    train_task_model,
)
from cairn.tasks.measures import row_cosine
from cairn.training.trainer import train
from cairn.protocol.run_config import TrainingConfig

GOAL = 0.97
EXTRA_ANCHORS = 32
HEADS = (("logreg", 256), ("logreg", 32), ("mlp", 256))


def build_releases(budgets: list[int], root: Path) -> list[Path]:
    """Train one run, packaging a release at each budget (cached: an existing release directory is kept)."""
    run_dir = root / "run"
    releases = []
    for i, budget in enumerate(budgets):
        version = f"1.{i}.0"
        target = root / version
        releases.append(target)
        if (target / "manifest.json").exists():
            continue
        log(f"training to {budget} samples for release {version}")
        result = train("wordnet", run_dir, TrainingConfig(), max_samples=budget, device="cpu", evaluate=False, show_progress=False)
        if not budget <= result.samples < budget + TrainingConfig().batch_size:  # the trainer stops after the batch reaching the budget
            raise SystemExit(f"{run_dir} is at {result.samples} samples, not {budget}: delete {root} and rerun")
        target.mkdir(parents=True, exist_ok=True)
        for name in REQUIRED_FILES:
            shutil.copy(run_dir / name, target / name)
        if i == 2:  # release N+2 ships landmark set v2 = v1 + 32 anchors (append-only)
            embedder = load_bundle(target, "cpu")
            v1 = LandmarkSet(embedder.landmarks.version, list(embedder.landmarks.anchors))
            extra = [t for t in dict.fromkeys(wordnet().landmark_candidates(seed=1)) if t not in set(v1.anchors)][:EXTRA_ANCHORS]
            calibrate(embedder.model, embedder.tokenizer, v1.extend(extra), reference()).save(target / "landmarks.json")
        files = {}
        for name in REQUIRED_FILES:
            sha256, length = file_sha256(target / name)
            files[name] = {"sha256": sha256, "length": length}
        landmarks = json.loads((target / "landmarks.json").read_text())
        document = {
            "version": version,
            "parent_version": f"1.{i - 1}.0" if i else None,
            "run_id": "bench-compatibility",
            "global_step": result.steps,
            "landmarks_version": landmarks["version"],
            "landmarks_digest": landmarks["digest"],
            "files": files,
            "metrics": {"samples": result.samples},
        }
        write_manifest(parse_manifest(json.dumps(document).encode()), target / "manifest.json")
    return releases


def releases_root(budgets: list[int]) -> Path:
    """Where build_releases keeps the releases for these budgets (shared by the benches that reuse them)."""
    return RUNS / ("releases-" + "-".join(map(str, budgets)))


def release_path(budgets: list[int], index: int) -> Path:
    """The directory of release `index` (0 = N) of these budgets, building all of them first if needed."""
    return build_releases(budgets, releases_root(budgets))[index]


def release_from_arguments(description: str) -> tuple[Path, int, int]:
    """The command line of the benches that measure one of these releases: (its path, its index, its budget).

    --budgets (the releases of this bench), --release (which one) and --threads; builds them if needed.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--budgets", default="20000,40000,60000", help="the releases of bench/compatibility.py")
    parser.add_argument("--release", type=int, default=2, help="which of them (0, 1, 2)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    return release_path(budgets, args.release), args.release, budgets[args.release]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="20000,40000,60000", help="samples seen by releases N, N+1, N+2")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup(args.threads)
    started = time.perf_counter()
    budgets = [int(b) for b in args.budgets.split(",")]
    if len(budgets) != 3:
        raise SystemExit("give three budgets (releases N, N+1, N+2)")
    root = releases_root(budgets)
    paths = build_releases(budgets, root)
    releases = [open_release(path, "cpu") for path in paths]
    runs = [Run(path) for path in paths]
    names = ["N", "N+1", "N+2"]
    probe = Probe.load()
    log("measuring")
    tr, te, y = probe.train_idx, probe.test_idx, probe.bbc_labels
    train_texts = [probe.bbc_texts[i] for i in tr]
    test_texts = [probe.bbc_texts[i] for i in te]
    y_train, y_test = [str(v) for v in y[tr]], [str(v) for v in y[te]]

    # task models through the public API: train on N (and N+1), save, re-load against a later release, evaluate
    heads: dict[str, dict] = {}
    for kind, dims in HEADS:
        key = f"{kind} on {dims} relational dims"
        heads[key] = {}
        for i, source in enumerate(releases):
            model = train_task_model(source, train_texts, y_train, dims=dims, kind=kind)
            model_dir = root / "task-models" / f"{kind}-{dims}-from-{names[i]}"
            model.save(model_dir)
            for j in range(i, len(releases)):
                loaded = load_task_model(model_dir, releases[j].landmarks)  # refuses an incompatible landmark set
                heads[key][(names[i], names[j])] = evaluate_task_model(loaded, releases[j], test_texts, y_test)
    absolute: dict = {}
    for i in range(len(runs)):
        for j in range(i, len(runs)):
            a_all, b_test = runs[i].absolute(probe.bbc_texts), runs[j].absolute(test_texts)
            absolute[(names[i], names[j])] = head_transfer(a_all[tr], a_all[te], b_test, y[tr], y[te])

    # agreement and cross-release retrieval
    nq = len(probe.queries)
    retrieval = []
    for i, j in ((0, 1), (0, 2), (1, 2)):
        old, new = runs[i], runs[j]
        rel_old, rel_new = old.shipped(probe.wordnet_texts), new.shipped(probe.wordnet_texts)[:, :256]
        abs_old, abs_new = old.absolute(probe.wordnet_texts), new.absolute(probe.wordnet_texts)
        for view, (vo, vn) in {"relational": (rel_old, rel_new), "absolute": (abs_old, abs_new)}.items():
            retrieval.append(
                {
                    "pair": f"{names[i]} -> {names[j]}",
                    "view": view,
                    "cosine": row_cosine(vo, vn),
                    "cosine_centred": row_cosine(vo - vo.mean(0), vn - vn.mean(0)),
                    "cosine_bbc": row_cosine(
                        *(old.shipped(probe.bbc_texts), new.shipped(probe.bbc_texts)[:, :256])
                        if view == "relational"
                        else (old.absolute(probe.bbc_texts), new.absolute(probe.bbc_texts))
                    ),
                    "r10_new_only": recall_at_10(vn[:nq], vn[nq:], probe.gold),
                    "r10_cross": recall_at_10(vn[:nq], vo[nq:], probe.gold),
                    "same_text_r1": cross_retrieval(vo[:nq], vn[:nq], k=1),
                }
            )

    # tables
    head_rows, goal_rows = [], []
    for key, scores in heads.items():
        base = scores[("N", "N")]["accuracy"]
        for later in ("N+1", "N+2"):
            s = scores[("N", later)]
            retrained = scores[(later, later)]["accuracy"]
            head_rows.append([key, f"N -> {later}", base, s["accuracy"], s["macro_f1"], s["accuracy"] / base, retrained])
            goal_rows.append([key, f"N -> {later}", s["accuracy"] / base, "met" if s["accuracy"] / base >= GOAL else "MISSED"])
        s = scores[("N+1", "N+2")]
        head_rows.append(
            [
                key,
                "N+1 -> N+2",
                scores[("N+1", "N+1")]["accuracy"],
                s["accuracy"],
                s["macro_f1"],
                s["accuracy"] / scores[("N+1", "N+1")]["accuracy"],
                scores[("N+2", "N+2")]["accuracy"],
            ]
        )
    for pair in (("N", "N+1"), ("N", "N+2"), ("N+1", "N+2")):
        a = absolute[pair]
        head_rows.append(
            [
                "(contrast) logreg on absolute 128",
                f"{pair[0]} -> {pair[1]}",
                a["head_score_old"],
                a["head_score_new"],
                None,
                a["head_ratio"],
                absolute[(pair[1], pair[1])]["head_score_old"],
            ]
        )
        if pair[0] == "N":
            goal_rows.append(["(contrast) absolute", f"N -> {pair[1]}", a["head_ratio"], "-"])
    meta = [
        [n, json.loads((p / "manifest.json").read_text())["metrics"]["samples"], r.landmarks.version, r.landmarks.size]
        for n, p, r in zip(names, paths, releases)
    ]
    chance = float(np.bincount(y[te]).max() / len(te))
    markdown = (
        "Releases (one training run, tiny model, WordNet, default TrainingConfig, batch 64):\n\n"
        + markdown_table(["release", "samples seen", "landmark set", "K"], meta)
        + f"\nTask models trained on the older release's BBC train split, scored on the newer release's test split "
        f"(accuracy; chance {chance:.3f}); 'retrained' = the same model fit on the newer release:\n\n"
        + markdown_table(
            [
                "task model",
                "releases",
                "acc on own release",
                "acc on newer (no retraining)",
                "macro-F1 on newer",
                "ratio",
                "retrained on newer",
            ],
            head_rows,
        )
        + "\nGoal: >= 97 % of the head's score on N.\n\n"
        + markdown_table(["head", "releases", "ratio", "goal >= 0.97"], goal_rows)
        + "\nAgreement and cross-release retrieval (WordNet: 2,000 held-out glosses + lemmas; R@10 = gloss->lemma recall@10 with "
        "glosses from the newer release and the lemma index from the older; same-text R@1: a gloss embedded by the newer release "
        "retrieves its own older vector among 2,000):\n\n"
        + markdown_table(
            [
                "releases",
                "view",
                "mean cos (WordNet)",
                "WordNet, centred",
                "mean cos (BBC)",
                "R@10 newer only",
                "R@10 cross-release",
                "same-text R@1",
            ],
            [
                [
                    r["pair"],
                    r["view"],
                    r["cosine"],
                    r["cosine_centred"],
                    r["cosine_bbc"],
                    r["r10_new_only"],
                    r["r10_cross"],
                    r["same_text_r1"],
                ]
                for r in retrieval
            ],
        )
        + "\n'centred': each release's vectors minus their mean over the texts first (the pooled absolute vectors share a large common "
        "component that inflates their plain cosine).\n"
    )
    plot(heads, absolute)
    write_outputs(
        "compatibility",
        markdown,
        {
            "budgets": budgets,
            "releases": meta,
            "heads": {k: {f"{a}->{b}": v for (a, b), v in s.items()} for k, s in heads.items()},
            "absolute": {f"{a}->{b}": v for (a, b), v in absolute.items()},
            "retrieval": retrieval,
            "seconds": round(time.perf_counter() - started, 1),
        },
    )


def plot(heads: dict, absolute: dict) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(6, 3.6))
    later = ["N", "N+1", "N+2"]
    for key, scores in heads.items():
        axis.plot(later, [scores[("N", r)]["accuracy"] for r in later], marker="o", label=f"{key} (trained on N)")
    axis.plot(
        later, [absolute[("N", r)]["head_score_new"] for r in later], marker="x", linestyle="--", label="logreg on absolute (trained on N)"
    )
    axis.set_ylabel("BBC test accuracy")
    axis.set_xlabel("release the vectors come from")
    axis.set_title("task heads trained on release N, no retraining", fontsize=10)
    axis.legend(fontsize=7)
    save_plot(figure, "compatibility")


if __name__ == "__main__":
    main()
