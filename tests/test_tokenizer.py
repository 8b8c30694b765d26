"""The WordPiece tokenizer: round trips, [PAD] = 0, padding and truncation, files, and determinism."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cairn.protocol.errors import CairnError
from cairn.protocol.tokenizer import TOKENIZER_FILE, TextTokenizer, train_tokenizer

WORDS = (
    "the quick brown fox jumps over lazy dog cat runs fast slow red green blue small large house tree river "
    "mountain sings under bright night garden window yellow old young water stone"
).split()


def sentences(count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", ",", "!", "?", ""]))
    return out


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer(train_tokenizer(sentences(), 300), max_len=24)


def test_special_tokens_have_fixed_ids(tokenizer):
    assert tokenizer.tokenizer.token_to_id("[PAD]") == 0  # the encoder's padding_idx
    assert tokenizer.tokenizer.token_to_id("[UNK]") == 1
    assert 40 < tokenizer.vocab_size <= 300


@settings(max_examples=80, deadline=None)
@given(
    words=st.lists(st.sampled_from(WORDS), min_size=1, max_size=12),
    gaps=st.lists(st.sampled_from([" ", "  ", "\t", " \n "]), min_size=12, max_size=12),
    upper=st.lists(st.booleans(), min_size=12, max_size=12),
)
def test_round_trip_of_in_vocabulary_text(tokenizer, words, gaps, upper):
    """decode(encode(text)) is the normalised text: lower-cased, whitespace collapsed to single spaces."""
    cased = [w.upper() if u else w for w, u in zip(words, upper)]
    text = "".join(w + g for w, g in zip(cased, gaps)).strip()
    assert tokenizer.round_trip(text) == " ".join(words)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The fox, the dog.", "the fox, the dog."),
        ("Why?  Red house!", "why? red house!"),
        ("rivermountain", "rivermountain"),  # unseen word, spelled from sub-word pieces
        ("zebra", ""),  # 'z' never follows another letter in the training text: the word becomes [UNK], dropped on decode
    ],
)
def test_round_trip_examples(tokenizer, text, expected):
    assert tokenizer.round_trip(text) == expected


def test_unseen_characters_become_unk(tokenizer):
    ids = tokenizer.tokenizer.encode("fox zebra dog").ids
    assert ids.count(1) == 1 and 0 not in ids


def test_batch_pads_with_zero_and_truncates(tokenizer):
    ids, mask = tokenizer.batch(["red fox", "the quick brown fox jumps over the lazy dog", ""])
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.shape == mask.shape and ids.shape[0] == 3
    assert mask[0].tolist() == [1, 1] + [0] * (ids.shape[1] - 2)
    assert (ids[mask == 0] == 0).all() and (ids[mask == 1] != 0).all()
    assert mask[2].sum() == 0  # an empty text is all padding
    long_ids, long_mask = tokenizer.batch([" ".join(["fox"] * 100)])
    assert long_ids.shape == (1, 24) and long_mask.sum() == 24


def test_save_load_gives_same_ids_and_digest(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    assert (tmp_path / TOKENIZER_FILE).exists()
    loaded = TextTokenizer.load(tmp_path, max_len=24)
    texts = sentences(50, seed=9) + ["rivermountain zebra", ""]
    original_ids, original_mask = tokenizer.batch(texts)
    loaded_ids, loaded_mask = loaded.batch(texts)
    assert torch.equal(original_ids, loaded_ids) and torch.equal(original_mask, loaded_mask)
    assert loaded.digest() == tokenizer.digest()
    assert (tmp_path / TOKENIZER_FILE).read_bytes() == tokenizer.to_bytes()


def test_digest_is_stable_and_names_the_vocabulary(tokenizer):
    assert tokenizer.digest() == tokenizer.digest() and len(tokenizer.digest()) == 64
    other = TextTokenizer(train_tokenizer(sentences(seed=1) + ["an entirely different vocabulary appears here"], 300), max_len=24)
    assert other.digest() != tokenizer.digest()


def test_training_is_deterministic_within_a_process(tokenizer):
    """Same texts and size -> byte-identical tokenizer.json (the run configuration pins its digest)."""
    for _ in range(3):
        assert TextTokenizer(train_tokenizer(sentences(), 300), max_len=24).digest() == tokenizer.digest()
    # an iterator is accepted as well as a list
    assert TextTokenizer(train_tokenizer(iter(sentences()), 300), max_len=24).digest() == tokenizer.digest()


def test_training_is_deterministic_across_processes(tokenizer):
    """Hash-map seeds differ per process: every peer must still derive the coordinator's tokenizer."""
    script = (
        "import sys; sys.path.insert(0, %r); from test_tokenizer import sentences; "
        "from cairn.protocol.tokenizer import TextTokenizer, train_tokenizer; "
        "print(TextTokenizer(train_tokenizer(sentences(), 300), max_len=24).digest())"
    ) % str(__import__("pathlib").Path(__file__).parent)
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip() for _ in range(2)}
    assert digests == {tokenizer.digest()}


def test_continuing_pieces_are_plain_vocabulary(tokenizer):
    """The pinned '##c' pieces are vocabulary entries, not special tokens: decoding keeps them."""
    document = json.loads(tokenizer.to_bytes())
    assert [t["content"] for t in document["added_tokens"]] == ["[PAD]", "[UNK]"]
    assert "##o" in document["model"]["vocab"]
    assert tokenizer.tokenizer.decode(tokenizer.tokenizer.encode("rivermountain").ids) == "rivermountain"


def test_load_errors(tmp_path):
    with pytest.raises(CairnError, match="missing tokenizer"):
        TextTokenizer.load(tmp_path, 16)
    (tmp_path / TOKENIZER_FILE).write_text("{not a tokenizer")
    with pytest.raises(CairnError, match="not a valid tokenizer"):
        TextTokenizer.load(tmp_path, 16)
