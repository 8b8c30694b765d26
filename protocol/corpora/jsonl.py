"""Pairs from a JSON-lines file: one {"a": ..., "b": ...} object per line."""

from __future__ import annotations

import json
from pathlib import Path

from protocol.corpora.base import Pair, PairCorpus, held_out
from protocol.errors import CorpusError


def load_jsonl(path: Path, columns: tuple[str, str] = ("a", "b")) -> PairCorpus:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, expected a .jsonl file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 (invalid byte at offset {error.start})") from None
    pairs: list[Pair] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise CorpusError(f"{path}:{number}: not valid JSON") from None
        pairs.append(pair_from_record(record, columns, f"{path}:{number}"))
    return split_pairs(f"jsonl:{path.name}", pairs, str(path))


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
