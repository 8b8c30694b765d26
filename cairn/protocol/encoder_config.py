"""The encoder's named sizes and config: plain data, importable without torch.

Run configurations, CLI option lists and `cairn --help` need the sizes but not the model; keeping them apart
from cairn.protocol.encoder means reading a config (or printing help) never waits for torch to load.
"""

from __future__ import annotations

from dataclasses import dataclass

from cairn.protocol.errors import CairnError


ARCHITECTURES = ("static", "transformer")


@dataclass(frozen=True)
class EncoderConfig:
    architecture: str = "transformer"  # "static": token vectors and a mean, no attention (the fields below it ignores are unused)
    vocab_size: int = 8000
    max_len: int = 64
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 512
    dropout: float = 0.1
    pad_id: int = 0


MODEL_SIZES: dict[str, EncoderConfig] = {
    # 30,522 x 256 = 7.8M parameters, a lookup and a mean per text: thousands of samples/s per CPU core.
    "static": EncoderConfig(architecture="static", vocab_size=30522, max_len=256, d_model=256, n_layers=0, n_heads=1, d_ff=0, dropout=0.0),
    # ~1.4M parameters: trains on 2 CPU cores in minutes; used by tests and the local swarm.
    "tiny": EncoderConfig(vocab_size=8000, max_len=64, d_model=128, n_layers=2, n_heads=4, d_ff=512),
    # ~22M parameters, the size of all-MiniLM-L6-v2 (6 layers, width 384, 30k vocabulary).
    "small": EncoderConfig(vocab_size=30522, max_len=128, d_model=384, n_layers=6, n_heads=12, d_ff=1536),
}


def config_for(size: str) -> EncoderConfig:
    """Look up a named size, with a clear error for a typo."""
    if size not in MODEL_SIZES:
        raise CairnError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    return MODEL_SIZES[size]
