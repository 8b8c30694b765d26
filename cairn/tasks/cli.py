"""`cairn task train | eval | predict`: task models on a release's relational embedding."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cairn.protocol.errors import CairnError

DEVICE = click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
RELEASE = click.option(
    "--release",
    "release_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="an installed release directory (checked against its manifest) or a bundle from `cairn train`",
)


@click.group()
def task() -> None:
    """Train task models on a release's embeddings and reuse them on later releases without retraining."""


@task.command("train")
@RELEASE
@click.option("--data", "data_file", type=click.Path(path_type=Path), required=True, help="labelled examples: .jsonl, .csv or .tsv")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--dims", type=click.IntRange(min=1), default=None, help="first m relational coordinates (default: all K)")
@click.option("--kind", type=click.Choice(["logreg", "mlp"]), default="logreg", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="task model directory to write")
@DEVICE
def train_command(
    release_dir: Path, data_file: Path, text_column: str, label_column: str, dims: int | None, kind: str, seed: int, out: Path, device: str
) -> None:
    """Fit a logistic-regression or MLP task model and save it to OUT."""
    from cairn.tasks.api import open_release, train_task_model
    from cairn.tasks.data import read_labelled

    data = read_labelled(data_file, text_column, label_column)  # read before loading the encoder: bad input fails fast
    release = open_release(release_dir, device)
    model = train_task_model(
        release,
        data.texts,
        data.labels,
        dims=dims,
        kind=kind,
        seed=seed,
        training_info={"source": data.source, "text_column": text_column, "label_column": label_column},
    )
    model.save(out)
    click.echo(
        f"{kind} task model on {model.dims} dims, {len(model.labels)} labels, {len(data)} examples "
        f"(train accuracy {model.training['train_accuracy']:.3f}) written to {out}"
    )


@task.command("eval")
@RELEASE
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="a task model directory")
@click.option("--data", "data_file", type=click.Path(path_type=Path), required=True, help="labelled examples: .jsonl, .csv or .tsv")
@click.option("--text-column", default=None, help="default: the column the model was trained with")
@click.option("--label-column", default=None, help="default: the column the model was trained with")
@DEVICE
def eval_command(
    release_dir: Path, model_dir: Path, data_file: Path, text_column: str | None, label_column: str | None, device: str
) -> None:
    """Print one JSON object: accuracy and macro-F1 of the task model on DATA embedded by RELEASE."""
    from cairn.tasks.api import evaluate_task_model, open_release
    from cairn.tasks.data import read_labelled
    from cairn.tasks.model import load_task_model

    model = load_task_model(model_dir)
    data = read_labelled(
        data_file, text_column or model.training.get("text_column", "text"), label_column or model.training.get("label_column", "label")
    )
    release = open_release(release_dir, device)
    model.check_compatible(release.landmarks)
    report = evaluate_task_model(model, release, data.texts, data.labels)
    sys.stdout.write(json.dumps(report) + "\n")


@task.command("predict")
@RELEASE
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True, help="a task model directory")
@click.option("--file", "text_file", type=click.Path(path_type=Path), help="read texts from a file, one per line")
@DEVICE
@click.argument("texts", nargs=-1)
def predict_command(release_dir: Path, model_dir: Path, text_file: Path | None, texts: tuple[str, ...], device: str) -> None:
    """Print one JSON line per text: {"text": ..., "label": ...}."""
    from cairn.tasks.api import open_release
    from cairn.tasks.model import load_task_model

    lines = list(texts)
    if text_file is not None:
        try:
            lines += [line for line in text_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise CairnError(f"{text_file}: cannot read texts ({error.__class__.__name__})") from None
    if not lines:
        raise CairnError("no texts given: pass TEXT arguments or --file")
    model = load_task_model(model_dir)
    release = open_release(release_dir, device)
    for text, label in zip(lines, model.predict(release.embedder, lines)):
        sys.stdout.write(json.dumps({"text": text, "label": label}) + "\n")
