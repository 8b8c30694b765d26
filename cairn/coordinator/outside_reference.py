"""The outside reference encoder's vectors of the run's held-out alignment texts, computed once per workdir.

Every release is compared with all-MiniLM-L6-v2 on the same held-out texts, and those reference vectors
never change, so they are embedded once (about 10 s on a CPU) and kept in DIR/run/outside_reference.npz,
keyed by a digest of the texts: a changed sample is re-embedded, never silently reused.
"""

from __future__ import annotations

import hashlib
import io
import logging

import numpy as np

from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import atomic_write_bytes

from cairn.protocol.workdir import Workdir

logger = logging.getLogger("cairn.coordinator")
CACHE_FILE = "outside_reference.npz"


def texts_digest(texts: list[str]) -> str:
    hasher = hashlib.sha256()
    for text in texts:
        hasher.update(text.encode("utf-8") + b"\x00")
    return hasher.hexdigest()


def reference_vectors(workdir: Workdir, texts: list[str]) -> np.ndarray | None:
    """MiniLM vectors of `texts` (cached); None, with a warning, where the reference encoder is not installed."""
    path = workdir.run_dir / CACHE_FILE
    digest = texts_digest(texts)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as cached:
                if str(cached["digest"]) == digest:
                    return cached["vectors"]
        except (OSError, ValueError, KeyError) as error:
            logger.warning("ignoring unreadable %s (%s); re-embedding", path, error)
    from cairn.evaluation.reference import minilm_embed_fn

    try:
        embed = minilm_embed_fn()
    except CairnError as error:
        logger.warning("releases will not report outside alignment: %s", error)
        return None
    logger.info("embedding %d held-out texts with the outside reference encoder (once per workdir)", len(texts))
    vectors = np.asarray(embed(texts), dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, digest=np.array(digest), vectors=vectors)
    atomic_write_bytes(path, buffer.getvalue())
    return vectors
