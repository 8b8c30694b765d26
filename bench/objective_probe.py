"""Does a training objective learn from a random start? Loss trajectory over the first N steps.

    .venv/bin/python bench/objective_probe.py --lr 2e-3 --relational-weight 0.1 --steps 300

Single process, one torch thread, WordNet pairs in the trainer's order, batch 64, the default tiny
encoder and 256 farthest-point landmarks. Prints the loss parts every 50 steps; the absolute
InfoNCE at chance is ln(64) = 4.16.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cairn.corpora import load_corpus  # noqa: E402
from cairn.protocol.encoder import Encoder  # noqa: E402
from cairn.training.objective import ObjectiveConfig  # noqa: E402
from cairn.training.task import (TrainingConfig, TrainingTask, batches, encoder_config, make_optimizer, prepare_run,  # noqa: E402
                               reference_texts, warmup_factor_for_samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--relational-weight", type=float, default=0.0)
    parser.add_argument("--relational-temperature", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    corpus = load_corpus("wordnet")
    objective = dataclasses.replace(ObjectiveConfig(), relational_weight=args.relational_weight,
                                    relational_temperature=args.relational_temperature)
    config = TrainingConfig(lr=args.lr, objective=objective)
    tokenizer, landmarks = prepare_run(corpus, config)
    torch.manual_seed(0)
    model = Encoder(encoder_config(config, tokenizer))
    task = TrainingTask(model, tokenizer, landmarks, reference_texts(corpus, 512), config)
    optimizer = make_optimizer(model, config)
    started = time.monotonic()
    for step, (_, batch) in zip(range(args.steps + 1), batches(corpus.train, config.batch_size)):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * warmup_factor_for_samples(step * config.batch_size, config)
        loss, parts = task.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(json.dumps({"step": step, "seconds": round(time.monotonic() - started), **{k: round(v, 2) for k, v in parts.items()}}),
                  flush=True)


if __name__ == "__main__":
    main()
