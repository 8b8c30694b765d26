"""`cairn release list|pull|verify`: the user's commands for signed releases.

Every refusal is a ReleaseError, which cairn.cli.main prints as one `error: ...` line with a
non-zero exit status; warnings (trust on first use, unpinned verification) go to stderr.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from cairn.protocol.errors import ReleaseError
from cairn.releases.client import ReleaseClient
from cairn.releases.verify import verify_installed

_root_option = click.option(
    "--root",
    "root_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Trusted root metadata obtained out of band (e.g. 1.root.json). Without it the server's root is trusted on first use.",
)
_cache_option = click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAIRN_CACHE_DIR",
    help="Where pinned roots and metadata are kept (default: ~/.cache/cairn).",
)


class _BarProgress:
    """Adapts a rich Progress to the client's DownloadProgress: one bar per file."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._task: TaskID | None = None

    def start(self, name: str, total: int) -> None:
        self._task = self._progress.add_task(name, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)


def _read_root(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise ReleaseError(f"cannot read root file {path}: {error.strerror or error}") from None


def _warner(console: Console):
    def warn(message: str) -> None:
        console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    return warn


@click.group()
def release() -> None:
    """List, pull and verify signed Cairn releases."""


@release.command("list")
@click.argument("url")
@_root_option
@_cache_option
def list_command(url: str, root_file: Path | None, cache_dir: Path | None) -> None:
    """List the releases signed in the repository at URL."""
    client = ReleaseClient(url, cache_dir, root=_read_root(root_file), warn=_warner(Console(stderr=True)))
    releases = client.list_releases()
    if not releases:
        click.echo(f"no releases published at {client.url}")
        return
    table = Table("version", "landmark set", "size", "files")
    for item in releases:
        latest = "  (latest)" if item is releases[-1] else ""
        table.add_row(
            f"{item.version}{latest}",
            f"v{item.landmarks.version} {item.landmarks.digest[:12]}",
            _size(item.total_length),
            str(len(item.files)),
        )
    Console().print(table)


@release.command()
@click.argument("url")
@click.option("--version", "version", metavar="X.Y.Z", help="Release to install (default: the latest).")
@click.option(
    "--to",
    "destination",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("cairn-release"),
    show_default=True,
    help="Directory to install into; a previous release there is replaced only once the new one is verified.",
)
@_root_option
@_cache_option
def pull(url: str, version: str | None, destination: Path, root_file: Path | None, cache_dir: Path | None) -> None:
    """Download, verify and install a release from the repository at URL."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        client = ReleaseClient(url, cache_dir, root=_read_root(root_file), warn=_warner(console), progress=_BarProgress(progress))
        manifest = client.pull(destination, version)
    click.echo(f"installed release {manifest.version} (landmark set v{manifest.landmarks_version}) in {destination}")


@release.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_root_option
@_cache_option
@click.option(
    "--integrity-only",
    is_flag=True,
    help="for a release not pulled on this machine and no --root: check only that it is intact and consistently "
    "signed by the root stored inside it (not who signed it)",
)
def verify(directory: Path, root_file: Path | None, cache_dir: Path | None, integrity_only: bool) -> None:
    """Check an installed release offline against the signed metadata it was installed with."""
    manifest = verify_installed(
        directory, _read_root(root_file), cache_dir, warn=_warner(Console(stderr=True)), integrity_only=integrity_only
    )
    click.echo(f"ok: release {manifest.version} in {directory} matches its signed metadata")


def _size(length: int) -> str:
    size = float(length)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


@release.command("export-st")
@click.argument("directory", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--to", "destination", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--dims", type=click.IntRange(min=1), help="first m relational coordinates (default: all)")
def export_st(directory: Path, destination: Path, dims: int | None) -> None:
    """Write DIRECTORY (a verified release) as a sentence-transformers model directory."""
    from cairn.releases import load_release
    from cairn.releases.st_module import export_sentence_transformers

    embedder = load_release(directory)
    if dims is not None and not 1 <= dims <= embedder.dims:
        raise ReleaseError(f"--dims must be between 1 and {embedder.dims}")
    export_sentence_transformers(directory, destination, dims)
    click.echo(f"SentenceTransformer({str(destination)!r}, trust_remote_code=True) now loads this release")
