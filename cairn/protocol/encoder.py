"""The Cairn text encoders, readable in one sitting: a static token-vector table, or a small transformer.

Both map (token ids, attention mask) to one mean-pooled vector per text. The architecture is part of the
shared contract: every peer must build bit-identical parameter shapes from the same `EncoderConfig`, so
sizes are named (`static`, `tiny`, `small`) and the config travels as JSON beside the safetensors weights.

Why a static model at all (docs/embedding.md, "the recipe"): on a volunteer's CPU a transformer sees a few
hundred samples a second and, at a swarm's large global batch, spends its few updates collapsed (every
text on one vector); a table lookup and a mean sees thousands a second and learns from its first updates.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import atomic_write_bytes


from cairn.protocol.encoder_config import ARCHITECTURES, MODEL_SIZES, EncoderConfig, config_for  # noqa: F401 (re-exported)


class SelfAttention(nn.Module):
    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2) for t in (q, k, v))
        # key_padding: (batch, length) True where real token; broadcast over heads and queries
        mask = key_padding[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class Block(nn.Module):
    """Pre-norm transformer block (attention then MLP), as in nanoGPT but bidirectional."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, config.d_model), nn.Dropout(config.dropout)
        )

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), key_padding)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """Token + position embeddings, `n_layers` blocks, final norm, mean pooling over real tokens."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.Embedding(config.vocab_size, config.d_model, padding_idx=config.pad_id)
        self.positions = nn.Embedding(config.max_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(parameter, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the mean-pooled (absolute) vector of each text: (batch, d_model)."""
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        x = self.drop(self.tokens(input_ids) + self.positions(positions)[None])
        real = attention_mask.bool()
        for block in self.blocks:
            x = block(x, real)
        x = self.norm(x)
        weights = real.unsqueeze(-1).to(x.dtype)
        return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


STATIC_INIT_STD = 0.1


class StaticEncoder(nn.Module):
    """A token-vector table and the mean of a text's token vectors: sentence-transformers' `StaticEmbedding`.

    The mean is an `EmbeddingBag` over the real tokens only (padding never enters it), so a text's vector
    does not depend on the batch it is padded in. An empty text is the zero vector.
    """

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        self.tokens = nn.EmbeddingBag(config.vocab_size, config.d_model, mode="mean")
        nn.init.normal_(self.tokens.weight, std=STATIC_INIT_STD)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Return the mean token vector of each text: (batch, d_model)."""
        real = attention_mask.bool()
        lengths = real.sum(1)
        offsets = lengths.cumsum(0) - lengths
        return self.tokens(input_ids[real], offsets)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


TextEncoder = StaticEncoder | Encoder  # what build_encoder returns; both map (ids, mask) to (batch, d_model)


def build_encoder(config: EncoderConfig) -> TextEncoder:
    """The encoder a config describes (its `architecture`), freshly initialised from torch's generator."""
    if config.architecture == "static":
        return StaticEncoder(config)
    if config.architecture == "transformer":
        return Encoder(config)
    raise CairnError(f"unknown encoder architecture {config.architecture!r}; use one of {', '.join(ARCHITECTURES)}")


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` takes CUDA when present; asking for CUDA on a machine without it is a clear error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise CairnError("--device cuda was requested but no CUDA GPU is visible to torch")
    if requested not in ("cpu", "cuda"):
        raise CairnError(f"unknown device {requested!r}; use auto, cpu or cuda")
    return torch.device(requested)


WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_encoder(model: TextEncoder, directory: Path) -> None:
    """Write weights (safetensors) and config (JSON) atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    atomic_write_bytes(directory / WEIGHTS_FILE, save(state))
    atomic_write_bytes(directory / CONFIG_FILE, json.dumps(asdict(model.config), indent=2).encode())


def load_encoder(directory: Path, device: torch.device | str = "cpu") -> TextEncoder:
    """Load an encoder saved by `save_encoder`; mismatched or missing files are a one-line error."""
    directory = Path(directory)
    try:
        config = EncoderConfig(**json.loads((directory / CONFIG_FILE).read_text()))
    except FileNotFoundError:
        raise CairnError(f"{directory / CONFIG_FILE}: missing encoder config") from None
    except (TypeError, ValueError) as error:
        raise CairnError(f"{directory / CONFIG_FILE}: not a valid encoder config ({error})") from None
    # the random initialisation is overwritten below; drawing it must not move the caller's generator
    # (a seeded run that loads a release or a parent would otherwise depend on whether it did)
    with torch.random.fork_rng(devices=[]):
        model = build_encoder(config)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
        model.load_state_dict(state)
    except FileNotFoundError:
        raise CairnError(f"{directory / WEIGHTS_FILE}: missing encoder weights") from None
    except (RuntimeError, OSError) as error:
        raise CairnError(f"{directory / WEIGHTS_FILE}: weights do not match the config ({str(error).splitlines()[0]})") from None
    except SafetensorError as error:  # truncated or not a safetensors file at all
        raise CairnError(f"{directory / WEIGHTS_FILE}: not a valid safetensors file ({str(error).splitlines()[0]})") from None
    return model.to(device).eval()
