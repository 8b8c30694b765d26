"""Documents to index, read from a JSON-lines, CSV/TSV or plain-text file: (id, text, metadata) per row.

The format follows the file name, like task-model data: `.jsonl`/`.ndjson`/`.json` (one object per line),
`.csv`/`.tsv` (a header row), `.txt` (one text per non-blank line). Ids come from `id_column` when given, else
they are the 1-based row numbers as strings; every other column is kept as the row's metadata. Everything wrong
with a file (missing, not UTF-8, no rows, a missing column, an empty text, a duplicate id) is one CorpusError line
naming the file and row, raised before any encoder is loaded, so bad input costs nothing and writes nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.corpora.jsonl import jsonl_records, read_text_file
from cairn.protocol.errors import CorpusError
from cairn.tasks.data import DELIMITERS, JSONL_SUFFIXES, _csv_rows

TEXT_SUFFIXES = (".txt",)
MAX_BYTES = 4 << 30


@dataclass(frozen=True)
class Documents:
    """Parallel tuples, in file order; ids are unique strings."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    metadata: tuple[dict[str, Any], ...]
    source: str

    def __len__(self) -> int:
        return len(self.ids)


def read_documents(path: Path | str, text_column: str = "text", id_column: str | None = None) -> Documents:
    """Read (id, text, metadata) rows; CorpusError on anything malformed, including duplicate ids."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES and suffix not in DELIMITERS and suffix not in TEXT_SUFFIXES:
        raise CorpusError(f"{path}: unknown data format {suffix or '(no extension)'!r}; use .jsonl, .csv, .tsv or .txt")
    content = read_text_file(path, MAX_BYTES)
    if suffix in TEXT_SUFFIXES:
        if id_column is not None:
            raise CorpusError(f"{path}: a .txt file has no columns; drop --id-column or use .jsonl/.csv")
        rows = [(f"{path}:{n}", {text_column: line}) for n, line in enumerate(content.splitlines(), start=1) if line.strip()]
    elif suffix in DELIMITERS:
        rows = _csv_rows(content, DELIMITERS[suffix], path, (text_column,) + ((id_column,) if id_column else ()))
    else:
        rows = jsonl_records(content, path)
    ids: list[str] = []
    texts: list[str] = []
    metadata: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for number, (where, record) in enumerate(rows, start=1):
        text = record.get(text_column)
        if text_column not in record:
            found = ", ".join(repr(k) for k in record) or "none"
            raise CorpusError(f"{where}: missing column {text_column!r} (found {found})")
        if not isinstance(text, str) or not text.strip():
            raise CorpusError(f"{where}: column {text_column!r} must be a non-empty string")
        identifier = _identifier(record, id_column, where) if id_column else str(number)
        if identifier in seen:
            raise CorpusError(f"{where}: duplicate id {identifier!r} (first at {seen[identifier]})")
        seen[identifier] = where
        ids.append(identifier)
        texts.append(text)
        metadata.append({k: v for k, v in record.items() if k not in (text_column, id_column)})
    if not ids:
        raise CorpusError(f"{path}: no rows to index (empty file)")
    return Documents(tuple(ids), tuple(texts), tuple(metadata), str(path))


def _identifier(record: dict, column: str, where: str) -> str:
    """Ids are strings or integers (7 in JSON and "7" in a CSV are the same id)."""
    if column not in record:
        raise CorpusError(f"{where}: missing id column {column!r}")
    value = record[column]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise CorpusError(f"{where}: id column {column!r} must be a non-empty string or an integer, got {json.dumps(value)}")
    return str(value).strip()
