"""`cairn dashboard serve`: the public dashboard over a coordinator's workdir (read-only)."""

from __future__ import annotations

import logging
from pathlib import Path

import click


@click.group()
def dashboard() -> None:
    """The public dashboard: swarm, leaderboard, convergence, releases and landmark sets."""


@dashboard.command("serve")
@click.option(
    "--workdir", required=True, type=click.Path(path_type=Path, file_okay=False), help="the coordinator's workdir (read, never written)"
)
@click.option("--host", default="127.0.0.1", show_default=True, help="interface to listen on")
@click.option("--port", default=8780, show_default=True, type=click.IntRange(0, 65535))
@click.option("--dht-join", "dht_join", multiple=True, help="a swarm join address: also show live DHT records (optional)")
@click.option("--run-id", help="run id for --dht-join (default: the one in WORKDIR/run.json)")
@click.option("--rate-limit", default=10.0, show_default=True, type=click.FloatRange(min=0.01), help="requests per second per client")
@click.option("--rate-burst", default=60.0, show_default=True, type=click.FloatRange(min=1), help="burst size per client")
def serve(workdir: Path, host: str, port: int, dht_join: tuple[str, ...], run_id: str | None, rate_limit: float, rate_burst: float) -> None:
    """Serve the dashboard for the coordinator workdir DIR."""
    from aiohttp import web

    from cairn.dashboard.app import DashboardConfig, make_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = DashboardConfig(workdir=workdir, rate_per_second=rate_limit, rate_burst=rate_burst, dht_join=dht_join, run_id=run_id)
    app = make_app(config)
    click.echo(f"dashboard of {workdir} on http://{host}:{port}/")
    web.run_app(app, host=host, port=port, print=None, access_log=None)
