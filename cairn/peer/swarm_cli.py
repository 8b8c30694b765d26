"""`cairn swarm`: the README's main job — a coordinator, N peers and the dashboard on loopback."""

from __future__ import annotations

from pathlib import Path

import click

from cairn.cli_options import swarm_options, training_options


@click.command()
@click.option("--peers", type=click.IntRange(min=1, max=64), default=2, show_default=True)
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True), help="stop after this long (default: until Ctrl+C)")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("cairn-swarm"), show_default=True)
@click.option("--corpus", default="wordnet", show_default=True)
@training_options
@swarm_options
@click.option(
    "--release-every",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="cut a signed release every R global steps' worth of samples (R x --target-batch-size; under diloco at the first outer round past it)",
)
@click.option("--no-dashboard", is_flag=True)
def swarm(peers: int, minutes: float | None, workdir: Path, corpus: str, release_every: int, no_dashboard: bool, **settings) -> None:
    """Run a whole Cairn network on this machine; Ctrl+C stops everything cleanly.

    The training and swarm options apply when the workdir is new (they go to `cairn coordinator init`); a second
    run on the same workdir continues the first with its own configuration.
    """
    from cairn.extras import require_extra

    require_extra("swarm")
    from cairn.peer.swarm import SwarmPlan, run_swarm
    from cairn.cli_options import init_arguments

    run_swarm(
        SwarmPlan(
            workdir=workdir,
            peers=peers,
            minutes=minutes,
            corpus=corpus,
            init_args=init_arguments(settings),
            release_every=release_every,
            dashboard=not no_dashboard,
        )
    )
