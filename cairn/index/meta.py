"""index.json: what an index is and where its current vectors are; the one file whose replacement switches versions.

An index directory holds `index.json`, `texts.sqlite` (shared by every generation: texts never change) and one
generation directory per embedding of those texts (`gen-1/`, `gen-2/`, ...: `vectors.npy` with all K relational
coordinates, L2-normalised, and the coarse engine's file). index.json names the current generation and records the
release, the landmark set (version, digest and anchor texts: the append-only rule needs the texts) and every file's
size and SHA-256. It is written last and atomically, so a reader always sees one complete generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.index.files import atomic_path
from cairn.index.settings import IndexConfig
from cairn.protocol.errors import CairnError

FORMAT = "cairn-index/1"
META_FILE = "index.json"
MAX_META_BYTES = 64 << 20


@dataclass
class IndexMeta:
    """The parsed index.json."""

    count: int
    dims: int  # K: relational coordinates stored per vector (the landmark set's size)
    coarse_dims: int  # k: the prefix the coarse engine holds
    generation: str  # the current generation directory, e.g. "gen-2"
    config: IndexConfig
    release: dict[str, Any]  # version (None for a bundle), encoder_sha256, path
    landmarks_version: int
    landmarks_digest: str
    anchors: tuple[str, ...]
    files: dict[str, dict[str, Any]]  # relative path -> {"bytes", "sha256"} (a milvus-lite directory: {"directory": true})
    collection: str = "cairn_coarse"
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per generation: release, landmarks, when

    @property
    def engine_collection(self) -> str:
        """The Milvus collection of the current generation (one per generation, so a server can hold several)."""
        return f"{self.collection}_{self.generation.replace('-', '')}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "count": self.count,
            "dims": self.dims,
            "coarse_dims": self.coarse_dims,
            "generation": self.generation,
            "config": self.config.to_json(),
            "release": self.release,
            "landmarks": {"version": self.landmarks_version, "digest": self.landmarks_digest, "anchors": list(self.anchors)},
            "files": self.files,
            "collection": self.collection,
            "history": self.history,
        }

    def save(self, directory: Path) -> None:
        data = json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False).encode("utf-8")
        with atomic_path(directory / META_FILE) as temporary:
            temporary.write_bytes(data)


def read_meta(directory: Path) -> IndexMeta:
    """Parse DIR/index.json strictly: anything missing, mistyped or inconsistent is one CairnError line."""
    path = directory / META_FILE
    if not directory.is_dir():
        raise CairnError(f"{directory}: not an index directory")
    try:
        if path.stat().st_size > MAX_META_BYTES:
            raise CairnError(f"{path}: larger than {MAX_META_BYTES >> 20} MiB; not an index file")
        document = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CairnError(f"{directory}: not an index (no {META_FILE}); build one with `cairn index build`") from None
    except (UnicodeDecodeError, ValueError):
        raise CairnError(f"{path}: corrupted (not valid JSON); rebuild the index with `cairn index build`") from None
    where = str(path)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CairnError(f"{path}: not a {FORMAT} index file")
    marks = _field(document, "landmarks", dict, where)
    anchors = _field(marks, "anchors", list, where)
    if not all(isinstance(a, str) for a in anchors):
        raise CairnError(f"{where}: landmarks.anchors must be strings")
    try:
        config = IndexConfig.from_json(_field(document, "config", dict, where))
    except (TypeError, ValueError) as error:
        raise CairnError(f"{where}: invalid config ({error})") from None
    meta = IndexMeta(
        count=_field(document, "count", int, where),
        dims=_field(document, "dims", int, where),
        coarse_dims=_field(document, "coarse_dims", int, where),
        generation=_field(document, "generation", str, where),
        config=config,
        release=_field(document, "release", dict, where),
        landmarks_version=_field(marks, "version", int, where),
        landmarks_digest=_field(marks, "digest", str, where),
        anchors=tuple(anchors),
        files=_field(document, "files", dict, where),
        collection=_field(document, "collection", str, where),
        history=_field(document, "history", list, where),
    )
    if meta.count < 1 or meta.dims != len(meta.anchors) or not 1 <= meta.coarse_dims <= meta.dims:
        raise CairnError(
            f"{where}: inconsistent sizes (count {meta.count}, dims {meta.dims}, {len(meta.anchors)} anchors, "
            f"coarse_dims {meta.coarse_dims})"
        )
    if not meta.generation.startswith("gen-") or "/" in meta.generation or ".." in meta.generation:
        raise CairnError(f"{where}: invalid generation name {meta.generation!r}")
    return meta


def _field(document: dict, name: str, kind: type, where: str) -> Any:
    value = document.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CairnError(f"{where}: field {name!r} missing or not a {kind.__name__}")
    return value
