"""The encoder recipe, chosen by measurement: one ablation row per lever, and the goals at the real budgets.

    .venv/bin/python bench/recipe.py references              TF-IDF+SVD and all-MiniLM-L6-v2 on the full suite (cached)
    .venv/bin/python bench/recipe.py ablations --samples 300000   every lever as a `cairn train` row at the same samples
    .venv/bin/python bench/recipe.py budget --minutes 30     the default recipe at `cairn train --minutes 30`: suite,
                                                             landmark order vs random, embed speed vs MiniLM
    .venv/bin/python bench/recipe.py stability --samples 600000  two init seeds, two disjoint halves: agreement between runs
    .venv/bin/python bench/recipe.py swarm --minutes 15      `cairn swarm --peers 2`: its last release on the full suite,
                                                             compatibility across its releases
    .venv/bin/python bench/recipe.py report                  the tables for docs/embedding.md from what the parts wrote

Every row trains through cairn.training.trainer.train (what `cairn train` runs) on WordNet, on this 2-core machine,
one row at a time; each part writes bench/out/recipe-PART.json. Nothing here tunes toward a goal: the rows
are the configurations the docs name, and a missed goal is reported as missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cairn.protocol.run_config import ObjectiveConfig, TrainingConfig  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
RUNS = OUT / "recipe-runs"
GOALS = {"gloss_lemma_r10": 0.61}
TASKS = ("gloss_lemma_r10", "simlex_spearman", "wordsim_spearman", "bbc_probe_acc")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def config(**changes) -> TrainingConfig:
    """TrainingConfig with changes; objective fields may be given at the top level."""
    objective_fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    objective = {k: changes.pop(k) for k in list(changes) if k in objective_fields}
    return TrainingConfig(**changes, objective=ObjectiveConfig(**objective))


OLD_DEFAULT = dict(
    model="tiny",
    initialisation="random",
    vocabulary="corpus",
    batch_size=64,
    lr=2e-3,
    weight_decay=0.01,
    start_pull=0.0,
    warmup_updates=50,
    anchor_refresh_every=25,
    relational_weight=0.0,
)
RANDOM_STATIC = dict(initialisation="random", lr=0.05, start_pull=0.0, relational_weight=0.0)  # a random table needs a large step
# (lever, row name, what changes, TrainingConfig changes, corpus)
ABLATIONS = [
    (
        "1 model",
        "tiny transformer (the previous default)",
        "2 layers, width 128, own 8k vocabulary, batch 64, lr 2e-3",
        OLD_DEFAULT,
        "wordnet",
    ),
    (
        "2 vocabulary",
        "static, own vocabulary",
        "30,522 WordPiece tokens trained on WordNet, random table, lr 0.05",
        {**RANDOM_STATIC, "vocabulary": "corpus"},
        "wordnet",
    ),
    ("1 model", "static, BERT vocabulary", "token table + mean, random table, lr 0.05", RANDOM_STATIC, "wordnet"),
    (
        "3 objective",
        "+ relational term",
        "Matryoshka InfoNCE on relational prefixes, anchors with gradient",
        {**RANDOM_STATIC, "relational_weight": 1.0},
        "wordnet",
    ),
    (
        "4 teacher",
        "static, distilled start",
        "table = PCA of all-MiniLM-L6-v2's token vectors, lr 3e-3, absolute term only",
        dict(relational_weight=0.0, start_pull=0.0),
        "wordnet",
    ),
    ("3+4", "distilled start + relational term", "", dict(start_pull=0.0), "wordnet"),
    ("3+4", "+ pull toward the start (the default)", "L2-SP 1.0 (cairn/training/optim.py)", {}, "wordnet"),
    ("5 signal", "+ WordNet relations", "hypernym, meronym, similar-to pairs (+113k pairs)", {}, "wordnet+relations"),
]


def train_row(
    name: str,
    training: TrainingConfig,
    corpus: str,
    minutes: float | None = None,
    samples: int | None = None,
    suite: str | None = "full",
    **kwargs,
) -> dict:
    """Train (or reuse) one row for `minutes` of wall time or `samples` samples, evaluate on the full suite; the
    trainer's report plus the CPU seconds training took (process time: less sensitive to a shared machine than wall time)."""
    from cairn.training.trainer import train

    out = RUNS / name
    report_path = out / "eval.json"
    spec = {"config": training.to_json(), "corpus": corpus, "minutes": minutes, "samples": samples, "suite": suite, **kwargs}
    if report_path.exists() and json.loads((out / "recipe.json").read_text()) == spec:
        log(f"{name}: reusing {out}")
        return json.loads(report_path.read_text())
    log(f"{name}: training {f'{minutes} min' if minutes else f'{samples:,} samples'} on {corpus}")
    started = time.process_time()
    result = train(corpus, out, training, minutes=minutes, max_samples=samples, device="cpu", show_progress=False, evaluate=False, **kwargs)
    cpu_seconds = round(time.process_time() - started, 1)
    from cairn.corpora import load_corpus
    from cairn.protocol.embedder import load_bundle
    from cairn.training.trainer import evaluate_bundle

    report = {} if suite is None else evaluate_bundle(load_bundle(out, device="cpu"), load_corpus(corpus), quick=suite == "quick")
    report["training"] = {
        "samples": result.samples,
        "steps": result.steps,
        "seconds": result.seconds,
        "final_loss": result.final_loss,
        "cpu_seconds": cpu_seconds,
    }
    (out / "recipe.json").write_text(json.dumps(spec))
    report_path.write_text(json.dumps(report))
    return report


def write(part: str, data: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = {"command": "python " + " ".join(sys.argv), "torch_threads": torch.get_num_threads(), **data}
    (OUT / f"recipe-{part}.json").write_text(json.dumps(data, indent=1, default=float))
    log(f"wrote bench/out/recipe-{part}.json")


def load(part: str) -> dict | None:
    path = OUT / f"recipe-{part}.json"
    return json.loads(path.read_text()) if path.exists() else None


# ---- parts ------------------------------------------------------------------------------------


def references(args) -> None:
    from reference_baselines import LSA_ROW, MINILM_ROW, lsa_embed_fn, minilm_embed_fn, wordnet_texts

    from cairn.evaluation import SuiteData, run_suite

    heldout, documents, _ = wordnet_texts()
    data = SuiteData.load()
    rows = {LSA_ROW: lsa_embed_fn(documents + list(data.bbc.texts)), MINILM_ROW: minilm_embed_fn()}
    report = run_suite(rows, heldout, dims=(16, 32, 64, 128, 256), prefix_rows=(LSA_ROW,), data=data)
    quick = run_suite(rows, heldout, quick=True, prefix_rows=(), data=data)  # the ablations' mode: scores only compare within a mode
    write("references", {"report": report, "quick": quick})


def ablations(args) -> None:
    """Every row at the same sample budget (the transformer, ~20x slower per sample, at a tenth of it): quality at equal
    data, and samples per CPU-second for the cost side."""
    rows = []
    for lever, name, change, changes, corpus in ABLATIONS:
        samples = args.samples // 10 if changes.get("model") == "tiny" else args.samples
        report = train_row(f"ablation-{len(rows)}-{samples}", config(**changes), corpus, samples=samples, suite="quick")
        rows.append({"lever": lever, "row": name, "change": change, "corpus": corpus, "report": report})
    write("ablations", {"samples": args.samples, "suite": "quick", "rows": rows})


def budget(args) -> None:
    """The default at --minutes: the full suite, Matryoshka prefixes in the landmark order against a random order (the
    release manifests' measure, on all 2,225 BBC articles), embed speed against MiniLM on the same texts."""
    from cairn.corpora import load_corpus
    from cairn.evaluation.data import load_bbc
    from cairn.evaluation.promises import matryoshka_report
    from cairn.evaluation.reference import minilm_embed_fn
    from cairn.protocol.embedder import load_bundle

    report = train_row(f"default-{args.minutes}min", TrainingConfig(), "wordnet", minutes=args.minutes)
    bundle = RUNS / f"default-{args.minutes}min"
    bbc = load_bbc()
    texts = list(bbc.texts)[:200] + [p.b for p in load_corpus("wordnet").heldout[:800]]
    embedder, minilm = load_bundle(bundle, device="cpu"), minilm_embed_fn()
    speed = {}
    for label, embed in (("cairn", lambda t: embedder.embed(t)), ("minilm", minilm)):
        embed(texts[:32])  # warm-up
        clock = time.perf_counter()
        embed(texts)
        speed[label] = len(texts) / (time.perf_counter() - clock)
    matryoshka = matryoshka_report(embedder.relational(list(bbc.texts)), embedder.absolute(list(bbc.texts)), list(bbc.labels))
    write(
        "budget",
        {
            "minutes": args.minutes,
            "report": report,
            "embed_sentences_per_second": speed,
            "embed_texts": len(texts),
            "matryoshka": matryoshka,
        },
    )


def stability(args) -> None:
    from stability import compare

    from common import Probe, Run

    default = TrainingConfig()
    specs = {
        "seed0": dict(init_seed=0),
        "seed1": dict(init_seed=1, data_seed=1),
        "half0": dict(init_seed=0, shard=(0, 2)),
        "half1": dict(init_seed=1, shard=(1, 2)),
    }
    runs = {}
    for name, kwargs in specs.items():
        train_row(f"stability-{name}-{args.samples}", default, "wordnet", samples=args.samples, suite=None, **kwargs)
        runs[name] = Run(RUNS / f"stability-{name}-{args.samples}", name)
    probe = Probe.load()
    # without the teacher: the same pair of seeds from random tables (what the distilled start is worth to stability)
    no_teacher = config(**{**RANDOM_STATIC, "relational_weight": 1.0})
    for name, kwargs in {"random-seed0": dict(init_seed=0), "random-seed1": dict(init_seed=1, data_seed=1)}.items():
        train_row(f"stability-{name}-{args.samples}", no_teacher, "wordnet", samples=args.samples, suite=None, **kwargs)
        runs[name] = Run(RUNS / f"stability-{name}-{args.samples}", name)
    results = {
        "seeds": compare(runs["seed0"], runs["seed1"], probe),
        "halves": compare(runs["half0"], runs["half1"], probe),
        "seeds, random start (no teacher)": compare(runs["random-seed0"], runs["random-seed1"], probe),
    }
    write("stability", {"samples": args.samples, "results": results})


def swarm(args) -> None:
    """`cairn swarm --peers 2 --minutes M` on a fresh workdir; the full suite on its last release; compatibility."""
    from cairn.corpora import load_corpus
    from cairn.protocol.embedder import Embedder, load_bundle
    from cairn.releases.manifest import read_manifest
    from cairn.training.trainer import evaluate_bundle

    workdir = RUNS / f"swarm-{args.minutes}min"
    if not (workdir / "coordinator" / "releases").exists():
        log(f"cairn swarm --peers 2 --minutes {args.minutes}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cairn.cli",
                "swarm",
                "--peers",
                "2",
                "--minutes",
                str(args.minutes),
                "--workdir",
                str(workdir),
                "--release-every",
                str(args.release_every),
            ],
            cwd=REPO,
            check=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    releases = sorted((workdir / "coordinator" / "releases").glob("*.*.*"), key=lambda p: tuple(int(x) for x in p.name.split(".")))
    manifests = [read_manifest(path) for path in releases]
    last = load_bundle(releases[-1], device="cpu")
    report = evaluate_bundle(Embedder(last.model, last.tokenizer, last.landmarks), load_corpus("wordnet"), quick=False)
    compat = [
        {
            "version": str(m.version),
            "global_step": m.global_step,
            "parent": m.compatibility.get("relational", {}).get("head_ratio"),
            "grandparent": m.compatibility.get("grandparent", {}).get("relational", {}).get("head_ratio"),
            "parent_absolute": m.compatibility.get("absolute", {}).get("head_ratio"),
            "retrieval_r10": m.metrics["relational"]["full"]["gloss_lemma_r10"],
        }
        for m in manifests
    ]
    summaries = {path.name: json.loads((path / "peer-summary.json").read_text()) for path in (workdir / "peers").iterdir()}
    write(
        f"swarm-{args.minutes}min",
        {"minutes": args.minutes, "release": str(manifests[-1].version), "report": report, "releases": compat, "peers": summaries},
    )


# ---- report -----------------------------------------------------------------------------------


def _cells(scores: dict) -> list[str]:
    return [f"{scores[m]:.3f}" if scores.get(m) is not None else "n/a" for m in TASKS]


def report(args) -> None:
    lines = []
    refs = load("references")
    reference_rows, quick_rows = [], []
    if refs:
        r = refs["report"]
        reference_rows = [("TF-IDF + SVD (256)", r["lsa_tfidf_svd256"]["full"]), ("all-MiniLM-L6-v2", r["minilm_l6"]["full"])]
        if "quick" in refs:
            q = refs["quick"]
            quick_rows = [("TF-IDF + SVD (256)", q["lsa_tfidf_svd256"]["full"]), ("all-MiniLM-L6-v2", q["minilm_l6"]["full"])]
    ablation = load("ablations")
    if ablation:
        lines.append(
            f"Ablations: each row trains {ablation['samples']:,} samples (`cairn train --max-samples N`; the transformer a tenth) "
            f"on WordNet; relational vector (all 256 coordinates) on the {ablation.get('suite', 'full')} suite, references in the "
            "same mode; samples per CPU-second of training.\n"
        )
        lines.append("| lever | row | change | samples | samples/CPU-s | gloss→lemma R@10 | SimLex ρ | WordSim ρ | BBC probe | abs. R@10 |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for row in ablation["rows"]:
            training = row["report"]["training"]
            rate = training["samples"] / max(training["cpu_seconds"], 1e-9)
            lines.append(
                f"| {row['lever']} | {row['row']} | {row['change']} | {training['samples']:,} | {rate:,.0f} | "
                + " | ".join(_cells(row["report"]["relational"]["full"]))
                + f" | {row['report']['absolute']['full']['gloss_lemma_r10']:.3f} |"
            )
        for name, scores in quick_rows if ablation.get("suite") == "quick" else reference_rows:
            lines.append(f"| reference | {name} | | | | " + " | ".join(_cells(scores)) + " | |")
        lines.append("")
    lines += goal_table(reference_rows[0][1] if reference_rows else None)
    print("\n".join(lines))


def _verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("**met**" if met else "**not yet**")


def goal_table(tfidf: dict | None) -> list[str]:
    """Issue 11's goals, each with what was measured and met / not yet; a part that did not run says so."""
    rows: list[tuple[str, str, str, bool | None]] = []
    budget = load("budget")
    if budget:
        full = budget["report"]["relational"]["full"]
        if tfidf:
            wins = {m: full[m] > tfidf[m] for m in TASKS}
            rows.append(
                (
                    f"`cairn train --minutes {budget['minutes']:g}` beats TF-IDF+SVD on all four tasks (relational)",
                    "all four",
                    ", ".join(f"{m} {full[m]:.3f} vs {tfidf[m]:.3f}" for m in TASKS),
                    all(wins.values()),
                )
            )
        rows.append(
            ("gloss→lemma R@10 (relational, full suite)", "≥ 0.61", f"{full['gloss_lemma_r10']:.3f}", full["gloss_lemma_r10"] >= 0.61)
        )
        m = budget["matryoshka"]
        rows.append(
            (
                "Matryoshka k95 (BBC probe, relational prefix)",
                f"≤ {m['goal']['k95']} (K/8)",
                f"{m['relational_prefix']['k95']} (random order: {m['random_order']['k95']})",
                m["goal_met"],
            )
        )
        small = [k for k in ("4", "8", "16") if k in m["relational_prefix"]]
        better = [m["relational_prefix"][k] > m["random_order"][k] for k in small]
        rows.append(
            (
                "landmark order beats a random order at k ≤ 16 (BBC probe)",
                "every k",
                ", ".join(f"k={k}: {m['relational_prefix'][k]:.3f} vs {m['random_order'][k]:.3f}" for k in small),
                all(better),
            )
        )
        speed = budget["embed_sentences_per_second"]
        rows.append(
            (
                "embed throughput vs all-MiniLM-L6-v2 (same texts, same run)",
                "≥ 10×",
                f"{speed['cairn']:,.0f} vs {speed['minilm']:,.0f} sentences/s = {speed['cairn'] / speed['minilm']:.0f}×",
                speed["cairn"] >= 10 * speed["minilm"],
            )
        )
    stability = load("stability")
    if stability:
        for pair in ("seeds", "halves", "seeds, random start (no teacher)"):
            by_view = {row["view"]: row for row in stability["results"].get(pair, [])}
            rel = by_view.get("relational")
            absolute = by_view.get("absolute")
            if rel is None or pair not in stability["results"]:
                continue
            rows.append(
                (
                    f"stability, {pair}: relational mean cosine / stitching / mutual kNN@10",
                    "≥ 0.9 / ≥ 95 % / ≥ 0.5",
                    f"{rel['cosine_wordnet']:.3f} / {rel['stitch_ratio']:.1%} / {rel['mutual_knn10']:.3f}"
                    + (
                        ""
                        if absolute is None
                        else f" (absolute: {absolute['cosine_wordnet']:.3f} / {absolute['stitch_ratio']:.1%} / "
                        f"{absolute['mutual_knn10']:.3f})"
                    ),
                    rel["cosine_wordnet"] >= 0.9 and rel["stitch_ratio"] >= 0.95 and rel["mutual_knn10"] >= 0.5,
                )
            )
    for minutes in (15, 5):
        swarm = load(f"swarm-{minutes}min")
        if not swarm:
            continue
        full = swarm["report"]["relational"]["full"]
        if tfidf:
            rows.append(
                (
                    f"`cairn swarm --peers 2 --minutes {minutes}` release {swarm['release']} beats TF-IDF+SVD (full suite)",
                    "R@10 and BBC" if minutes == 5 else "all four",
                    ", ".join(f"{m} {full[m]:.3f} vs {tfidf[m]:.3f}" for m in TASKS),
                    all(full[m] > tfidf[m] for m in (("gloss_lemma_r10", "bbc_probe_acc") if minutes == 5 else TASKS)),
                )
            )
        later = [r for r in swarm["releases"] if r["parent"] is not None]
        if later:
            worst = min(min(r["parent"], r["grandparent"] if r["grandparent"] is not None else 1.0) for r in later)
            drops = [b["retrieval_r10"] < a["retrieval_r10"] - 0.01 for a, b in zip(swarm["releases"], swarm["releases"][1:])]
            rows.append(
                (
                    f"compatibility across the {minutes}-min swarm's releases: task head kept on N+1, N+2; retrieval never drops",
                    "≥ 97 %, no drop",
                    f"worst {worst:.1%}; retrieval drops > 0.01: {sum(drops)} of {len(drops)}",
                    worst >= 0.97 and not any(drops),
                )
            )
    if not rows:
        return []
    lines = ["Goals (issue 11):\n", "| goal | target | measured | verdict |", "|---|---|---|---|"]
    lines += [f"| {goal} | {target} | {measured} | {_verdict(met)} |" for goal, target, measured, met in rows]
    return lines + [""]


PARTS = {"references": references, "ablations": ablations, "budget": budget, "stability": stability, "swarm": swarm, "report": report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=sorted(PARTS))
    parser.add_argument("--minutes", type=float, default=30.0, help="budget and swarm: wall-clock minutes")
    parser.add_argument("--samples", type=int, default=300_000, help="ablations and stability: samples per run")
    parser.add_argument("--release-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    np.random.seed(0)
    PARTS[args.part](args)


if __name__ == "__main__":
    main()
