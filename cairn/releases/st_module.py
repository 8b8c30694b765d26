"""Use a Cairn release with sentence-transformers: `SentenceTransformer(DIR)` after `cairn release export-st`.

The export writes a `modules.json` naming `CairnRelational` below as the only module; it tokenizes
with the release's tokenizer, encodes, and returns the relational embedding (all K coordinates, or
the first `dims`), so `model.encode(texts)` gives exactly `load_release(DIR).embed(texts, dims)`.
Requires this package to be importable where the model is loaded and, like any custom module,
`SentenceTransformer(DIR, trust_remote_code=True)`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.nn as nn

from cairn.protocol.errors import CairnError, LandmarkError
from cairn.protocol.fsutil import atomic_write_json

CAIRN_ST_CONFIG = "cairn_st.json"
BUNDLE_FILES = ("model.safetensors", "config.json", "tokenizer.json", "landmarks.json")


class CairnRelational(nn.Module):
    """A sentence-transformers module: texts -> relational (landmark) embeddings."""

    # buffers (register_buffer below); declared so type checkers see tensors, not nn.Module's Tensor | Module
    anchors: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, bundle_dir: str, dims: int | None = None):
        super().__init__()
        from cairn.protocol.embedder import load_bundle

        self.bundle_dir = str(bundle_dir)
        self.embedder = load_bundle(Path(bundle_dir), device="cpu")
        self.dims = dims or self.embedder.dims
        self.encoder = self.embedder.model  # registered, so .to(device) moves it
        self.register_buffer("anchors", torch.from_numpy(self.embedder.anchor_vectors))
        stats = self.embedder.landmarks.stats
        if stats is None:  # Embedder refuses such a set already; narrowed here for the buffers
            raise LandmarkError(f"{bundle_dir}: landmarks.json has no calibration statistics (mean, std)")
        self.register_buffer("mean", torch.from_numpy(stats.mean))
        self.register_buffer("std", torch.from_numpy(stats.std))

    def tokenize(self, texts: list[str], **_: object) -> dict[str, torch.Tensor]:
        ids, mask = self.embedder.tokenizer.batch(list(texts))
        return {"input_ids": ids, "attention_mask": mask}

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from cairn.training.objective import relational_torch

        pooled = self.encoder(features["input_ids"], features["attention_mask"])
        relational = relational_torch(pooled, self.anchors, self.mean, self.std)[:, : self.dims]
        features["sentence_embedding"] = torch.nn.functional.normalize(relational, dim=-1)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.dims

    def save(self, output_path: str, *_: object, **__: object) -> None:
        export_bundle_files(Path(self.bundle_dir), Path(output_path), self.dims)

    @staticmethod
    def load(input_path):  # the one-argument form sentence-transformers calls for custom modules
        config = json.loads((Path(input_path) / CAIRN_ST_CONFIG).read_text())
        return CairnRelational(str(input_path), config.get("dims"))


def export_bundle_files(release_dir: Path, output: Path, dims: int | None) -> None:
    output.mkdir(parents=True, exist_ok=True)
    if release_dir.resolve() != output.resolve():
        for name in BUNDLE_FILES:
            shutil.copyfile(release_dir / name, output / name)
    atomic_write_json(output / CAIRN_ST_CONFIG, {"dims": dims})


def export_sentence_transformers(release_dir: Path, output: Path, dims: int | None = None) -> Path:
    """Write a directory `SentenceTransformer(str(output))` loads (same weights, same landmarks)."""
    missing = [name for name in BUNDLE_FILES if not (Path(release_dir) / name).exists()]
    if missing:
        raise CairnError(f"{release_dir}: not a release or bundle (missing {', '.join(missing)})")
    export_bundle_files(Path(release_dir), Path(output), dims)
    atomic_write_json(
        Path(output) / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": "cairn.releases.st_module.CairnRelational"}]
    )
    atomic_write_json(
        Path(output) / "config_sentence_transformers.json", {"prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    )
    return Path(output)
