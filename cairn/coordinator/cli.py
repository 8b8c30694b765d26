"""`cairn coordinator init | run | release | extend-landmarks | keys | export-root-key`: operate a run's coordinator."""

from __future__ import annotations

import time
from pathlib import Path

import click

from cairn.protocol.errors import CairnError
from cairn.protocol.run_config import ObjectiveConfig
from cairn.protocol.settings import config_option
from cairn.cli_options import key_passphrase, passphrase_option, run_settings, swarm_options, training_options
from cairn.coordinator.keys_cli import keys

# bench/compat_loss.py: weight 1 kept a BBC head trained on release N at >= 97 % on the next two releases
COMPAT_WEIGHT = 1.0


outside_reference_option = click.option(
    "--outside-reference/--no-outside-reference",
    default=True,
    show_default=True,
    help="report each release's mutual kNN with all-MiniLM-L6-v2 (needs the reference extra installed) and its scores against the "
    "TF-IDF+SVD yardstick; init prepares both (about a minute of CPU once per machine) so no release pays for it",
)


@click.group()
def coordinator() -> None:
    """Operate a run's coordinator: bootstrap node, ledger and signed releases."""


coordinator.add_command(keys)


@coordinator.command()
@click.option("--workdir", type=click.Path(path_type=Path), required=True)
@click.option("--run-id", default="cairn-wordnet", show_default=True, help="letters, digits, '.' and '-'")
@click.option("--corpus", default="wordnet", show_default=True)
@training_options
@config_option(
    ObjectiveConfig,
    "compat_weight",
    default=COMPAT_WEIGHT,
    help="keep each release compatible with the one before: peers add this weight x the drift of their relational "
    "coordinates from the latest signed release (0: off; bench/compat_loss.py)",
)
@swarm_options
@click.option(
    "--init",
    "init_from",
    type=click.Choice(["fresh", "release"]),
    show_default="release for a distilled start, else fresh",
    help="what a peer alone in the swarm starts from: a fresh seeded model or the latest signed release",
)
@outside_reference_option
@passphrase_option
def init(
    workdir: Path, run_id: str, corpus: str, init_from: str | None, outside_reference: bool, passphrase_file: Path | None, **settings
) -> None:
    """Write the run configuration, create the signing keys and the release repository (with the start release
    when the run starts from a distilled table)."""
    from cairn.coordinator.init import init_workdir
    from cairn.protocol.dht_keys import RunKeys

    try:
        RunKeys(run_id)
    except ValueError as error:
        raise CairnError(str(error)) from None
    training, swarm = run_settings(settings)
    passphrase = key_passphrase(passphrase_file)
    config = init_workdir(workdir, run_id, corpus, training, swarm, init_from, outside_reference, passphrase=passphrase)
    click.echo(f"initialised run {config.run_id} in {workdir}")
    click.echo(f"  landmark set v{config.landmarks_version} {config.landmarks_digest[:16]}…, tokenizer {config.tokenizer_digest[:16]}…")
    if config.init == "release":
        click.echo("  peers start from the latest signed release")
    if passphrase is None:
        click.echo(
            "  signing keys are stored unencrypted (fine for a development run): for a public run set $CAIRN_KEY_PASSPHRASE "
            f"or --passphrase-file, then `cairn coordinator keys encrypt --workdir {workdir}`"
        )
    click.echo(f"  keep the root key offline: cairn coordinator keys export-root --workdir {workdir} --out DIR")


@coordinator.command()
@click.option("--workdir", type=click.Path(path_type=Path), required=True)
@click.option("--host", default="0.0.0.0", show_default=True, help="interface for the DHT")
@click.option("--port", type=click.IntRange(0, 65535), default=31337, show_default=True, help="fixed DHT port: peers join here")
@click.option("--http-host", default="0.0.0.0", show_default=True)
@click.option("--http-port", type=click.IntRange(0, 65535), default=8700, show_default=True, help="release repository over HTTP")
@click.option("--announce-host", help="public address to put in the join address and repository URL")
@click.option(
    "--release-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="cut a release every R global steps' worth of samples (R x --target-batch-size; under diloco at the first outer round past it; 0: on request)",
)
@click.option("--spot-check-seconds", type=click.FloatRange(min=1.0, max=86_400.0), default=20.0, show_default=True)
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), help="also serve Prometheus /metrics on this port (it is always on the release port)"
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True)
@outside_reference_option
@passphrase_option
def run(
    workdir: Path,
    host: str,
    port: int,
    http_host: str,
    http_port: int,
    announce_host: str | None,
    release_every: int,
    spot_check_seconds: float,
    metrics_port: int | None,
    metrics_host: str,
    outside_reference: bool,
    passphrase_file: Path | None,
) -> None:
    """Bootstrap the DHT, keep the ledger, serve and cut signed releases (Ctrl+C stops)."""
    import logging

    from cairn.coordinator.node import CoordinatorOptions
    from cairn.coordinator.service import run_coordinator

    from cairn.network.logs import quiet_hivemind_logs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    quiet_hivemind_logs()
    run_coordinator(
        CoordinatorOptions(
            workdir=workdir,
            host=host,
            port=port,
            http_host=http_host,
            http_port=http_port,
            announce_host=announce_host,
            release_every=release_every,
            spot_check_seconds=spot_check_seconds,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            outside_reference=outside_reference,
            key_passphrase=key_passphrase(passphrase_file),
        )
    )


@coordinator.command()
@click.option("--workdir", type=click.Path(path_type=Path), required=True)
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=300.0, show_default=True)
def release(workdir: Path, timeout: float) -> None:
    """Ask the running coordinator to cut a release now, and wait for it."""
    from cairn.protocol.workdir import Workdir
    from cairn.protocol.ledger_schema import latest_release_version

    wd = Workdir(workdir)
    wd.load_run_config()
    before = latest_release_version(wd.ledger)
    wd.request_release()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = latest_release_version(wd.ledger)
        if latest is not None and latest != before:
            click.echo(f"released {latest}")
            return
        time.sleep(1.0)
    raise CairnError(f"no release within {timeout:.0f} s; is `cairn coordinator run --workdir {workdir}` running with peers training?")


@coordinator.command("extend-landmarks")
@click.option("--workdir", type=click.Path(path_type=Path), required=True)
@click.option("--count", type=click.IntRange(1, 4096), default=64, show_default=True, help="new anchors to append")
@passphrase_option
def extend_landmarks_command(workdir: Path, count: int, passphrase_file: Path | None) -> None:
    """Append anchors as a new landmark-set version (its prefix is the old set) and sign it.

    Releases cut after this use the new version; restart a running coordinator to pick it up.
    """
    from cairn.coordinator.landmark_versions import extend_landmarks
    from cairn.coordinator.publishing.repository import ReleaseRepository
    from cairn.protocol.workdir import Workdir
    from cairn.corpora import load_corpus

    wd = Workdir(workdir)
    config = wd.load_run_config()
    passphrase = key_passphrase(passphrase_file)  # a bad passphrase source is refused before the new set is written
    newer = extend_landmarks(wd, load_corpus(config.corpus), count)
    from cairn.coordinator.landmark_versions import version_path

    ReleaseRepository(workdir, passphrase=passphrase).publish_landmarks(version_path(wd, newer.version), newer.version)
    click.echo(f"landmark set v{newer.version}: {newer.size} anchors ({count} appended), digest {newer.digest[:16]}…, signed")


@coordinator.command("export-root-key")
@click.option("--workdir", type=click.Path(path_type=Path), required=True)
@click.option("--to", "destination", type=click.Path(path_type=Path), required=True)
def export_root_key(workdir: Path, destination: Path) -> None:
    """Move the one TUF root key out of the workdir to FILE (0600); `keys export-root --out DIR` moves several."""
    from cairn.coordinator.publishing.repository import ReleaseRepository

    ReleaseRepository(workdir).export_root_key(destination)
    click.echo(f"root key written to {destination}; store it offline")
