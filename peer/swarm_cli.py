"""`cairn swarm`: the README's main job — a coordinator, N peers and the dashboard on loopback."""

from __future__ import annotations

from pathlib import Path

import click

from protocol.run_config import COMPRESSIONS


@click.command()
@click.option("--peers", type=int, default=2, show_default=True)
@click.option("--minutes", type=float, help="stop after this long (default: until Ctrl+C)")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("cairn-swarm"), show_default=True)
@click.option("--corpus", default="wordnet", show_default=True)
@click.option("--model", default="tiny", show_default=True, type=click.Choice(["tiny", "small"]))
@click.option("--target-batch-size", type=int, default=2048, show_default=True)
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="blockwise8", show_default=True)
@click.option("--release-every", type=int, default=10, show_default=True, help="cut a signed release every R global steps")
@click.option("--no-dashboard", is_flag=True)
def swarm(peers: int, minutes: float | None, workdir: Path, corpus: str, model: str, target_batch_size: int, compression: str,
          release_every: int, no_dashboard: bool) -> None:
    """Run a whole Cairn network on this machine; Ctrl+C stops everything cleanly."""
    from peer.swarm import SwarmPlan, run_swarm

    if peers < 1:
        raise click.BadParameter("need at least one peer", param_hint="--peers")
    run_swarm(SwarmPlan(workdir=workdir, peers=peers, minutes=minutes, corpus=corpus, model=model, target_batch_size=target_batch_size,
                        compression=compression, release_every=release_every, dashboard=not no_dashboard))
