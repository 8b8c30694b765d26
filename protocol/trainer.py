"""The single-process trainer: the baseline every swarm run must match.

Plain loop (in the spirit of nanoGPT's train.py): batches of pairs -> loss -> AdamW, with atomic
checkpoints so a killed run resumes where it stopped, and an evaluation report at the end.
"""

from __future__ import annotations

import io
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from protocol.corpora import load_corpus
from protocol.embedder import Embedder, calibrate, save_bundle
from protocol.encoder import Encoder, pick_device
from protocol.errors import CairnError
from protocol.fsutil import atomic_write_bytes, atomic_write_json
from protocol.landmarks import LANDMARKS_FILE, LandmarkSet
from protocol.tokenizer import TextTokenizer
from protocol.training import (TrainingConfig, TrainingTask, batches, encoder_config, make_optimizer, prepare_run,
                               reference_texts, warmup_factor_for_samples)

CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILE = "run.json"


@dataclass
class TrainResult:
    steps: int
    samples: int
    seconds: float
    final_loss: float
    report: dict


def train(corpus_spec: str, out: Path, config: TrainingConfig, minutes: float | None = None, max_samples: int | None = None,
          device: str = "auto", checkpoint_every_s: float = 60.0, accumulate: int = 1, evaluate: bool = True, quick_eval: bool = False,
          show_progress: bool = True) -> TrainResult:
    """Train (or resume) until `minutes` of wall time or `max_samples` samples, then save and evaluate.

    `accumulate` > 1 sums gradients over that many batches per update: the single-process twin of a
    swarm whose target batch is batch_size * accumulate.
    """
    if minutes is None and max_samples is None:
        raise CairnError("give --minutes or --max-samples so training knows when to stop")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(corpus_spec)
    tokenizer, landmarks = _load_or_prepare(out, corpus_spec, corpus, config)
    torch.manual_seed(config.seed)
    model = Encoder(encoder_config(config, tokenizer)).to(pick_device(device))
    optimizer = make_optimizer(model, config)
    state = _load_checkpoint(out, model, optimizer)
    task = TrainingTask(model, tokenizer, landmarks, reference_texts(corpus, config.reference_size, config.seed), config)
    model.train()

    started, last_checkpoint = time.monotonic(), time.monotonic()
    elapsed_before = state["seconds"]
    deadline = started + minutes * 60 - elapsed_before if minutes is not None else None
    loss_value = float("nan")
    progress = Progress(TextColumn("[bold]train[/]"), BarColumn(), TextColumn("step {task.fields[step]} loss {task.fields[loss]:.3f} "
                        "{task.fields[rate]:.0f} samples/s"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not show_progress)
    total = max_samples if max_samples is not None else (minutes or 0) * 60
    with progress:
        bar = progress.add_task("train", total=total, step=state["step"], loss=float("nan"), rate=0.0,
                                completed=state["samples"] if max_samples is not None else elapsed_before)
        for offset, batch in batches(corpus.train, config.batch_size, state["offset"]):
            if state["step"] % accumulate == 0 and ((deadline is not None and time.monotonic() >= deadline)
                                                    or (max_samples is not None and state["samples"] >= max_samples)):
                break
            loss, _ = task.loss(batch)
            (loss / accumulate).backward()
            loss_value = float(loss.detach())
            state.update(step=state["step"] + 1, samples=state["samples"] + len(batch), offset=offset)
            if state["step"] % accumulate == 0:
                # the learning rate of an update depends on the samples seen before it, as in the swarm
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * warmup_factor_for_samples(state["samples"] - len(batch) * accumulate, config)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            now = time.monotonic()
            state["seconds"] = elapsed_before + now - started
            progress.update(bar, completed=state["samples"] if max_samples is not None else state["seconds"], step=state["step"],
                            loss=loss_value, rate=(state["samples"] - 0) / max(state["seconds"], 1e-9))
            if now - last_checkpoint >= checkpoint_every_s and state["step"] % accumulate == 0:
                _save_checkpoint(out, model, optimizer, state)
                last_checkpoint = now
    _save_checkpoint(out, model, optimizer, state)
    model.eval()
    calibrated = calibrate(model, tokenizer, landmarks, task.reference)
    save_bundle(out, model, tokenizer, calibrated)
    report = evaluate_bundle(Embedder(model, tokenizer, calibrated), corpus, quick=quick_eval) if evaluate else {}
    report["training"] = {"steps": state["step"], "samples": state["samples"], "seconds": round(state["seconds"], 1),
                          "final_loss": loss_value, "corpus": corpus.name, "model": config.model}
    atomic_write_json(out / "eval.json", report)
    return TrainResult(state["step"], state["samples"], state["seconds"], loss_value, report)


def evaluate_bundle(embedder: Embedder, corpus, quick: bool = False) -> dict:
    """Run the evaluation suite on relational prefixes and the absolute vector."""
    from protocol.corpora.wordnet import heldout_gloss_lemma, load_wordnet
    from protocol.evaluation.suite import run_suite

    wordnet = corpus if corpus.name.startswith("wordnet") else load_wordnet()
    dims = tuple(d for d in (16, 32, 64, 128) if d < embedder.dims) + (embedder.dims,)
    return run_suite({"relational": embedder.relational, "absolute": embedder.absolute}, heldout_gloss_lemma(wordnet),
                     dims=dims, quick=quick)


def _load_or_prepare(out: Path, corpus_spec: str, corpus, config: TrainingConfig) -> tuple[TextTokenizer, LandmarkSet]:
    """A resumed run must keep its tokenizer, landmarks and hyperparameters; a changed one is refused."""
    run_path = out / RUN_FILE
    run = {"corpus": corpus_spec, "corpus_digest": corpus.digest, "config": config.to_json()}
    if run_path.exists():
        previous = json.loads(run_path.read_text())
        if previous != run:
            raise CairnError(f"{out} holds a run with a different corpus or configuration; use a new --out directory")
        tokenizer = TextTokenizer.load(out / "run", config_for_max_len(config))
        return tokenizer, LandmarkSet.load(out / "run" / LANDMARKS_FILE)
    tokenizer, landmarks = prepare_run(corpus, config)
    tokenizer.save(out / "run")
    landmarks.save(out / "run" / LANDMARKS_FILE)
    atomic_write_json(run_path, run)
    return tokenizer, landmarks


def config_for_max_len(config: TrainingConfig) -> int:
    from protocol.encoder import config_for

    return config_for(config.model).max_len


def _save_checkpoint(out: Path, model: Encoder, optimizer: torch.optim.Optimizer, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state, "rng": torch.get_rng_state()}, buffer)
    atomic_write_bytes(out / CHECKPOINT_FILE, buffer.getvalue())


def _load_checkpoint(out: Path, model: Encoder, optimizer: torch.optim.Optimizer) -> dict:
    path = out / CHECKPOINT_FILE
    if not path.exists():
        return {"step": 0, "samples": 0, "offset": 0, "seconds": 0.0}
    try:
        checkpoint = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        torch.set_rng_state(checkpoint["rng"].cpu())
    except (RuntimeError, KeyError, EOFError, OSError, pickle.UnpicklingError) as error:  # a non-checkpoint file: UnpicklingError
        raise CairnError(f"{path}: unreadable checkpoint ({str(error).splitlines()[0]}); move it away to start over") from None
    return dict(checkpoint["state"])
