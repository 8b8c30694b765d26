"""Corpora: the JSON-lines, Hugging Face and WordNet loaders, their one-line errors, and the WordNet split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local files only: never reach the Hub from tests
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from cairn.corpora import Pair, load_corpus
from cairn.corpora.base import PairCorpus, held_out
from cairn.corpora.hf import load_hf
from cairn.corpora.jsonl import load_jsonl
from cairn.corpora.wordnet import DEFAULT_DIR, heldout_gloss_lemma, load_wordnet, parse_line, read_synsets, synset_pairs
from cairn.protocol.errors import CorpusError

ROWS = [{"q": f"question number {i}", "a": f"answer number {i}", "extra": i} for i in range(200)]


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# the bad inputs every file loader must turn into one CorpusError; each writes a file (or not) and returns its path
def _missing(tmp: Path) -> Path:
    return tmp / "missing.jsonl"


def _wrong_columns(tmp: Path) -> Path:
    return write_jsonl(tmp / "columns.jsonl", [{"question": "x", "answer": "y"}])


def _empty(tmp: Path) -> Path:
    (tmp / "empty.jsonl").write_bytes(b"")
    return tmp / "empty.jsonl"


def _non_utf8(tmp: Path) -> Path:
    (tmp / "latin1.jsonl").write_bytes('{"q": "café", "a": "crème"}\n'.encode("latin-1"))
    return tmp / "latin1.jsonl"


def _invalid_json(tmp: Path) -> Path:
    (tmp / "broken.jsonl").write_text('{"q": "fine", "a": "fine"}\n{"q": "broken", "a": \n', encoding="utf-8")
    return tmp / "broken.jsonl"


BAD_INPUTS = {
    "missing file": _missing,
    "wrong columns": _wrong_columns,
    "empty corpus": _empty,
    "non-UTF-8 bytes": _non_utf8,
    "invalid JSON line": _invalid_json,
}
EXPECTED = {
    "missing file": "no such file|not found",
    "wrong columns": "missing column",
    "empty corpus": "empty",
    "non-UTF-8 bytes": "UTF-8",
    "invalid JSON line": "JSON",
}


# ---- JSON lines ------------------------------------------------------------------------------------------------


def test_jsonl_loads_and_splits(tmp_path):
    corpus = load_jsonl(write_jsonl(tmp_path / "pairs.jsonl", ROWS), columns=("q", "a"))
    everything = corpus.train + corpus.heldout
    assert sorted((p.a, p.b) for p in everything) == sorted((r["q"], r["a"]) for r in ROWS)
    assert 5 <= len(corpus.heldout) <= 40  # about 10 %, by hash of the pair
    assert {p.a for p in corpus.heldout}.isdisjoint(p.a for p in corpus.train)
    again = load_jsonl(tmp_path / "pairs.jsonl", columns=("q", "a"))
    assert again.train == corpus.train and again.heldout == corpus.heldout and again.digest == corpus.digest


def test_jsonl_default_columns_and_blank_lines(tmp_path):
    path = tmp_path / "ab.jsonl"
    path.write_text('{"a": "one", "b": "two"}\n\n   \n{"a": "three", "b": "four"}\n', encoding="utf-8")
    corpus = load_corpus(f"jsonl:{path}")
    assert len(corpus.train) + len(corpus.heldout) == 2 and corpus.name == "jsonl:ab.jsonl"


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_jsonl_bad_inputs(tmp_path, case):
    path = BAD_INPUTS[case](tmp_path)
    with pytest.raises(CorpusError, match=EXPECTED[case]) as error:
        load_jsonl(path, columns=("q", "a"))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    "line, expected",
    [
        ('["q", "a"]', "expected an object"),
        ('{"q": "x", "a": 3}', "non-empty strings"),
        ('{"q": "x", "a": "  "}', "non-empty strings"),
        ('{"q": null, "a": "y"}', "non-empty strings"),
    ],
)
def test_jsonl_bad_records_name_their_line(tmp_path, line, expected):
    path = tmp_path / "records.jsonl"
    path.write_text('{"q": "ok", "a": "ok"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=expected) as error:
        load_jsonl(path, columns=("q", "a"))
    assert f"{path}:2" in str(error.value)


def test_jsonl_directory_and_blank_only(tmp_path):
    with pytest.raises(CorpusError, match="directory"):
        load_jsonl(tmp_path)
    (tmp_path / "blank.jsonl").write_text("\n \n\n")
    with pytest.raises(CorpusError, match="empty"):
        load_jsonl(tmp_path / "blank.jsonl")


def test_every_pair_held_out_is_an_error(tmp_path):
    held = next({"a": f"x{i}", "b": "y"} for i in range(1000) if held_out(f"x{i}\x00y"))
    with pytest.raises(CorpusError, match="held out"):
        load_jsonl(write_jsonl(tmp_path / "one.jsonl", [held]))


# ---- Hugging Face (offline, through datasets' json builder) ----------------------------------------------------


def test_hf_json_loads_the_same_pairs_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", ROWS)
    corpus = load_hf("json", ("q", "a"), data_files=str(path))
    reference = load_jsonl(path, columns=("q", "a"))
    assert set(corpus.train) == set(reference.train) and set(corpus.heldout) == set(reference.heldout)
    assert len(corpus.train) + len(corpus.heldout) == len(ROWS)
    assert load_hf("json", ("q", "a"), data_files=str(path), limit=30).train.__len__() <= 30
    spec = load_corpus(f"hf-json:{path}:q:a")
    assert set(spec.train) == set(corpus.train)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_hf_bad_inputs(tmp_path, case):
    path = BAD_INPUTS[case](tmp_path)
    with pytest.raises(CorpusError, match=EXPECTED[case]) as error:
        load_hf("json", ("q", "a"), data_files=str(path))
    assert str(path) in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("spec", ["hf:name_only", "hf-json:/x.jsonl:q", "jsonl:", "csv:/tmp/x.csv", "wordnett"])
def test_corpus_spec_errors(spec):
    with pytest.raises(CorpusError):
        load_corpus(spec)


# ---- through the CLI ----------------------------------------------------------------------------------------------


def cairn_command() -> list[str]:
    script = Path(sys.executable).parent / "cairn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "cairn.cli"]


@pytest.mark.parametrize("make", ["missing", "invalid JSON"])
def test_cli_reports_corpus_errors_in_one_line(tmp_path, make):
    corpus = {
        "missing": lambda: Path("/missing"),
        "non-UTF-8": lambda: _non_utf8(tmp_path),
        "invalid JSON": lambda: _invalid_json(tmp_path),
    }[make]()
    result = subprocess.run(
        cairn_command() + ["train", "--corpus", f"jsonl:{corpus}", "--max-samples", "10", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(corpus) in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


# ---- WordNet --------------------------------------------------------------------------------------------------------


def test_wordnet_missing_dir_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("CAIRN_WORDNET_DIR", str(tmp_path))
    with pytest.raises(CorpusError, match="wordnet-base") as error:
        load_wordnet()
    assert str(tmp_path) in str(error.value)
    with pytest.raises(CorpusError, match="wordnet-base"):
        load_corpus("wordnet")
    with pytest.raises(CorpusError, match="wordnet-base"):
        load_corpus(f"wordnet:{tmp_path / 'elsewhere'}")


@pytest.mark.parametrize("content", [b"00001740 03 n 01 entity\n", b"not a wordnet | line\n", b"\xff\xfe bytes | x\n"])
def test_wordnet_malformed_data_files(tmp_path, content):
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        (tmp_path / name).write_bytes(b"  1 This software and database is provided\n" + content)
    if content == b"00001740 03 n 01 entity\n":  # no gloss: a header-like line, skipped -> no synsets at all
        assert read_synsets(tmp_path) == ()
        return
    with pytest.raises(CorpusError):
        read_synsets(tmp_path)


DOG = (
    "02084071 05 n 03 dog 0 domestic_dog 0 Canis_familiaris 0 023 @ 02083346 n 0000 | a member of the genus Canis "
    "(probably descended from the common wolf) that has been domesticated by man since prehistoric times; occurs in many breeds; "
    '"the dog barked all night"  '
)


def test_parse_line():
    synset = parse_line("n", DOG)
    assert synset.offset == "02084071" and synset.lemmas == ("dog", "domestic dog", "Canis familiaris")
    assert synset.definition.startswith("a member of the genus Canis") and synset.definition.endswith("occurs in many breeds")
    assert synset.examples == ("the dog barked all night",)
    pairs = synset_pairs(synset)
    assert Pair("dog", synset.definition, "lemma_gloss") in pairs
    assert Pair(synset.definition, "the dog barked all night", "gloss_example") in pairs
    assert Pair("dog", "domestic dog", "synonym") in pairs
    assert synset.pointers == (("@", "02083346", "n"),)  # the hypernym (the line is cut after its first pointer)
    adjective = parse_line("a", "01234567 00 s 02 galore(ip) 0 abounding(a) 0 000 | plentiful")
    assert adjective.lemmas == ("galore", "abounding")
    assert parse_line("n", "  1 This software and database is provided") is None


@pytest.fixture(scope="module")
def wordnet() -> PairCorpus:
    if not (DEFAULT_DIR / "data.noun").exists():
        pytest.skip("Debian wordnet-base is not installed")
    return load_wordnet(DEFAULT_DIR)


def test_wordnet_loads(wordnet):
    assert wordnet.name == "wordnet-3.0"
    kinds = Counter(p.kind for p in wordnet.train)
    assert kinds["lemma_gloss"] > 150_000 and kinds["synonym"] > 50_000 and kinds["gloss_example"] > 30_000
    assert any(p.a == "dog" and p.b.startswith("a member of the genus Canis") for p in wordnet.train + wordnet.heldout)


def test_wordnet_holds_out_whole_synsets(wordnet):
    """The split is by synset key: a synset's pairs are all in training or all held out, about 10 % held out."""
    synsets = read_synsets(DEFAULT_DIR)
    held = [s for s in synsets if held_out(f"{s.pos}:{s.offset}")]
    assert 0.09 <= len(held) / len(synsets) <= 0.11
    expected_heldout = Counter(p for s in held for p in synset_pairs(s))
    expected_train = Counter(p for s in synsets if not held_out(f"{s.pos}:{s.offset}") for p in synset_pairs(s))
    assert Counter(wordnet.heldout) == expected_heldout
    assert Counter(wordnet.train) == expected_train
    # the retrieval benchmark comes only from held-out synsets
    held_keys = {(s.definition, lemma) for s in held for lemma in s.lemmas}
    benchmark = heldout_gloss_lemma(wordnet)
    assert benchmark and set(benchmark) <= held_keys
    assert len(set(benchmark)) == len(held_keys)


def test_wordnet_is_deterministic(wordnet):
    read_synsets.cache_clear()  # parse the files again, not just rebuild from the cached synsets
    again = load_wordnet(DEFAULT_DIR)
    assert again.digest == wordnet.digest and again.heldout == wordnet.heldout
    assert wordnet.landmark_candidates(limit=500, seed=0) == again.landmark_candidates(limit=500, seed=0)


def test_relations_join_training_synsets_only(wordnet):
    from cairn.corpora import load_corpus
    from cairn.corpora.base import held_out
    from cairn.corpora.wordnet import read_synsets, relation_pairs, wordnet_dir

    related = load_corpus("wordnet+relations")
    assert related.name == "wordnet-3.0+relations" and related.heldout == wordnet.heldout
    extra = [p for p in related.train if p.kind in ("hypernym", "meronym", "similar")]
    assert len(extra) > 50_000 and Pair("dog", "canine", "hypernym") in extra
    synsets = read_synsets(wordnet_dir())
    heldout_lemmas = {s.lemmas[0] for s in synsets if held_out(f"{s.pos}:{s.offset}")}
    training_lemmas = {s.lemmas[0] for s in synsets if not held_out(f"{s.pos}:{s.offset}")}
    # every relation pair names two training synsets (a lemma may also head a held-out synset: polysemy)
    assert all(p.a in training_lemmas and p.b in training_lemmas for p in relation_pairs(synsets))
    only_held_out = heldout_lemmas - training_lemmas
    assert only_held_out  # some held-out synsets' lemmas never appear in any pair
    assert not any(p.a in only_held_out or p.b in only_held_out for p in extra)
