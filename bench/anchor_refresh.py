"""How often should the anchors' encodings (and their standardisation stats) be refreshed?

    python bench/anchor_refresh.py [--samples 20000] [--variants 1,5,25,100,grad] [--threads 1]

The relational loss needs every anchor's encoding. `TrainingTask` recomputes them without gradient every
`anchor_refresh_every` steps (and the per-anchor mean/std over the reference sample with them) and holds
them fixed in between. This script trains the tiny model on WordNet for a fixed sample budget once per
variant, from the same initial weights and the same batches, and reports:

  * samples/s of the training loop (anchor refreshes included; evaluation excluded),
  * the held-out eval loss (`TrainingTask.eval_loss`, fresh anchors, on a fixed subset of held-out pairs),
  * gloss->lemma recall@10 on held-out synsets (`run_suite(..., quick=True)`), on the full relational
    vector and its 16- and 64-coordinate prefixes.

Variant `abs` is a reference row, not a candidate: the absolute-vector InfoNCE alone (relational weight 0),
to show what learning looks like at this budget. Chance level of the eval loss (batch 128, relational +
absolute InfoNCE) is 2 ln 128 = 9.70; of the training loss (batch 64) 2 ln 64 = 8.32.

Variant `grad` encodes the anchors WITH gradient at every step (in train mode, like the batch), so the loss
also moves the anchors; the mean/std are recomputed every step without gradient. It exists only here.

Writes a markdown table to bench/out/anchor_refresh.md (and .json) and prints it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cairn.corpora.wordnet import heldout_gloss_lemma, load_wordnet
from cairn.protocol.embedder import Embedder, calibrate, encode_texts
from cairn.protocol.encoder import Encoder
from cairn.protocol.landmarks import MIN_STD
from cairn.training.objective import matryoshka_relational_loss
from cairn.training.task import (TrainingConfig, TrainingTask, batches, encoder_config, make_optimizer, prepare_run, reference_texts,
                               warmup_factor_for_samples)

OUT = Path(__file__).parent / "out"


class GradAnchorTask(TrainingTask):
    """Anchors encoded with gradient every step; stats (mean/std over the reference) without, every step."""

    def loss(self, pairs):
        anchor_ids, anchor_mask = self.tokenizer.batch(self.landmarks.anchors)
        device = self.device
        anchors = self.model(anchor_ids.to(device), anchor_mask.to(device))
        with torch.no_grad():
            reference = torch.from_numpy(encode_texts(self.model, self.tokenizer, self.reference)).to(device)
            sims = F.normalize(reference, dim=-1) @ F.normalize(anchors.detach(), dim=-1).T
            mean, std = sims.mean(0), sims.std(0).clamp(min=MIN_STD)
        ids_a, mask_a = self.tokenizer.batch([p.a for p in pairs])
        ids_b, mask_b = self.tokenizer.batch([p.b for p in pairs])
        abs_a = self.model(ids_a.to(device), mask_a.to(device))
        abs_b = self.model(ids_b.to(device), mask_b.to(device))
        return matryoshka_relational_loss(abs_a, abs_b, anchors, mean, std, self.config.objective)


def run_variant(variant: str, corpus, tokenizer, landmarks, base: TrainingConfig, samples: int, eval_pairs, gloss_pairs, suite_data) -> dict:
    """`variant` is N (refresh every N steps) or `grad`, optionally `@SEED` for another initialisation/dropout seed."""
    name, _, seed = variant.partition("@")
    every = {"grad": 1, "abs": base.anchor_refresh_every}.get(name) or int(name)
    config = TrainingConfig(**{**base.__dict__, "anchor_refresh_every": every})
    if name == "abs":  # reference row: the absolute-vector InfoNCE alone (relational weight 0)
        config = TrainingConfig(**{**config.__dict__, "objective": replace(base.objective, relational_weight=0.0)})
    # same initial weights and dropout stream for every variant (as cairn.training.trainer seeds them), unless @SEED;
    # tokenizer, landmarks, reference sample and batch order are the same for all variants
    torch.manual_seed(int(seed) if seed else config.seed)
    model = Encoder(encoder_config(config, tokenizer))
    optimizer = make_optimizer(model, config)
    reference = reference_texts(corpus, config.reference_size, config.seed)
    task = (GradAnchorTask if name == "grad" else TrainingTask)(model, tokenizer, landmarks, reference, config)
    model.train()
    seen, losses, refreshes = 0, [], 0
    original_refresh = task.refresh_anchors

    def counting_refresh():
        nonlocal refreshes
        refreshes += 1
        original_refresh()

    task.refresh_anchors = counting_refresh
    started = time.perf_counter()
    for _, batch in batches(corpus.train, config.batch_size):
        if seen >= samples:
            break
        for group in optimizer.param_groups:  # the trainer's schedule: linear warm-up measured in samples
            group["lr"] = config.lr * warmup_factor_for_samples(seen, config)
        loss, _ = task.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(batch)
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - started

    evaluator = TrainingTask(model, tokenizer, landmarks, reference, base)  # the same yardstick (full objective) for every variant
    eval_loss = evaluator.eval_loss(eval_pairs)
    row = {"variant": name, "torch_seed": int(seed) if seed else config.seed, "refresh_every": "every step, with gradient" if name == "grad" else every,
           "relational_weight": config.objective.relational_weight, "samples": seen,
           "steps": len(losses), "refreshes": refreshes if name != "grad" else len(losses), "train_seconds": round(seconds, 1),
           "samples_per_s": round(seen / seconds, 1), "train_loss_last50": round(float(np.mean(losses[-50:])), 4),
           "eval_loss": round(eval_loss, 4)}
    if gloss_pairs is not None:
        from cairn.evaluation.suite import run_suite

        model.eval()
        embedder = Embedder(model, tokenizer, calibrate(model, tokenizer, landmarks, reference))
        report = run_suite({"relational": embedder.relational, "absolute": embedder.absolute}, gloss_pairs, dims=(16, 64), quick=True,
                           data=suite_data)
        for key in ("16", "64", "full"):
            row[f"r10_{key}"] = report["relational"][key]["gloss_lemma_r10"]
        row["r10_absolute"] = report["absolute"]["full"]["gloss_lemma_r10"]
        row["mean_anchor_cosine"] = round(float(np.mean(embedder.landmarks.stats.mean)), 3)  # near 1 = collapsed
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    has_recall = "r10_full" in rows[0]
    head = ["anchors refreshed", "steps", "refreshes", "train s", "samples/s", "train loss (last 50)", "held-out eval loss"]
    if has_recall:
        head += ["R@10 (16 dims)", "R@10 (64)", f"R@10 (all {meta['landmarks']})", "R@10 absolute", "mean anchor cos"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        every = row["refresh_every"]
        label = "every step, **with gradient**" if row["variant"] == "grad" else ("every step" if every == 1 else f"every {every} steps")
        if row["variant"] == "abs":
            label = f"(reference) absolute loss only, every {row['refresh_every']} steps"
        if row["torch_seed"] != meta["seed"]:
            label += f" (init seed {row['torch_seed']})"
        cells = [label, row["steps"], row["refreshes"], row["train_seconds"], row["samples_per_s"], row["train_loss_last50"], row["eval_loss"]]
        if has_recall:
            cells += [f"{row[f'r10_{k}']:.3f}" for k in ("16", "64", "full", "absolute")] + [row["mean_anchor_cosine"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--variants", default="1,5,25,100,grad,25@1,abs",
                        help="N = refresh every N steps, grad = with gradient every step, abs = absolute loss only (reference); "
                             "@SEED = another init seed (noise)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids oversubscription on shared machines)")
    parser.add_argument("--eval-pairs", type=int, default=1024)
    parser.add_argument("--no-suite", action="store_true", help="skip gloss->lemma recall")
    parser.add_argument("--out", type=Path, default=OUT / "anchor_refresh.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clock = time.perf_counter()
    corpus = load_wordnet()
    base = TrainingConfig(model="tiny")
    tokenizer, landmarks = prepare_run(corpus, base)
    eval_pairs = sorted(corpus.heldout, key=lambda p: (p.a, p.b))[:: max(1, len(corpus.heldout) // args.eval_pairs)][: args.eval_pairs]
    gloss_pairs, suite_data = None, None
    if not args.no_suite:
        try:
            from cairn.evaluation.suite import SuiteData

            gloss_pairs, suite_data = heldout_gloss_lemma(corpus), SuiteData.load()
        except ImportError:
            print("cairn.evaluation.suite not available: recall columns skipped", file=sys.stderr)
    print(f"setup {time.perf_counter() - clock:.1f}s: {len(corpus.train)} training pairs, {landmarks.size} landmarks, "
          f"vocabulary {tokenizer.vocab_size}, {len(eval_pairs)} held-out eval pairs", file=sys.stderr)

    rows = []
    for name in args.variants.split(","):
        row = run_variant(name, corpus, tokenizer, landmarks, base, args.samples, eval_pairs, gloss_pairs, suite_data)
        print(json.dumps(row), file=sys.stderr)
        rows.append(row)
    meta = {"command": "python " + " ".join(sys.argv), "samples": args.samples, "threads": args.threads, "model": base.model,
            "batch_size": base.batch_size, "landmarks": base.landmarks, "reference_size": base.reference_size, "lr": base.lr, "seed": base.seed,
            "torch": torch.__version__, "machine": platform.machine(), "total_seconds": round(time.perf_counter() - clock, 1)}
    table = markdown(rows, meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"Anchor refresh interval: tiny model, WordNet, {args.samples} samples (batch {base.batch_size}), "
              f"{base.landmarks} landmarks, reference {base.reference_size}, torch threads {args.threads}.\n\n")
    args.out.write_text(header + table)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(header + table)


if __name__ == "__main__":
    main()
