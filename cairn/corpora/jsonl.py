"""Pairs from a JSON-lines file: one {"a": ..., "b": ...} object per line."""

from __future__ import annotations

import json
from pathlib import Path

from cairn.corpora.base import Pair, PairCorpus, held_out
from cairn.protocol.errors import CorpusError


def load_jsonl(path: Path, columns: tuple[str, str] = ("a", "b")) -> PairCorpus:
    path = Path(path)
    pairs = [pair_from_record(record, columns, where) for where, record in jsonl_records(read_text_file(path), path)]
    return split_pairs(f"jsonl:{path.name}", pairs, str(path))


def read_text_file(path: Path, max_bytes: int | None = None) -> str:
    """A whole UTF-8 text file (a leading BOM dropped); every failure is one CorpusError naming the file."""
    path = Path(path)
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise CorpusError(f"{path}: larger than {max_bytes >> 20} MiB")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, expected a data file") from None
    except PermissionError:
        raise CorpusError(f"{path}: permission denied") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 (invalid byte at offset {error.start})") from None


def jsonl_records(text: str, path: Path) -> list[tuple[str, dict]]:
    """(`path:line`, object) for every non-blank line; invalid JSON or a non-object is a CorpusError."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CorpusError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(record, dict):
            raise CorpusError(f"{path}:{number}: expected an object (one JSON object per line)")
        records.append((f"{path}:{number}", record))
    return records


def pair_from_record(record: object, columns: tuple[str, str], where: str) -> Pair:
    if not isinstance(record, dict):
        raise CorpusError(f"{where}: expected an object with columns {columns[0]!r} and {columns[1]!r}")
    missing = [c for c in columns if c not in record]
    if missing:
        raise CorpusError(f"{where}: missing column(s) {', '.join(map(repr, missing))} (found {', '.join(map(repr, record)) or 'none'})")
    a, b = record[columns[0]], record[columns[1]]
    if not isinstance(a, str) or not isinstance(b, str) or not a.strip() or not b.strip():
        raise CorpusError(f"{where}: columns {columns[0]!r} and {columns[1]!r} must be non-empty strings")
    return Pair(a, b)


def split_pairs(name: str, pairs: list[Pair], source: str) -> PairCorpus:
    """Hold out 10 % by hash of the pair; an empty corpus is an error, not a silent no-op."""
    if not pairs:
        raise CorpusError(f"{source}: corpus is empty (no pairs)")
    train = [p for p in pairs if not held_out(p.a + "\x00" + p.b)]
    heldout = [p for p in pairs if held_out(p.a + "\x00" + p.b)]
    if not train:
        raise CorpusError(f"{source}: every pair was held out; the corpus is too small to train on")
    return PairCorpus(name, train, heldout)
