"""Inference: turn texts into absolute and relational (landmark) embeddings with one encoder bundle.

A bundle is a directory with the encoder (`model.safetensors`, `config.json`), `tokenizer.json` and
`landmarks.json` (with standardisation stats). Releases add a signed manifest around the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cairn.protocol.encoder import TextEncoder, load_encoder, pick_device, save_encoder
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet, compute_stats, prefix, relational
from cairn.protocol.tokenizer import TextTokenizer


@torch.no_grad()
def encode_texts(model: TextEncoder, tokenizer: TextTokenizer, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Absolute (mean-pooled) vectors, batched; restores the model's train/eval mode afterwards."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    try:
        for start in range(0, len(texts), batch_size):
            ids, mask = tokenizer.batch(texts[start : start + batch_size])
            chunks.append(model(ids.to(device), mask.to(device)).float().cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        return np.zeros((0, model.config.d_model), dtype=np.float32)
    return np.concatenate(chunks)


class Embedder:
    """`embed(texts, dims=m)` -> the first m relational coordinates, L2-normalised; `absolute(texts)`."""

    def __init__(self, model: TextEncoder, tokenizer: TextTokenizer, landmarks: LandmarkSet):
        if landmarks.stats is None:
            raise CairnError("the landmark set has no standardisation stats; calibrate it first")
        self.model = model
        self.tokenizer = tokenizer
        self.landmarks = landmarks
        self.anchor_vectors = encode_texts(model, tokenizer, landmarks.anchors)

    @property
    def dims(self) -> int:
        return self.landmarks.size

    def absolute(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self.model, self.tokenizer, list(texts))

    def relational(self, texts: list[str]) -> np.ndarray:
        """Full standardised relational vectors (not normalised): the raw coordinates."""
        return relational(self.absolute(texts), self.anchor_vectors, self.landmarks.stats)

    def embed(self, texts: list[str], dims: int | None = None) -> np.ndarray:
        return prefix(self.relational(texts), dims)


def calibrate(model: TextEncoder, tokenizer: TextTokenizer, landmarks: LandmarkSet, reference_texts: list[str]) -> LandmarkSet:
    """Attach per-anchor mean/std of the cosine over a reference sample for this encoder."""
    anchors = encode_texts(model, tokenizer, landmarks.anchors)
    reference = encode_texts(model, tokenizer, reference_texts)
    return landmarks.with_stats(compute_stats(reference, anchors))


def save_bundle(directory: Path, model: TextEncoder, tokenizer: TextTokenizer, landmarks: LandmarkSet) -> None:
    directory = Path(directory)
    save_encoder(model, directory)
    tokenizer.save(directory)
    landmarks.save(directory / LANDMARKS_FILE)


def load_bundle(directory: Path, device: str = "auto") -> Embedder:
    directory = Path(directory)
    if not directory.is_dir():
        raise CairnError(f"{directory}: not a directory with an encoder bundle")
    model = load_encoder(directory, pick_device(device))
    tokenizer = TextTokenizer.load(directory, model.config.max_len)
    return Embedder(model, tokenizer, LandmarkSet.load(directory / LANDMARKS_FILE))
