"""A static encoder's starting point distilled from a teacher: each vocabulary token embedded by the teacher, PCA.

The design behind model2vec (Tulkens & van Dongen 2024): a sentence encoder run on every token of a vocabulary
on its own, reduced by PCA to the static model's width, is a static model already (here: all-MiniLM-L6-v2 on
the 30,522 BERT tokens, about half a minute on two CPU cores). Training then starts from a space that
already separates meanings, and, measured in docs/embedding.md ("the recipe"), two runs started from it
with different data and a different rotation end up with nearly the same relational vectors, where two
runs from random tables do not. The teacher only shapes the start; it is never asked again during training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save

from cairn.protocol.encoder import STATIC_INIT_STD, EncoderConfig, StaticEncoder
from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import atomic_write_bytes, cache_dir
from cairn.evaluation.suite import EmbedFn
from cairn.protocol.tokenizer import TextTokenizer

TEACHER = "all-MiniLM-L6-v2"


def token_texts(tokenizer: TextTokenizer) -> list[str]:
    """The text the teacher reads for each token id: the piece itself, without WordPiece's '##' marker."""
    vocabulary = tokenizer.tokenizer.get_vocab()
    texts = [""] * tokenizer.vocab_size
    for piece, index in vocabulary.items():
        texts[index] = piece[2:] if piece.startswith("##") else piece
    if any(not text for text in texts):
        raise CairnError("the vocabulary has gaps in its token ids; cannot distil a static model from it")
    return texts


def distilled_table(teacher: EmbedFn, tokenizer: TextTokenizer, dims: int) -> np.ndarray:
    """(vocab, dims) token vectors: the teacher's vector of every token, centred, its top `dims` principal
    components, scaled to the static encoder's initial standard deviation. Deterministic for one teacher."""
    vectors = np.asarray(teacher(token_texts(tokenizer)), dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[1] < dims:
        raise CairnError(f"the teacher gives {vectors.shape[-1]}-d vectors; cannot reduce them to {dims} dimensions")
    centred = vectors - vectors.mean(0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    table = centred @ components[:dims].T
    # the SVD's signs are arbitrary; fix them so the table is a function of the teacher's vectors alone
    table *= np.sign(table.sum(0) + 1e-12)[None, :]
    return (table * (STATIC_INIT_STD / table.std())).astype(np.float32)


def random_rotation(dims: int, seed: int) -> np.ndarray:
    """A random orthogonal matrix from `seed` (QR of a Gaussian matrix, signs fixed)."""
    gaussian = np.random.default_rng(seed).standard_normal((dims, dims))
    q, r = np.linalg.qr(gaussian)
    return q * np.sign(np.diag(r))[None, :]


def teacher_embed_fn() -> EmbedFn:
    """The teacher: all-MiniLM-L6-v2 from the `reference` extra, offline (a one-line error if not installed)."""
    from cairn.evaluation.reference import minilm_embed_fn

    return minilm_embed_fn()


def default_cache() -> Path:
    """Where distilled tables are kept between runs: distilled/ under the machine's cache (fsutil.cache_dir)."""
    return cache_dir() / "distilled"


def load_or_distill(
    tokenizer: TextTokenizer, dims: int, teacher: Callable[[], EmbedFn] = teacher_embed_fn, cache: Path | None = None
) -> np.ndarray:
    """The distilled table for this tokenizer and width. The teacher runs once per vocabulary and width on a
    machine (about 30 s on two cores); the table is cached under `cache` (default_cache()) by their digest."""
    expected = {"teacher": TEACHER, "tokenizer": tokenizer.digest(), "dims": str(dims)}
    key = hashlib.sha256(json.dumps(expected, sort_keys=True).encode()).hexdigest()[:24]
    path = Path(cache or default_cache()) / f"{key}.safetensors"
    if path.exists():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                if handle.metadata() == expected:
                    return load_file(str(path))["table"]
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged or foreign cache is recomputed
    table = distilled_table(teacher(), tokenizer, dims)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"table": table}, metadata=expected))
    return table


def encoder_from_table(config: EncoderConfig, table: np.ndarray, rotation_seed: int | None) -> StaticEncoder:
    """A static encoder whose token vectors are `table`, rotated at random by `rotation_seed` when given."""
    if config.architecture != "static":
        raise CairnError(f"only the static encoder can start from a distilled table, not {config.architecture!r}")
    if table.shape != (config.vocab_size, config.d_model):
        raise CairnError(f"distilled table is {table.shape}, the encoder needs {(config.vocab_size, config.d_model)}")
    if rotation_seed is not None:
        table = table @ random_rotation(config.d_model, rotation_seed).astype(np.float32)
    with torch.random.fork_rng(devices=[]):
        model = StaticEncoder(config)
    with torch.no_grad():
        model.tokens.weight.copy_(torch.from_numpy(np.ascontiguousarray(table)))
    return model
