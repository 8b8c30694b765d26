"""Corpora of positive text pairs: WordNet (the embedded default), JSON lines, Hugging Face datasets."""

from __future__ import annotations

from pathlib import Path

from cairn.corpora.base import Pair, PairCorpus
from cairn.protocol.errors import CorpusError

__all__ = ["Pair", "PairCorpus", "load_corpus"]


def load_corpus(spec: str) -> PairCorpus:
    """`wordnet` | `wordnet+relations` | `jsonl:PATH` | `hf:NAME:COL_A:COL_B[:SPLIT]` | `hf-json:PATH:COL_A:COL_B`."""
    kind, _, rest = spec.partition(":")
    if kind in ("wordnet", "wordnet+relations"):
        from cairn.corpora.wordnet import load_wordnet

        return load_wordnet(Path(rest) if rest else None, relations=kind == "wordnet+relations")
    if kind == "jsonl" and rest:
        from cairn.corpora.jsonl import load_jsonl

        return load_jsonl(Path(rest))
    if kind in ("hf", "hf-json"):
        from cairn.corpora.hf import load_hf

        parts = rest.split(":")
        if len(parts) < 3:
            raise CorpusError(f"corpus {spec!r}: expected {kind}:NAME:COLUMN_A:COLUMN_B")
        if kind == "hf-json":
            return load_hf("json", (parts[1], parts[2]), data_files=parts[0])
        return load_hf(parts[0], (parts[1], parts[2]), split=parts[3] if len(parts) > 3 else "train")
    raise CorpusError(
        f"unknown corpus {spec!r}; use wordnet, wordnet+relations, jsonl:PATH, hf:NAME:COL_A:COL_B or hf-json:PATH:COL_A:COL_B"
    )
