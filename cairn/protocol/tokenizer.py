"""The tokenizer: an established WordPiece vocabulary, or one trained on the run's corpus, with HF `tokenizers`.

It ships as `tokenizer.json` beside the weights; its SHA-256 is in the run configuration so every
peer provably tokenizes the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    import torch

TOKENIZER_FILE = "tokenizer.json"
SPECIAL_TOKENS = ["[PAD]", "[UNK]"]  # [PAD] must be id 0: the encoder's padding_idx
CORPUS_VOCABULARY = "corpus"  # a WordPiece vocabulary trained on the run's own texts
VOCABULARY_DIR = Path(__file__).resolve().parent / "vocab"
VOCABULARIES = (CORPUS_VOCABULARY, "bert-base-uncased")


def make_tokenizer(vocabulary: str, texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """The tokenizer a run's `vocabulary` names: `corpus` trains one of `vocab_size` on `texts`, any other
    name is a vocabulary file shipped in cairn/protocol/vocab/ (`texts` and `vocab_size` unused)."""
    if vocabulary == CORPUS_VOCABULARY:
        return train_tokenizer(texts, vocab_size)
    if vocabulary not in VOCABULARIES:
        raise CairnError(f"unknown vocabulary {vocabulary!r}; use one of {', '.join(VOCABULARIES)}")
    return wordpiece_from_file(VOCABULARY_DIR / f"{vocabulary}.txt")


def wordpiece_from_file(path: Path) -> Tokenizer:
    """A lower-casing BERT WordPiece tokenizer over an existing vocab.txt ([PAD] must be its id 0), no [CLS]/[SEP]."""
    tokenizer = Tokenizer(models.WordPiece.from_file(str(path), unk_token="[UNK]"))
    if tokenizer.token_to_id("[PAD]") != 0 or tokenizer.token_to_id("[UNK]") is None:
        raise CairnError(f"{path}: a vocabulary needs [PAD] as id 0 and an [UNK] token")
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a lower-cased WordPiece tokenizer; deterministic for the same texts and size.

    The `tokenizers` trainer on its own is not: it gives the continuing-subword pieces ("##e") ids in
    hash-map order, and those ids break ties between equally frequent merges, so two trainings on the
    same texts can differ in ids and even in vocabulary (huggingface/tokenizers#1794). We give every
    continuing piece a fixed id up front (as temporary special tokens, in sorted order), then drop
    them from the added-token list so they behave as ordinary vocabulary entries.
    """
    texts = list(texts)
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    pinned = SPECIAL_TOKENS + _continuing_pieces(tokenizer, texts)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=pinned, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    document = json.loads(tokenizer.to_str())
    document["added_tokens"] = [token for token in document["added_tokens"] if token["content"] in SPECIAL_TOKENS]
    return Tokenizer.from_str(json.dumps(document))


def _continuing_pieces(tokenizer: Tokenizer, texts: list[str]) -> list[str]:
    """ "##c" for every character c that occurs after the first position of a pre-tokenized word, sorted."""
    normalise, split = tokenizer.normalizer.normalize_str, tokenizer.pre_tokenizer.pre_tokenize_str
    words: set[str] = set()
    for start in range(0, len(texts), 1024):  # normalisation never crosses whitespace, so chunks are exact
        words.update(normalise("\n".join(texts[start : start + 1024])).split())
    characters: set[str] = set()
    for word in words:
        for piece, _ in split(word):
            characters.update(piece[1:])
    return ["##" + c for c in sorted(characters)]


class TextTokenizer:
    """Turns texts into padded id tensors for the encoder (truncating at `max_len`)."""

    def __init__(self, tokenizer: Tokenizer, max_len: int):
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.tokenizer.enable_truncation(max_len)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def batch(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch  # here, not at import: configs and `cairn --help` read this module without loading torch

        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long)
        return ids, mask

    def round_trip(self, text: str) -> str:
        return self.tokenizer.decode(self.tokenizer.encode(text).ids)

    def to_bytes(self) -> bytes:
        return self.tokenizer.to_str().encode("utf-8")

    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, directory: Path) -> None:
        atomic_write_bytes(Path(directory) / TOKENIZER_FILE, self.to_bytes())

    @classmethod
    def load(cls, directory: Path, max_len: int) -> "TextTokenizer":
        path = Path(directory) / TOKENIZER_FILE
        if not path.is_file():  # checked first: tokenizers reports a missing file as a bare Exception
            raise CairnError(f"{path}: missing tokenizer")
        try:
            return cls(Tokenizer.from_file(str(path)), max_len)
        except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
            raise CairnError(f"{path}: not a valid tokenizer.json ({str(error).splitlines()[0]})") from None
