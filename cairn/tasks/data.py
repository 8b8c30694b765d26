"""Labelled text files for task models: JSON lines or CSV, one (text, label) example per row.

The format follows the file name: `.jsonl`/`.ndjson`/`.json` are JSON lines (one object per line),
`.csv` is comma-separated and `.tsv` tab-separated with a header row. Labels are kept as strings
(`7` in JSON and "7" in a CSV are the same label), so a model trained on one format evaluates on the other.
Whatever is wrong with a file ends as one CorpusError line naming the file and, where it helps, the row.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from cairn.corpora.jsonl import jsonl_records, read_text_file
from cairn.protocol.errors import CorpusError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
DELIMITERS = {".csv": ",", ".tsv": "\t"}
MAX_BYTES = 1 << 30


@dataclass(frozen=True)
class Labelled:
    """Texts and their labels (as strings), in file order."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def read_labelled(path: Path | str, text_column: str = "text", label_column: str = "label") -> Labelled:
    """Read (text, label) rows from a JSONL or CSV/TSV file; CorpusError on anything malformed."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES and suffix not in DELIMITERS:
        raise CorpusError(f"{path}: unknown data format {suffix or '(no extension)'!r}; use .jsonl, .csv or .tsv")
    text = read_text_file(path, MAX_BYTES)
    if text_column == label_column:
        raise CorpusError(f"text and label column are both {text_column!r}; they must differ")
    if suffix in DELIMITERS:
        rows = _csv_rows(text, DELIMITERS[suffix], path, (text_column, label_column))
    else:
        rows = jsonl_records(text, path)
    texts, labels = [], []
    for where, record in rows:
        missing = [c for c in (text_column, label_column) if c not in record]
        if missing:
            found = ", ".join(repr(k) for k in record) or "none"
            raise CorpusError(f"{where}: missing column(s) {', '.join(map(repr, missing))} (found {found})")
        value, label = record[text_column], record[label_column]
        if not isinstance(value, str) or not value.strip():
            raise CorpusError(f"{where}: column {text_column!r} must be a non-empty string")
        texts.append(value)
        labels.append(_label(label, label_column, where))
    if not texts:
        raise CorpusError(f"{path}: no rows")
    return Labelled(tuple(texts), tuple(labels), str(path))


def _label(value: object, column: str, where: str) -> str:
    """Strings and integers are labels; floats that are whole numbers too (CSV readers produce them)."""
    if isinstance(value, bool) or value is None:
        raise CorpusError(f"{where}: label column {column!r} must be a string or an integer, got {json.dumps(value)}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise CorpusError(f"{where}: label column {column!r} must be a non-empty string or an integer")


def _csv_rows(text: str, delimiter: str, path: Path, required: tuple[str, ...]) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise CorpusError(f"{path}: empty file (expected a header row)")
        header = [name.strip() for name in header]
        if len(set(header)) != len(header):
            raise CorpusError(f"{path}: header has duplicate column names")
        missing = [c for c in required if c not in header]
        if missing:
            found = ", ".join(repr(k) for k in header if k) or "none"
            raise CorpusError(f"{path}: missing column(s) {', '.join(map(repr, missing))} in the header (found {found})")
        rows = []
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            where = f"{path}:{reader.line_num}"
            if len(record) != len(header):
                raise CorpusError(f"{where}: {len(record)} fields, the header has {len(header)}")
            rows.append((where, dict(zip(header, record))))
    except csv.Error as error:
        raise CorpusError(f"{path}:{reader.line_num}: malformed CSV ({error})") from None
    return rows
