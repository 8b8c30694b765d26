"""One training step's worth of shared logic, used by the single-process trainer and by every peer.

Keeping it here (in the contract) is what lets the swarm be compared with the single-process
baseline: same tokenizer, same landmarks, same loss, same batches for the same samples.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

from protocol.corpora.base import Pair, PairCorpus
from protocol.embedder import Embedder, encode_texts
from protocol.encoder import Encoder, EncoderConfig, config_for
from protocol.landmarks import LandmarkSet, cosines, select_landmarks
from protocol.objective import ObjectiveConfig, compat_loss, matryoshka_relational_loss
from protocol.tokenizer import TextTokenizer, train_tokenizer


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters; the coordinator publishes these in the run configuration."""

    model: str = "tiny"
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    landmarks: int = 256
    landmark_order: str = "farthest"
    # Anchor encodings and their standardisation stats are refreshed without gradient every N steps
    # (bench/anchor_refresh.py measures the trade-off against refreshing every step).
    anchor_refresh_every: int = 25
    reference_size: int = 512
    seed: int = 0
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def to_json(self) -> dict:
        document = asdict(self)
        document["objective"]["prefix_dims"] = list(self.objective.prefix_dims)
        return document

    @classmethod
    def from_json(cls, document: dict) -> "TrainingConfig":
        document = dict(document)
        objective = ObjectiveConfig(**{**document.pop("objective", {})})
        objective = dataclasses.replace(objective, prefix_dims=tuple(objective.prefix_dims))
        return cls(objective=objective, **document)


def encoder_config(config: TrainingConfig, tokenizer: TextTokenizer) -> EncoderConfig:
    base = config_for(config.model)
    return EncoderConfig(**{**asdict(base), "vocab_size": tokenizer.vocab_size})


def prepare_run(corpus: PairCorpus, config: TrainingConfig) -> tuple[TextTokenizer, LandmarkSet]:
    """Deterministically derive the tokenizer and landmark set of a run from its corpus.

    Same corpus + config -> same tokenizer.json and landmark digest on every machine, so peers can
    check they agree with the coordinator before training.
    """
    base = config_for(config.model)
    tokenizer = TextTokenizer(train_tokenizer(corpus.texts(), base.vocab_size), base.max_len)
    landmarks = select_landmarks(corpus.landmark_candidates(seed=config.seed), config.landmarks, config.landmark_order, config.seed)
    return tokenizer, landmarks


def reference_texts(corpus: PairCorpus, size: int, seed: int = 0) -> list[str]:
    """The fixed sample over which per-anchor standardisation stats are computed."""
    sample = random.Random(seed + 1).sample(corpus.train, min(size, len(corpus.train)))
    return [p.b for p in sample]


def batches(pairs: list[Pair], batch_size: int, start: int = 0) -> Iterator[tuple[int, list[Pair]]]:
    """(offset after the batch, batch) from `start`, wrapping around at the end of the pairs."""
    offset = start % max(len(pairs), 1)
    while True:
        batch = pairs[offset : offset + batch_size]
        if len(batch) < batch_size:
            batch = batch + pairs[: batch_size - len(batch)]
        offset = (offset + batch_size) % len(pairs)
        yield offset, batch


class ParentRelease:
    """The frozen release a run stays compatible with: its cosines to its own anchors are the compat targets.

    Training continues from (or near) the parent, and `compat_loss` keeps this encoder's cosines to the
    parent's anchor texts close to the parent's, in the parent's per-anchor std, so that a task head
    trained on the parent's relational vectors keeps working on the next release (bench/compat_loss.py).
    """

    def __init__(self, embedder: Embedder):
        if embedder.landmarks.stats is None:
            raise ValueError("the parent release's landmark set has no calibration stats")
        self.embedder = embedder
        self.anchors = list(embedder.landmarks.anchors)
        self.std = torch.from_numpy(embedder.landmarks.stats.std)

    def targets(self, texts: list[str]) -> torch.Tensor:
        """(texts x parent anchors) cosines under the frozen parent."""
        return torch.from_numpy(cosines(self.embedder.absolute(texts), self.embedder.anchor_vectors))


class TrainingTask:
    """Holds the anchors' current encodings and computes the loss of a batch of pairs."""

    def __init__(self, model: Encoder, tokenizer: TextTokenizer, landmarks: LandmarkSet, reference: list[str],
                 config: TrainingConfig, parent: ParentRelease | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.landmarks = landmarks
        self.reference = reference
        self.config = config
        self.steps_since_refresh = config.anchor_refresh_every  # refresh before the first step
        self.anchor_vectors: torch.Tensor | None = None
        self.set_parent(parent)

    def set_parent(self, parent: ParentRelease | None) -> None:
        """Stay compatible with `parent` from the next step on (ignored when the compat weight is 0)."""
        self.parent = parent if self.config.objective.compat_weight > 0 else None
        self.parent_anchor_vectors = None
        self.steps_since_refresh = self.config.anchor_refresh_every  # encode the new parent's anchors first

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def refresh_anchors(self) -> None:
        """Re-encode the anchors (and the parent's, for the compat term) with the current weights, without gradient."""
        was_training = self.model.training
        if self.config.objective.relational_weight > 0:
            self.anchor_vectors = torch.from_numpy(encode_texts(self.model, self.tokenizer, self.landmarks.anchors)).to(self.device)
        if self.parent is not None:
            self.parent_anchor_vectors = torch.from_numpy(encode_texts(self.model, self.tokenizer, self.parent.anchors)).to(self.device)
        self.model.train(was_training)
        self.steps_since_refresh = 0

    def loss(self, pairs: list[Pair], compat: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of a batch and its parts; `compat=False` leaves out the compatibility term."""
        relational = self.config.objective.relational_weight > 0
        with_parent = compat and self.parent is not None
        if (relational or with_parent) and self.steps_since_refresh >= self.config.anchor_refresh_every:
            self.refresh_anchors()
        self.steps_since_refresh += 1
        ids_a, mask_a = self.tokenizer.batch([p.a for p in pairs])
        ids_b, mask_b = self.tokenizer.batch([p.b for p in pairs])
        device = self.device
        abs_a = self.model(ids_a.to(device), mask_a.to(device))
        abs_b = self.model(ids_b.to(device), mask_b.to(device))
        total, parts = matryoshka_relational_loss(abs_a, abs_b, self.anchor_vectors if relational else None, self.config.objective)
        if with_parent:
            targets = self.parent.targets([p.a for p in pairs] + [p.b for p in pairs]).to(device)
            drift = compat_loss(torch.cat([abs_a, abs_b]), self.parent_anchor_vectors, targets, self.parent.std.to(device))
            total = total + self.config.objective.compat_weight * drift
            parts["compat"] = float(drift.detach())
        return total, parts

    @torch.no_grad()
    def eval_loss(self, pairs: list[Pair], batch_size: int = 128) -> float:
        """Mean loss over fixed pairs in eval mode: comparable between the swarm and the baseline."""
        was_training = self.model.training
        self.model.eval()
        if self.config.objective.relational_weight > 0:
            self.refresh_anchors()
        try:  # without the compat term: it depends on which parent a process holds, the contrastive loss does not
            losses = [float(self.loss(pairs[i : i + batch_size], compat=False)[0])
                      for i in range(0, len(pairs) - batch_size + 1, batch_size)]
        finally:
            self.model.train(was_training)
        return sum(losses) / max(len(losses), 1)


def make_optimizer(model: Encoder, config: TrainingConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def warmup_factor_for_samples(samples: int, config: TrainingConfig) -> float:
    """Linear warm-up measured in samples, so a swarm stepping once per 2048 samples and a single
    process stepping every 64 follow the same learning-rate curve per sample seen."""
    return min(1.0, (samples + config.batch_size) / max(config.warmup_steps * config.batch_size, 1))
