"""Human-readable rendering of evaluation reports (rich tables), shared by `cairn train` and releases."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

METRICS = ("gloss_lemma_r1", "gloss_lemma_r10", "simlex_spearman", "wordsim_spearman", "bbc_probe_acc")


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Evaluation", show_lines=False)
    table.add_column("vector")
    table.add_column("dims", justify="right")
    for metric in METRICS:
        table.add_column(metric.replace("_", " "), justify="right")
    for row_name, by_dims in report.items():
        if row_name in ("meta", "training") or not isinstance(by_dims, dict):
            continue
        for dims, metrics in by_dims.items():
            if not isinstance(metrics, dict):
                continue
            table.add_row(row_name, str(dims), *(_fmt(metrics.get(m)) for m in METRICS))
    console.print(table)
    training = report.get("training")
    if training:
        console.print(
            f"trained {training['steps']} steps, {training['samples']} samples in {training['seconds']} s; final loss {training['final_loss']:.3f}"
        )


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"
