"""A release exported with `cairn release export-st` loads in sentence-transformers and embeds identically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cairn.training.trainer import train
from cairn.protocol.run_config import TrainingConfig


@pytest.mark.timeout(300)
def test_export_loads_in_sentence_transformers_and_matches(tmp_path: Path):
    st = pytest.importorskip("sentence_transformers")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from cairn.protocol.embedder import load_bundle
    from cairn.releases.st_module import export_sentence_transformers

    corpus = tmp_path / "pairs.jsonl"
    words = [f"word{i}" for i in range(400)]
    corpus.write_text("".join(f'{{"a": "{w} thing", "b": "a thing called {w} in a long gloss"}}\n' for w in words))
    bundle = tmp_path / "bundle"
    train(
        f"jsonl:{corpus}",
        bundle,
        TrainingConfig(landmarks=32, reference_size=64, batch_size=16),
        max_samples=64,
        evaluate=False,
        show_progress=False,
    )
    exported = export_sentence_transformers(bundle, tmp_path / "st", dims=16)
    model = st.SentenceTransformer(str(exported), device="cpu", trust_remote_code=True)
    texts = ["word1 thing", "a thing called word2"]
    ours = load_bundle(bundle, device="cpu").embed(texts, dims=16)
    theirs = model.encode(texts)
    assert theirs.shape == (2, 16)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
