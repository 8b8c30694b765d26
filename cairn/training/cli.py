"""`cairn train` (single-process baseline) and `cairn embed` (embeddings from a release or bundle)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import click

from cairn.protocol.errors import CairnError
from cairn.protocol.settings import device_option
from cairn.cli_options import training_config, training_options


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
@click.option(
    "--corpus", default="wordnet", show_default=True, help="wordnet | jsonl:PATH | hf:NAME:COL_A:COL_B[:SPLIT] | hf-json:PATH:COL_A:COL_B"
)
@training_options
@click.option(
    "--minutes", type=click.FloatRange(min=0, min_open=True), help="wall-clock training budget (resumed runs count time already spent)"
)
@click.option("--max-samples", type=click.IntRange(min=1), help="stop after this many training samples")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output directory (resumes if it holds a checkpoint)")
@click.option(
    "--accumulate",
    type=click.IntRange(min=1, max=4096),
    default=1,
    show_default=True,
    help="batches per update (single-process twin of a swarm's target batch)",
)
@click.option(
    "--init-seed",
    type=click.IntRange(min=0),
    show_default="--seed",
    help="seed of the initial weights and dropout; runs that "
    "differ only in --init-seed/--data-seed/--shard share one tokenizer and landmark set (cross-run stability)",
)
@click.option(
    "--data-seed",
    type=click.IntRange(min=0),
    show_default="the corpus order",
    help="shuffle the training pairs with this seed before batching",
)
@click.option("--shard", callback=_parse_shard, metavar="I/N", help="train on shard I of N only (every N-th training pair, from the I-th)")
@click.option(
    "--compat-with",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="a release (or bundle) to stay compatible with: typically resume a run with its previous release here to train "
    "the next one, so task models trained on that release keep working",
)
@click.option(
    "--start-from",
    type=click.Path(path_type=Path, exists=True, file_okay=False),
    help="start from this release's (or bundle's) weights instead of the configured initialisation: a new run "
    "that continues it (same vocabulary)",
)
@click.option(
    "--compat-weight",
    type=click.FloatRange(min=0.0, min_open=True),
    default=1.0,
    show_default=True,
    help="weight of the compatibility term (bench/compat_loss.py: 1 kept heads at >= 97 %, 10 cost retrieval quality)",
)
@device_option()
@click.option("--quick-eval", is_flag=True, help="evaluate on subsamples (faster, noisier)")
@click.option("--no-eval", is_flag=True)
def train(
    corpus: str,
    minutes: float | None,
    max_samples: int | None,
    out: Path,
    accumulate: int,
    init_seed: int | None,
    data_seed: int | None,
    shard: tuple[int, int] | None,
    compat_with: Path | None,
    start_from: Path | None,
    compat_weight: float,
    device: str,
    quick_eval: bool,
    no_eval: bool,
    **settings,
) -> None:
    """Train the encoder in one process; write encoder, tokenizer, landmarks and eval report to OUT.

    A resumed run (OUT holds a checkpoint) must be given the same options, seeds and shard.
    """
    from cairn.evaluation.report import print_report
    from cairn.training.trainer import train as run_training

    config = training_config(settings)
    result = run_training(
        corpus,
        out,
        config,
        minutes=minutes,
        max_samples=max_samples,
        device=device,
        accumulate=accumulate,
        evaluate=not no_eval,
        quick_eval=quick_eval,
        init_seed=init_seed,
        data_seed=data_seed,
        shard=shard,
        compat_with=compat_with,
        compat_weight=compat_weight,
        start_from=start_from,
    )
    print_report(result.report)
    click.echo(f"encoder, tokenizer, landmarks and eval.json written to {out}")


@click.command()
@click.option(
    "--release", "release_dir", type=click.Path(path_type=Path), required=True, help="an installed release (or trained bundle) directory"
)
@click.option("--dims", type=click.IntRange(min=1), default=None, help="first m relational coordinates (default: all K)")
@click.option("--absolute", is_flag=True, help="print the absolute (pooled) vector instead of the relational one")
@click.option("--file", "text_file", type=click.Path(path_type=Path), help="read texts from a file, one per line")
@device_option()
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAIRN_CACHE_DIR",
    help="where `cairn release pull` keeps pinned roots and its install record (default: ~/.cache/cairn)",
)
@click.argument("texts", nargs=-1)
def embed(
    release_dir: Path, dims: int | None, absolute: bool, text_file: Path | None, texts: tuple[str, ...], device: str, cache_dir: Path | None
) -> None:
    """Print one JSON line per text: {"text": ..., "embedding": [...]}."""
    from cairn.protocol.embedder import load_bundle
    from cairn.releases import check_release
    from cairn.textinput import gather_texts

    lines = gather_texts(texts, text_file)
    check_release(release_dir, cache_dir, warn=lambda message: click.echo(f"warning: {message}", err=True))  # verified before use
    embedder = load_bundle(release_dir, device)
    if dims is not None and not 1 <= dims <= embedder.dims:
        raise CairnError(f"--dims must be between 1 and {embedder.dims}")
    vectors = embedder.absolute(lines) if absolute else embedder.embed(lines, dims)
    for text, vector in zip(lines, vectors):
        sys.stdout.write(json.dumps({"text": text, "embedding": [round(float(v), 6) for v in vector]}) + "\n")
