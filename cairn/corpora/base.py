"""A corpus of positive text pairs, split deterministically into training pairs, held-out pairs and shards."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    kind: str = "pair"


def held_out(key: str, percent: int = 10) -> bool:
    """Deterministic hold-out by hash, identical on every machine and Python version."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 100 < percent


@dataclass
class PairCorpus:
    """Training pairs (shuffled once with a fixed seed), held-out pairs, and the corpus' identity."""

    name: str
    train: list[Pair]
    heldout: list[Pair]

    def __post_init__(self) -> None:
        random.Random(0).shuffle(self.train)

    @property
    def digest(self) -> str:
        """Names the exact corpus in run configurations: peers with a different corpus refuse to join."""
        hasher = hashlib.sha256(self.name.encode())
        for pair in self.train:
            hasher.update(b"\x00" + pair.a.encode() + b"\x01" + pair.b.encode())
        return hasher.hexdigest()

    def shard(self, index: int, count: int) -> list[Pair]:
        """Shard `index` of `count`: every count-th training pair, so shards are balanced in kind."""
        if not 0 <= index < count:
            raise ValueError(f"shard {index} out of range 0..{count - 1}")
        return self.train[index::count]

    def texts(self) -> list[str]:
        return [text for pair in self.train for text in (pair.a, pair.b)]

    def heldout_by_kind(self, kind: str) -> list[tuple[str, str]]:
        return [(p.a, p.b) for p in self.heldout if p.kind == kind]

    def landmark_candidates(self, limit: int = 4096, seed: int = 0) -> list[str]:
        """A deterministic sample of training texts (longer side of each pair) to choose anchors from."""
        rng = random.Random(seed)
        sample = rng.sample(self.train, min(limit, len(self.train)))
        return [max(p.a, p.b, key=len) for p in sample]
