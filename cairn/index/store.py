"""Texts and metadata in SQLite, next to the vectors: row i of the vectors is row i here.

SQLite because it is in the standard library, one file, transactional (a crash mid-write leaves the last
commit) and queried by id without loading the corpus. Written once when an index is built (inside the
build's temporary directory, so an interrupted build leaves nothing); upgrades re-embed the same texts
and never write here. Readers open it read-only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cairn.protocol.errors import CairnError

STORE_FILE = "texts.sqlite"
SCHEMA = "CREATE TABLE documents (row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, text TEXT NOT NULL, metadata TEXT NOT NULL)"


def write_store(path: Path, ids: Sequence[str], texts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
    """Create the store with rows 0..n-1 in one transaction (the file must not exist yet)."""
    if path.exists():
        raise CairnError(f"{path}: already exists")
    connection = sqlite3.connect(path)
    try:
        with connection:
            connection.execute(SCHEMA)
            connection.executemany(
                "INSERT INTO documents VALUES (?, ?, ?, ?)",
                (
                    (row, identifier, text, json.dumps(meta, ensure_ascii=False, allow_nan=False))
                    for row, (identifier, text, meta) in enumerate(zip(ids, texts, metadata))
                ),
            )
    finally:
        connection.close()


class TextStore:
    """Read-only access to an index's texts: by row (search results) or all in row order (upgrades)."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise CairnError(f"{path}: missing (the index's texts); the index is incomplete")
        self.path = path
        try:
            self.connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
            self.count = self.connection.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
        except sqlite3.DatabaseError as error:
            raise CairnError(f"{path}: not a readable index text store ({error})") from None

    def rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """{"id", "text", "metadata"} for each row, in the order asked."""
        if not rows:
            return []
        marks = ",".join("?" * len(rows))
        found = {
            row: (identifier, text, meta)
            for row, identifier, text, meta in self.connection.execute(
                f"SELECT row, id, text, metadata FROM documents WHERE row IN ({marks})", [int(r) for r in rows]
            )
        }
        missing = [r for r in rows if int(r) not in found]
        if missing:
            raise CairnError(f"{self.path}: rows {missing[:3]} missing; the index is corrupted")
        return [{"id": found[int(r)][0], "text": found[int(r)][1], "metadata": json.loads(found[int(r)][2])} for r in rows]

    def texts(self, start: int, stop: int) -> list[str]:
        """Texts of rows start..stop-1, in row order (the unit an upgrade re-embeds)."""
        return [
            text for (text,) in self.connection.execute("SELECT text FROM documents WHERE row >= ? AND row < ? ORDER BY row", (start, stop))
        ]

    def iter_texts(self, batch: int) -> Iterator[list[str]]:
        for start in range(0, self.count, batch):
            yield self.texts(start, start + batch)

    def close(self) -> None:
        self.connection.close()
