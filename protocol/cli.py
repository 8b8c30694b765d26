"""`cairn train` (single-process baseline) and `cairn embed` (embeddings from a release or bundle)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from protocol.errors import CairnError


def _parse_shard(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """`I/N` -> (I, N), with N >= 1 and 0 <= I < N; anything else is a one-line usage error."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", value)
    if not match:
        raise click.BadParameter(f"{value!r} is not I/N (e.g. 0/2: the first of two shards)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise click.BadParameter(f"{value!r}: the shard count N must be at least 1")
    if not 0 <= index < count:
        raise click.BadParameter(f"{value!r}: the shard index I must be between 0 and N-1 = {count - 1}")
    return index, count


@click.command()
@click.option("--corpus", default="wordnet", show_default=True, help="wordnet | jsonl:PATH | hf:NAME:COL_A:COL_B[:SPLIT] | hf-json:PATH:COL_A:COL_B")
@click.option("--model", "model_size", default="tiny", show_default=True, type=click.Choice(["tiny", "small"]))
@click.option("--minutes", type=float, help="wall-clock training budget (resumed runs count time already spent)")
@click.option("--max-samples", type=int, help="stop after this many training samples")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output directory (resumes if it holds a checkpoint)")
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--accumulate", type=int, default=1, show_default=True, help="batches per update (single-process twin of a swarm's target batch)")
@click.option("--landmarks", "landmark_count", type=int, default=256, show_default=True)
@click.option("--landmark-order", type=click.Choice(["farthest", "random"]), default="farthest", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="seed of the landmark set and reference texts; also of the initial weights unless --init-seed is given")
@click.option("--init-seed", type=int, show_default="--seed", help="seed of the initial weights and dropout; runs that differ only in "
              "--init-seed/--data-seed/--shard share one tokenizer and landmark set (cross-run stability)")
@click.option("--data-seed", type=int, show_default="the corpus order", help="shuffle the training pairs with this seed before batching")
@click.option("--shard", callback=_parse_shard, metavar="I/N", help="train on shard I of N only (every N-th training pair, from the I-th)")
@click.option("--compat-with", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="a release (or bundle) to stay compatible with: typically resume a run with its previous release here to train "
              "the next one, so task models trained on that release keep working")
@click.option("--compat-weight", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
              help="weight of the compatibility term (bench/compat_loss.py: 1 kept heads at >= 97 %, 10 cost retrieval quality)")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--quick-eval", is_flag=True, help="evaluate on subsamples (faster, noisier)")
@click.option("--no-eval", is_flag=True)
def train(corpus: str, model_size: str, minutes: float | None, max_samples: int | None, out: Path, batch_size: int, lr: float, accumulate: int,
          landmark_count: int, landmark_order: str, seed: int, init_seed: int | None, data_seed: int | None, shard: tuple[int, int] | None,
          compat_with: Path | None, compat_weight: float, device: str, quick_eval: bool, no_eval: bool) -> None:
    """Train the encoder in one process; write encoder, tokenizer, landmarks and eval report to OUT.

    A resumed run (OUT holds a checkpoint) must be given the same options, seeds and shard.
    """
    from protocol.report import print_report
    from protocol.trainer import train as run_training
    from protocol.training import TrainingConfig

    if landmark_count < 16:
        raise CairnError("--landmarks must be at least 16")
    config = TrainingConfig(model=model_size, batch_size=batch_size, lr=lr, landmarks=landmark_count, landmark_order=landmark_order, seed=seed)
    result = run_training(corpus, out, config, minutes=minutes, max_samples=max_samples, device=device, accumulate=accumulate,
                          evaluate=not no_eval, quick_eval=quick_eval, init_seed=init_seed, data_seed=data_seed, shard=shard,
                          compat_with=compat_with, compat_weight=compat_weight)
    print_report(result.report)
    click.echo(f"encoder, tokenizer, landmarks and eval.json written to {out}")


@click.command()
@click.option("--release", "release_dir", type=click.Path(path_type=Path), required=True, help="an installed release (or trained bundle) directory")
@click.option("--dims", type=int, default=None, help="first m relational coordinates (default: all K)")
@click.option("--absolute", is_flag=True, help="print the absolute (pooled) vector instead of the relational one")
@click.option("--file", "text_file", type=click.Path(path_type=Path), help="read texts from a file, one per line")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.argument("texts", nargs=-1)
def embed(release_dir: Path, dims: int | None, absolute: bool, text_file: Path | None, texts: tuple[str, ...], device: str) -> None:
    """Print one JSON line per text: {"text": ..., "embedding": [...]}."""
    from protocol.embedder import load_bundle
    from protocol.textinput import gather_texts

    lines = gather_texts(texts, text_file)
    embedder = load_bundle(release_dir, device)
    if dims is not None and not 1 <= dims <= embedder.dims:
        raise CairnError(f"--dims must be between 1 and {embedder.dims}")
    vectors = embedder.absolute(lines) if absolute else embedder.embed(lines, dims)
    for text, vector in zip(lines, vectors):
        sys.stdout.write(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in vector]}) + "\n")
