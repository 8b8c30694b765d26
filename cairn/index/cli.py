"""`cairn index build | search | info | upgrade | serve`: vector search over a release's relational embedding."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from cairn.index.settings import IndexConfig
from cairn.protocol.settings import config_option

DEVICE = click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
INDEX = click.argument("index_dir", metavar="IDX", type=click.Path(path_type=Path))


def _emit(document: object) -> None:
    sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")


@click.group()
def index() -> None:
    """Store texts with their embeddings and search them; keep using the index across release upgrades."""


@index.command("build")
@click.option(
    "--release",
    "release_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="an installed release directory (checked against its manifest) or a bundle from `cairn train`",
)
@click.option("--data", "data_file", type=click.Path(path_type=Path), required=True, help="documents: .jsonl, .csv, .tsv or .txt")
@click.option("--text-column", default="text", show_default=True)
@click.option("--id-column", default=None, help="unique ids (default: the row number)")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="index directory to create (must not exist)")
@config_option(IndexConfig, "coarse_dims")
@config_option(IndexConfig, "shortlist")
@config_option(IndexConfig, "engine")
@config_option(IndexConfig, "milvus_uri")
@config_option(IndexConfig, "batch_size")
@DEVICE
def build_command(release_dir: Path, data_file: Path, text_column: str, id_column: str | None, out: Path, device: str, **settings) -> None:
    """Embed every row of DATA with RELEASE and write the index to OUT."""
    from cairn.index.build import build_index
    from cairn.index.documents import read_documents

    documents = read_documents(data_file, text_column, id_column)  # before the encoder loads: bad input fails fast
    with build_index(release_dir, documents, out, IndexConfig(**settings), device=device) as built:
        meta = built.meta
    click.echo(
        f"indexed {meta.count} documents with {meta.dims} coordinates (coarse prefix {meta.coarse_dims}, "
        f"{meta.config.engine}) from release {meta.release.get('version') or release_dir} into {out}"
    )


@index.command("search")
@INDEX
@click.argument("queries", nargs=-1, required=True)
@click.option("-k", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="hits per query")
@click.option(
    "--release",
    "release_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="embed queries with this release (default: the one the index was built with); its landmark set must extend the index's",
)
@click.option("--exact", is_flag=True, help="score every stored vector with all K coordinates instead of coarse-to-fine")
@click.option("--shortlist", type=click.IntRange(1, 100_000), default=None, help="candidates to re-rank (default: the index's setting)")
@DEVICE
def search_command(
    index_dir: Path, queries: tuple[str, ...], k: int, release_dir: Path | None, exact: bool, shortlist: int | None, device: str
) -> None:
    """Print one JSON line per QUERY: {"query": ..., "hits": [{"id", "text", "metadata", "score"}]}."""
    from cairn.index.index import open_index

    with open_index(index_dir, device) as opened:
        for query, hits in zip(queries, opened.search(list(queries), k=k, release=release_dir, exact=exact, shortlist=shortlist)):
            _emit({"query": query, "hits": [{key: hit[key] for key in ("id", "score", "text", "metadata")} for hit in hits]})


@index.command("info")
@INDEX
@click.option("--verify", is_flag=True, help="also re-hash every file against index.json")
def info_command(index_dir: Path, verify: bool) -> None:
    """Print one JSON object: size, release and landmark set, engine, history, a pending upgrade."""
    from cairn.index.index import open_index

    with open_index(index_dir, "cpu") as opened:
        if verify:
            opened.verify()
        _emit({**opened.info(), **({"verified": True} if verify else {})})


@index.command("upgrade")
@INDEX
@click.option(
    "--release",
    "release_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="the newer release; its landmark set must be an append-only successor of the index's",
)
@click.option(
    "--max-batches", type=click.IntRange(min=1), default=None, help="embed at most this many batches now and stop (run again to continue)"
)
@DEVICE
def upgrade_command(index_dir: Path, release_dir: Path, max_batches: int | None, device: str) -> None:
    """Re-embed IDX's texts with RELEASE (resumable; searches keep working meanwhile), then switch atomically."""
    from cairn.index.upgrade import upgrade_index

    result = upgrade_index(index_dir, release_dir, device, max_batches=max_batches)
    if result["status"] == "current":
        click.echo(f"{index_dir} is already embedded with this release")
    elif result["status"] == "partial":
        click.echo(f"{result['batches_done']} of {result['batches']} batches re-embedded; run the same command again to continue")
    else:
        click.echo(f"{index_dir} upgraded to release {result['release'] or release_dir} ({result['batches']} batches)")


@index.command("serve")
@INDEX
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8090, show_default=True)
@click.option(
    "--release",
    "release_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="embed queries with this release (default: the index's own)",
)
@DEVICE
def serve_command(index_dir: Path, host: str, port: int, release_dir: Path | None, device: str) -> None:
    """A read-only JSON search endpoint: GET /search?q=TEXT&k=10, GET /info."""
    from aiohttp import web

    from cairn.index.server import make_app

    app = make_app(index_dir, release_dir, device)
    web.run_app(app, host=host, port=port, print=lambda _: click.echo(f"serving {index_dir} on http://{host}:{port}/search?q=..."))
