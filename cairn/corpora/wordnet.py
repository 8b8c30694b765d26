"""The embedded default corpus: WordNet 3.0 read straight from Debian's `wordnet-base` data files.

Pairs per synset: lemma<->definition, definition<->example sentence, synonym<->synonym; with
`wordnet+relations`, also lemma<->lemma along the semantic pointers (hypernym, part/member/substance
meronym, similar-to), between training synsets only.
10 % of synsets are held out by a hash of their (pos, offset), never seen in training; evaluation
uses them for gloss->lemma retrieval.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cairn.corpora.base import Pair, PairCorpus, held_out
from cairn.protocol.errors import CorpusError

DEFAULT_DIR = Path("/usr/share/wordnet")
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
_MARKER = re.compile(r"\([a-z]+\)$")  # adjective syntactic markers such as "galore(ip)"


# pointer symbol (wninput(5WN)) -> pair kind; only semantic pointers between synsets
RELATIONS = {"@": "hypernym", "@i": "hypernym", "%m": "meronym", "%s": "meronym", "%p": "meronym", "&": "similar"}


@dataclass(frozen=True)
class Synset:
    pos: str
    offset: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]
    pointers: tuple[tuple[str, str, str], ...] = ()  # (symbol, target offset, target pos) of semantic pointers


def wordnet_dir() -> Path:
    return Path(os.environ.get("CAIRN_WORDNET_DIR", DEFAULT_DIR))


def parse_line(pos: str, line: str) -> Synset | None:
    """Parse one data.* line (see wndb(5)); license header lines start with spaces and are skipped."""
    if line.startswith(" ") or "|" not in line:
        return None
    fields, gloss = line.split("|", 1)
    parts = fields.split()
    word_count = int(parts[3], 16)
    lemmas = tuple(_MARKER.sub("", parts[4 + 2 * i]).replace("_", " ") for i in range(word_count))
    pieces = [piece.strip() for piece in gloss.strip().split(";")]
    definition = "; ".join(p for p in pieces if p and not p.startswith('"'))
    examples = tuple(p.strip('"').strip() for p in pieces if p.startswith('"') and len(p.strip('"').strip()) > 3)
    at = 4 + 2 * word_count
    pointers = []
    for index in range(int(parts[at]) if len(parts) > at else 0):
        pointer = parts[at + 1 + 4 * index : at + 5 + 4 * index]
        if len(pointer) < 4:  # a truncated line: keep what is there
            break
        symbol, offset, target_pos, source_target = pointer
        if symbol in RELATIONS and source_target == "0000":  # synset to synset, not between single words
            pointers.append((symbol, offset, "a" if target_pos == "s" else target_pos))
    return Synset(pos, parts[0], lemmas, definition, examples, tuple(pointers))


@lru_cache(maxsize=2)
def read_synsets(directory: Path) -> tuple[Synset, ...]:
    synsets = []
    for pos, name in POS_FILES.items():
        path = directory / name
        if not path.exists():
            raise CorpusError(
                f"{path}: WordNet 3.0 data not found; install Debian's wordnet-base package (apt-get install wordnet-base) "
                "or set CAIRN_WORDNET_DIR"
            )
        try:
            with open(path, encoding="utf-8") as handle:
                for line in handle:
                    synset = parse_line(pos, line)
                    if synset is not None and synset.definition:
                        synsets.append(synset)
        except UnicodeDecodeError as error:
            raise CorpusError(f"{path}: not UTF-8 text (byte {error.start})") from None
        except (ValueError, IndexError):
            raise CorpusError(f"{path}: not a WordNet data file (malformed line)") from None
    return tuple(synsets)


def synset_pairs(synset: Synset) -> list[Pair]:
    pairs = [Pair(lemma, synset.definition, "lemma_gloss") for lemma in synset.lemmas]
    pairs += [Pair(synset.definition, example, "gloss_example") for example in synset.examples]
    pairs += [Pair(x, y, "synonym") for x, y in zip(synset.lemmas, synset.lemmas[1:])]
    return pairs


def load_wordnet(directory: Path | None = None, relations: bool = False) -> PairCorpus:
    """The WordNet pair corpus, built once per process: the coordinator's init and every release's evaluation ask for it
    (3.7 s each on two cores). Callers share the result, so nothing may change its lists (nothing does)."""
    return _load_wordnet(Path(directory or wordnet_dir()).resolve(), relations)


@lru_cache(maxsize=4)
def _load_wordnet(directory: Path, relations: bool) -> PairCorpus:
    train: list[Pair] = []
    heldout: list[Pair] = []
    synsets = read_synsets(directory)
    for synset in synsets:
        (heldout if held_out(f"{synset.pos}:{synset.offset}") else train).extend(synset_pairs(synset))
    if relations:
        train.extend(relation_pairs(synsets))
    return PairCorpus("wordnet-3.0+relations" if relations else "wordnet-3.0", train, heldout)


def relation_pairs(synsets: tuple[Synset, ...]) -> list[Pair]:
    """First lemma <-> first lemma along each semantic pointer whose ends are both training synsets."""
    by_key = {(s.pos, s.offset): s for s in synsets}
    training = {key for key in by_key if not held_out(f"{key[0]}:{key[1]}")}
    pairs = []
    for synset in synsets:
        if (synset.pos, synset.offset) not in training:
            continue
        for symbol, offset, pos in synset.pointers:
            target = by_key.get((pos, offset))
            if target is not None and (pos, offset) in training and target.lemmas[0] != synset.lemmas[0]:
                pairs.append(Pair(synset.lemmas[0], target.lemmas[0], RELATIONS[symbol]))
    return pairs


def heldout_gloss_lemma(corpus: PairCorpus) -> list[tuple[str, str]]:
    """(definition, lemma) pairs of held-out synsets: the gloss->lemma retrieval benchmark."""
    return [(gloss, lemma) for lemma, gloss in corpus.heldout_by_kind("lemma_gloss")]
