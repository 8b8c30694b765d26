"""The single-process trainer: the baseline every swarm run must match.

Plain loop (in the spirit of nanoGPT's train.py): batches of pairs -> loss -> AdamW, with atomic
checkpoints so a killed run resumes where it stopped, and an evaluation report at the end.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cairn.corpora import load_corpus
from cairn.protocol.embedder import Embedder, calibrate, save_bundle
from cairn.protocol.encoder import TextEncoder, config_for, pick_device
from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import atomic_write_bytes, atomic_write_json
from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet
from cairn.protocol.tokenizer import TextTokenizer
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import (
    CollapseDetector,
    ParentRelease,
    TrainingTask,
    batches,
    initial_encoder,
    make_optimizer,
    make_scheduler,
    prepare_run,
    reference_texts,
)

CHECKPOINT_FILE = "checkpoint.pt"
RUN_FILE = "run.json"
LOSS_WINDOW = 50  # TrainResult.recent_losses keeps the losses of this many last steps


@dataclass
class TrainResult:
    steps: int
    samples: int
    seconds: float
    final_loss: float
    report: dict
    recent_losses: list[float] = field(default_factory=list)  # the last LOSS_WINDOW training losses of this call


def train(
    corpus_spec: str,
    out: Path,
    config: TrainingConfig,
    minutes: float | None = None,
    max_samples: int | None = None,
    device: str = "auto",
    checkpoint_every_s: float = 60.0,
    accumulate: int = 1,
    evaluate: bool = True,
    quick_eval: bool = False,
    show_progress: bool = True,
    init_seed: int | None = None,
    data_seed: int | None = None,
    shard: tuple[int, int] | None = None,
    landmarks: LandmarkSet | None = None,
    compat_with: Path | None = None,
    compat_weight: float = 1.0,
    start_from: Path | None = None,
) -> TrainResult:
    """Train (or resume) until `minutes` of wall time or `max_samples` samples, then save and evaluate.

    `accumulate` > 1 sums gradients over that many batches per update: the single-process twin of a
    swarm whose target batch is batch_size * accumulate.

    For cross-run stability experiments: `init_seed` seeds the initial weights and dropout (default
    config.seed); `data_seed` shuffles the training pairs with random.Random(data_seed) before batching
    (default: the corpus order); `shard` (i, n) trains on corpus.shard(i, n) only; `landmarks` replaces
    the run's landmark set. The tokenizer, the landmark set (unless replaced) and the reference texts
    always come from config.seed, so runs that differ only in these share them. All four are recorded
    in run.json: a resume with other values is refused.

    `start_from` (a release or bundle directory) replaces the initial weights: a new run that continues it (a resumed
    run keeps its checkpoint's). `compat_with` (a release or bundle directory, typically this run's previous release) adds
    `compat_weight` x cairn.training.objective.compat_loss against it: the next release keeps task heads
    trained on that one working (bench/compat_loss.py). It applies to this call only, so a run can be
    resumed with it to train its next release; eval.json records it.
    """
    if minutes is None and max_samples is None:
        raise CairnError("give --minutes or --max-samples so training knows when to stop")
    init_seed = config.seed if init_seed is None else init_seed
    if shard is not None:
        shard = (int(shard[0]), int(shard[1]))
        if shard[1] < 1 or not 0 <= shard[0] < shard[1]:
            raise CairnError(f"shard {shard[0]}/{shard[1]}: need N >= 1 and 0 <= I < N")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(corpus_spec)
    pairs = training_pairs(corpus, data_seed, shard)
    if not pairs:
        raise CairnError(f"corpus {corpus_spec!r}" + (f" shard {shard[0]}/{shard[1]}" if shard else "") + " has no training pairs")
    seeds = {"init_seed": init_seed, "data_seed": data_seed, "shard": list(shard) if shard else None}
    tokenizer, landmarks = _load_or_prepare(out, corpus_spec, corpus, config, seeds, landmarks)
    model = (initial_encoder(config, tokenizer, init_seed) if start_from is None else _start_from(start_from, tokenizer)).to(
        pick_device(device)
    )
    optimizer = make_optimizer(model, config)
    scheduler = make_scheduler(optimizer, config)
    state = _load_checkpoint(out, model, optimizer, scheduler)
    task_config, parent = config, None
    if compat_with is not None:
        parent = _parent_release(compat_with)
        task_config = replace(config, objective=replace(config.objective, compat_weight=compat_weight))
    task = TrainingTask(model, tokenizer, landmarks, reference_texts(corpus, config.reference_size, config.seed), task_config, parent)
    model.train()

    started, last_checkpoint = time.monotonic(), time.monotonic()
    elapsed_before = state["seconds"]
    deadline = started + minutes * 60 - elapsed_before if minutes is not None else None
    loss_value = float("nan")
    recent_losses: deque[float] = deque(maxlen=LOSS_WINDOW)
    collapse, collapse_warned = CollapseDetector(), False
    progress = Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        TextColumn("step {task.fields[step]} loss {task.fields[loss]:.3f} {task.fields[rate]:.0f} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not show_progress,
    )
    total = max_samples if max_samples is not None else (minutes or 0) * 60
    with progress:
        bar = progress.add_task(
            "train",
            total=total,
            step=state["step"],
            loss=float("nan"),
            rate=0.0,
            completed=state["samples"] if max_samples is not None else elapsed_before,
        )
        for offset, batch in batches(pairs, config.batch_size, state["offset"]):  # the offset indexes `pairs`
            if state["step"] % accumulate == 0 and (
                (deadline is not None and time.monotonic() >= deadline) or (max_samples is not None and state["samples"] >= max_samples)
            ):
                break
            loss, parts = task.loss(batch)
            (loss / accumulate).backward()
            loss_value = parts["abs"]  # the absolute InfoNCE: chance is ln(batch size), whatever other terms are on
            if collapse.observe(len(batch), loss_value, parts["mean_cos"]) and not collapse_warned:
                progress.console.print(f"[yellow]warning:[/] {collapse.warning(len(batch), loss_value, parts['mean_cos'])}")
                collapse_warned = True
            recent_losses.append(loss_value)
            state.update(step=state["step"] + 1, samples=state["samples"] + len(batch), offset=offset)
            if state["step"] % accumulate == 0:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()  # the learning rate of update n is lr_factor(n), as in every peer
            now = time.monotonic()
            state["seconds"] = elapsed_before + now - started
            progress.update(
                bar,
                completed=state["samples"] if max_samples is not None else state["seconds"],
                step=state["step"],
                loss=loss_value,
                rate=(state["samples"] - 0) / max(state["seconds"], 1e-9),
            )
            if now - last_checkpoint >= checkpoint_every_s and state["step"] % accumulate == 0:
                _save_checkpoint(out, model, optimizer, scheduler, state)
                last_checkpoint = now
    _save_checkpoint(out, model, optimizer, scheduler, state)
    model.eval()
    calibrated = calibrate(model, tokenizer, landmarks, task.reference)
    save_bundle(out, model, tokenizer, calibrated)
    report = evaluate_bundle(Embedder(model, tokenizer, calibrated), corpus, quick=quick_eval) if evaluate else {}
    report["training"] = {
        "steps": state["step"],
        "samples": state["samples"],
        "seconds": round(state["seconds"], 1),
        "final_loss": loss_value,
        "collapsed": collapse.collapsed,
        "corpus": corpus.name,
        "model": config.model,
        **seeds,
        "compat_with": None if compat_with is None else str(compat_with),
        "compat_weight": compat_weight if compat_with else 0.0,
    }
    atomic_write_json(out / "eval.json", report)
    return TrainResult(state["step"], state["samples"], state["seconds"], loss_value, report, list(recent_losses))


def _start_from(directory: Path, tokenizer: TextTokenizer) -> TextEncoder:
    """The weights of a release or bundle to train on (a new run that continues it); it must share the run's tokenizer."""
    from cairn.tasks.api import open_release

    bundle = open_release(Path(directory), "cpu").embedder
    if bundle.tokenizer.digest() != tokenizer.digest():
        raise CairnError(f"{directory}: its tokenizer differs from this run's; --start-from needs a release of the same vocabulary")
    return bundle.model.train()


def _parent_release(directory: Path) -> ParentRelease:
    """The release (or `cairn train` bundle) to stay compatible with, verified against its manifest if it has one."""
    from cairn.tasks.api import open_release

    return ParentRelease(open_release(Path(directory), "cpu").embedder)


def training_pairs(corpus, data_seed: int | None = None, shard: tuple[int, int] | None = None) -> list:
    """The pair list a run batches through: corpus.shard(i, n) or all training pairs, shuffled with
    random.Random(data_seed) when given. Deterministic, so a resumed run's offset indexes the same list."""
    pairs = list(corpus.shard(*shard)) if shard else list(corpus.train)
    if data_seed is not None:
        random.Random(data_seed).shuffle(pairs)
    return pairs


def evaluate_bundle(embedder: Embedder, corpus, quick: bool = False) -> dict:
    """Run the evaluation suite on relational prefixes and the absolute vector."""
    from cairn.corpora.wordnet import heldout_gloss_lemma, load_wordnet
    from cairn.evaluation.suite import run_suite

    wordnet = corpus if corpus.name.startswith("wordnet") else load_wordnet()
    dims = tuple(d for d in (16, 32, 64, 128) if d < embedder.dims) + (embedder.dims,)
    return run_suite(
        {"relational": embedder.relational, "absolute": embedder.absolute}, heldout_gloss_lemma(wordnet), dims=dims, quick=quick
    )


def _load_or_prepare(
    out: Path, corpus_spec: str, corpus, config: TrainingConfig, seeds: dict, landmarks: LandmarkSet | None
) -> tuple[TextTokenizer, LandmarkSet]:
    """A resumed run must keep its tokenizer, landmarks, hyperparameters and seeds; a changed one is refused."""
    run_path = out / RUN_FILE
    run = {
        "corpus": corpus_spec,
        "corpus_digest": corpus.digest,
        "config": config.to_json(),
        **seeds,
        "landmarks_override": landmarks.digest if landmarks is not None else None,
    }
    if run_path.exists():
        previous = json.loads(run_path.read_text())
        # runs written before the seeds were recorded used config.seed, the corpus order, all pairs, their own landmarks
        if isinstance(previous, dict) and isinstance(previous.get("config"), dict):
            previous = {
                "init_seed": previous["config"].get("seed"),
                "data_seed": None,
                "shard": None,
                "landmarks_override": None,
                **previous,
            }
        if previous != run:
            raise CairnError(
                f"{out} holds a run with a different corpus or configuration ({_differences(previous, run)}); use a new --out directory"
            )
        tokenizer = TextTokenizer.load(out / "run", config_for(config.model).max_len)
        return tokenizer, LandmarkSet.load(out / "run" / LANDMARKS_FILE)
    tokenizer, prepared = prepare_run(corpus, config)
    landmarks = landmarks if landmarks is not None else prepared
    tokenizer.save(out / "run")
    landmarks.save(out / "run" / LANDMARKS_FILE)
    atomic_write_json(run_path, run)
    return tokenizer, landmarks


def _differences(previous: dict, run: dict) -> str:
    """`key: old -> new` for what changed (config fields by name; digests and specs abbreviated)."""

    def short(value) -> str:
        text = json.dumps(value)
        return text if len(text) <= 40 else text[:37] + "..."

    changes = []
    for key in sorted(set(previous) | set(run)):
        old, new = previous.get(key), run.get(key)
        if old == new:
            continue
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            changes += [
                f"config.{name}: {short(old.get(name))} -> {short(new.get(name))}"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            ]
        else:
            changes.append(f"{key}: {short(old)} -> {short(new)}")
    return ", ".join(changes)


def _save_checkpoint(out: Path, model: TextEncoder, optimizer: torch.optim.Optimizer, scheduler, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "state": state,
            "rng": torch.get_rng_state(),
        },
        buffer,
    )
    atomic_write_bytes(out / CHECKPOINT_FILE, buffer.getvalue())


def _load_checkpoint(out: Path, model: TextEncoder, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    path = out / CHECKPOINT_FILE
    if not path.exists():
        return {"step": 0, "samples": 0, "offset": 0, "seconds": 0.0}
    try:
        checkpoint = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        torch.set_rng_state(checkpoint["rng"].cpu())
    except (RuntimeError, KeyError, EOFError, OSError, pickle.UnpicklingError) as error:  # a non-checkpoint file: UnpicklingError
        raise CairnError(f"{path}: unreadable checkpoint ({str(error).splitlines()[0]}); move it away to start over") from None
    return dict(checkpoint["state"])
