"""Build an index: read documents, embed them with one release, write texts, vectors and the coarse engine.

Everything is written into a hidden sibling directory first and renamed to `out` only when complete, so an
interrupted build (Ctrl+C, kill -9, a full disk) leaves no index rather than half of one, and an existing
`out` is never touched: building over it is refused.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cairn.index.documents import Documents, read_documents
from cairn.index.embedding import as_release, embed_documents
from cairn.index.engines import build_engine, engine_file
from cairn.index.files import file_digest, fsync_directory, save_array
from cairn.index.index import VECTORS_FILE, SearchIndex
from cairn.index.meta import IndexMeta
from cairn.index.settings import IndexConfig
from cairn.index.store import STORE_FILE, write_store
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import l2_normalise
from cairn.tasks.api import Release


def build_index(
    release: Release | Path | str,
    documents: Documents | Path | str,
    out: Path | str,
    config: IndexConfig = IndexConfig(),
    text_column: str = "text",
    id_column: str | None = None,
    device: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> SearchIndex:
    """Write a new index at `out` and return it opened; `documents` is a Documents or a data file to read."""
    out = Path(out)
    if out.exists():
        raise CairnError(f"{out}: already exists; choose another --out, or update it with `cairn index upgrade`")
    if not isinstance(documents, Documents):
        documents = read_documents(documents, text_column, id_column)  # before the encoder loads: bad input fails fast
    release = as_release(release, device)
    vectors = embed_documents(release, documents.texts, config.batch_size, progress)
    staging = out.parent / f".{out.name}.building-{os.getpid()}"
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write_store(staging / STORE_FILE, documents.ids, documents.texts, documents.metadata)
        meta = IndexMeta(
            count=len(documents),
            dims=release.landmarks.size,
            coarse_dims=min(config.coarse_dims, release.landmarks.size),
            generation="gen-1",
            config=config,
            release=release_record(release),
            landmarks_version=release.landmarks.version,
            landmarks_digest=release.landmarks.digest,
            anchors=tuple(release.landmarks.anchors),
            files={},
            collection=f"cairn_{uuid.uuid4().hex[:12]}",
        )
        meta.files = {STORE_FILE: file_digest(staging / STORE_FILE), **write_generation(staging, meta, vectors)}
        meta.history = [history_entry(release, "build", documents.source)]
        meta.save(staging)
        fsync_directory(staging)
        if out.exists():
            raise CairnError(f"{out}: appeared while building; left untouched")
        os.rename(staging, out)
        fsync_directory(out.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return SearchIndex(out, device)


def write_generation(directory: Path, meta: IndexMeta, vectors: np.ndarray) -> dict[str, dict]:
    """Write meta.generation's vectors and coarse engine under `directory`; return their index.json file entries."""
    generation = directory / meta.generation
    generation.mkdir(exist_ok=True)
    save_array(generation / VECTORS_FILE, vectors)
    coarse = l2_normalise(vectors[:, : meta.coarse_dims]).astype(np.float32)
    build_engine(meta.config.engine, generation, coarse, meta.config.milvus_uri, meta.engine_collection)
    name = engine_file(meta.config.engine)
    engine_entry = {"directory": True} if (generation / name).is_dir() else file_digest(generation / name)
    return {f"{meta.generation}/{VECTORS_FILE}": file_digest(generation / VECTORS_FILE), f"{meta.generation}/{name}": engine_entry}


def release_record(release: Release) -> dict:
    """What index.json keeps about a release: version, encoder SHA-256 and its absolute path (queries default to it)."""
    record = dict(release.info)
    if record.get("path"):
        record["path"] = str(Path(record["path"]).resolve())
    return record


def history_entry(release: Release, action: str, source: str | None = None) -> dict:
    entry = {
        "action": action,
        "release": release.info.get("version"),
        "encoder_sha256": release.info.get("encoder_sha256"),
        "landmarks": f"v{release.landmarks.version} {release.landmarks.digest[:12]}",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if source:
        entry["source"] = source
    return entry
