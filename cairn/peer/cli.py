"""`cairn peer run`: contribute this machine's CPU or GPU to a Cairn training run."""

from __future__ import annotations

from pathlib import Path

import click

from cairn.protocol.run_config import COMPRESSIONS, TrainingConfig
from cairn.protocol.settings import click_type


@click.group()
def peer() -> None:
    """Run a volunteer peer."""


@peer.command("run")
@click.option("--join", "join", multiple=True, required=True, help="the coordinator's join address (/ip4/.../tcp/.../p2p/...)")
@click.option("--name", default="anonymous", show_default=True, help="display name on the public leaderboard (max 64 chars)")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--identity", type=click.Path(path_type=Path), help="key file naming this contributor (default: WORKDIR/identity.pem)")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("~/.cache/cairn/peer").expanduser(), show_default=True)
@click.option("--compression", type=click.Choice(COMPRESSIONS), help="override the run's gradient compression")
@click.option("--client-mode", is_flag=True, help="behind NAT: dial out only, accept no connections")
@click.option("--host", default="0.0.0.0", show_default=True, help="interface to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="TCP port to listen on (0: any free port)")
@click.option(
    "--batch-size",
    type=click_type(TrainingConfig, "batch_size"),
    help="samples per local step (default: the run's; InfoNCE needs at least 2)",
)
@click.option(
    "--micro-batch",
    type=click.IntRange(min=1),
    help="texts per forward pass: the batch's loss is taken whole, its "
    "forward and backward passes in chunks of this size (default: sized from free GPU memory; the whole batch on CPU)",
)
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="serve Prometheus /metrics on this port")
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@click.option("--max-samples", type=click.IntRange(min=1), help="leave after this many samples")
@click.option("--minutes", "max_minutes", type=click.FloatRange(min=0, min_open=True), help="leave after this many minutes")
@click.option(
    "--wait-for-peers",
    type=click.IntRange(1, 1024),
    default=1,
    show_default=True,
    help="before the first step, wait up to 30 s to see this many peers",
)
@click.option("--torch-threads", type=click.IntRange(1, 1024), help="torch intra-op threads (one per core you give)")
@click.option("--no-progress", is_flag=True, help="no live progress line (for logs)")
def run(
    join: tuple[str, ...],
    name: str,
    device: str,
    identity: Path | None,
    workdir: Path,
    compression: str | None,
    client_mode: bool,
    host: str,
    port: int,
    batch_size: int | None,
    micro_batch: int | None,
    metrics_port: int | None,
    metrics_host: str,
    max_samples: int | None,
    max_minutes: float | None,
    wait_for_peers: int,
    torch_threads: int | None,
    no_progress: bool,
) -> None:
    """Join a run and train until Ctrl+C (the shard lease is released and hivemind shut down cleanly)."""
    import logging

    from cairn.peer.node import PeerOptions, StopFlag, run_peer

    # our own notices (a new compatibility parent, release pulls) on stderr; hivemind's stay quiet
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger("cairn").addHandler(handler)
    logging.getLogger("cairn").setLevel(logging.INFO)
    stop = StopFlag()
    stop.install()
    options = PeerOptions(
        join=list(join),
        workdir=workdir,
        name=name,
        device=device,
        identity=identity,
        compression=compression,
        client_mode=client_mode,
        host=host,
        port=port,
        batch_size=batch_size,
        micro_batch=micro_batch,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        max_samples=max_samples,
        max_minutes=max_minutes,
        wait_for_peers=wait_for_peers,
        progress=not no_progress,
        torch_threads=torch_threads,
    )
    stats = run_peer(options, stop)
    click.echo(f"{name}: left after {stats.samples} samples in {stats.steps} steps")
    leave_without_finalisation()


def leave_without_finalisation() -> None:
    """Exit 0 now, skipping the interpreter's finalisation: by here the lease is released, the state and summary are
    saved and hivemind is shut down. hivemind's averagers leave daemon threads behind, and finalising the interpreter
    while one is inside native code aborted a peer that had left cleanly (exit -6, "terminate called without an
    active exception", once in a CI run of the kill -9 test), which reads as a crash to whoever started it."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
