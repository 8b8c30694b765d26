"""Train the tiny and small encoders for a fixed sample budget on WordNet and evaluate them.

    .venv/bin/python bench/train_encoders.py --samples tiny=60000 small=12000 --quick --out bench/out/encoders.json

The budget is in samples, not minutes, so the result does not depend on how busy the machine is.

For each size: one single-process training run (the `cairn train` baseline), then the evaluation
suite on the absolute vector and on relational prefixes for two landmark orders of the same 256
anchors: data-driven (farthest-point over TF-IDF/SVD) and random. Both orders are calibrated on
the same encoder, so the prefix curves differ only by the order. With the default objective
(relational term off, see docs/benchmarks.md) the landmark order does not influence training.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cairn.corpora import load_corpus  # noqa: E402
from cairn.corpora.wordnet import heldout_gloss_lemma  # noqa: E402
from cairn.protocol.embedder import Embedder, calibrate, load_bundle  # noqa: E402
from cairn.evaluation.suite import run_suite  # noqa: E402
from cairn.protocol.landmarks import LandmarkSet, random_order  # noqa: E402
from cairn.training.trainer import train  # noqa: E402
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import reference_texts  # noqa: E402


def evaluate_orders(bundle: Path, corpus, quick: bool) -> dict:
    embedder = load_bundle(bundle, device="cpu")
    farthest = embedder.landmarks
    shuffled = LandmarkSet(1, [farthest.anchors[i] for i in random_order(farthest.size, farthest.size, seed=1)])
    reference = reference_texts(corpus, 512)
    random_embedder = Embedder(embedder.model, embedder.tokenizer, calibrate(embedder.model, embedder.tokenizer, shuffled, reference))
    dims = (4, 8, 16, 32, 64, 128, farthest.size)
    return run_suite(
        {"relational": embedder.relational, "relational_random_order": random_embedder.relational, "absolute": embedder.absolute},
        heldout_gloss_lemma(corpus),
        dims=dims,
        quick=quick,
        prefix_rows=("relational", "relational_random_order"),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", nargs="+", default=["tiny=60000", "small=12000"], help="SIZE=SAMPLES budgets")
    parser.add_argument("--root", type=Path, default=Path("bench/out/encoders"))
    parser.add_argument("--out", type=Path, default=Path("bench/out/encoders.json"))
    parser.add_argument("--quick", action="store_true", help="evaluate on subsamples")
    args = parser.parse_args()
    corpus = load_corpus("wordnet")
    results = {}
    for budget in args.samples:
        size, samples = budget.split("=")
        out = args.root / f"{size}-{samples}"
        started = time.monotonic()
        trained = train("wordnet", out, TrainingConfig(model=size), max_samples=int(samples), evaluate=False, show_progress=False)
        report = evaluate_orders(out, corpus, args.quick)
        report["training"] = {
            "samples": trained.samples,
            "steps": trained.steps,
            "seconds": trained.seconds,
            "final_loss": trained.final_loss,
            "wall_seconds_with_eval": time.monotonic() - started,
        }
        results[size] = report
        print(size, json.dumps(report["training"]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))  # after each size: a long run keeps what it finished
    metrics = ("gloss_lemma_r1", "gloss_lemma_r10", "simlex_spearman", "wordsim_spearman", "bbc_probe_acc")
    print("| encoder | vector | dims | " + " | ".join(metrics) + " |")
    print("|---|---|---|" + "---|" * len(metrics))
    for size, report in results.items():
        for row in ("absolute", "relational", "relational_random_order"):
            for dims, values in report[row].items():
                cells = " | ".join("-" if values.get(m) is None else f"{values[m]:.3f}" for m in metrics)
                print(f"| {size} | {row} | {dims} | {cells} |")


if __name__ == "__main__":
    main()
