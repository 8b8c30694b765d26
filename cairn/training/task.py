"""One training step's worth of shared logic, used by the single-process trainer and by every peer.

Keeping it here (in the contract) is what lets the swarm be compared with the single-process
baseline: same tokenizer, same landmarks, same loss, same batches for the same samples.
"""

from __future__ import annotations

import math
import random
from functools import partial
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from cairn.corpora.base import Pair, PairCorpus
from cairn.protocol.embedder import Embedder, encode_texts
from cairn.protocol.encoder import EncoderConfig, TextEncoder, build_encoder, config_for
from cairn.protocol.landmarks import LandmarkSet, cosines, select_landmarks
from cairn.training.objective import compat_loss, matryoshka_relational_loss
from cairn.protocol.run_config import TrainingConfig
from cairn.protocol.tokenizer import CORPUS_VOCABULARY, TextTokenizer, make_tokenizer
from cairn.training.optim import AdamWTowardStart


def initial_encoder(config: TrainingConfig, tokenizer: TextTokenizer, init_seed: int) -> TextEncoder:
    """The encoder a run starts from. Seeds torch with `init_seed` (initial weights and dropout); a distilled
    start is the teacher's table (cairn/training/distill.py, cached per machine) rotated at random by `init_seed`."""
    torch.manual_seed(init_seed)
    encoder = encoder_config(config, tokenizer)
    if config.initialisation == "random":
        return build_encoder(encoder)
    from cairn.training.distill import encoder_from_table, load_or_distill

    return encoder_from_table(encoder, load_or_distill(tokenizer, encoder.d_model), rotation_seed=init_seed)


def encoder_config(config: TrainingConfig, tokenizer: TextTokenizer) -> EncoderConfig:
    """The named model size with the run tokenizer's vocabulary size."""
    base = config_for(config.model)
    return EncoderConfig(**{**asdict(base), "vocab_size": tokenizer.vocab_size})


def prepare_run(corpus: PairCorpus, config: TrainingConfig) -> tuple[TextTokenizer, LandmarkSet]:
    """Deterministically derive the tokenizer and landmark set of a run from its corpus.

    Same corpus + config -> same tokenizer.json and landmark digest on every machine, so peers can
    check they agree with the coordinator before training.
    """
    base = config_for(config.model)
    texts = corpus.texts() if config.vocabulary == CORPUS_VOCABULARY else []
    tokenizer = TextTokenizer(make_tokenizer(config.vocabulary, texts, base.vocab_size), base.max_len)
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

    def __init__(
        self,
        model: TextEncoder,
        tokenizer: TextTokenizer,
        landmarks: LandmarkSet,
        reference: list[str],
        config: TrainingConfig,
        parent: ParentRelease | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.landmarks = landmarks
        self.reference = reference
        self.config = config
        self.steps_since_refresh = max(config.anchor_refresh_every, 1)  # refresh before the first step
        self.anchor_vectors: torch.Tensor | None = None
        self.set_parent(parent)

    def set_parent(self, parent: ParentRelease | None) -> None:
        """Stay compatible with `parent` from the next step on (ignored when the compat weight is 0)."""
        self.parent = parent if self.config.objective.compat_weight > 0 else None
        self.parent_anchor_vectors: torch.Tensor | None = None
        self.steps_since_refresh = max(self.config.anchor_refresh_every, 1)  # encode the new parent's anchors first

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
        anchors_with_gradient, with_parent = self._before_step(compat)
        (ids_a, mask_a), (ids_b, mask_b) = self.tokenizer.batch([p.a for p in pairs]), self.tokenizer.batch([p.b for p in pairs])
        device = self.device
        abs_a = self.model(ids_a.to(device), mask_a.to(device))
        abs_b = self.model(ids_b.to(device), mask_b.to(device))
        return self._loss_of(pairs, abs_a, abs_b, anchors_with_gradient, with_parent)

    def backward(self, pairs: list[Pair], chunk_size: int | None = None) -> dict[str, float]:
        """`loss(pairs).backward()` with at most `chunk_size` texts per forward pass; returns the loss's parts.

        In-batch InfoNCE needs the whole batch in one loss (every pair is the others' negative; the relational term
        standardises over the batch), so gradient accumulation over smaller batches would change the objective. This is
        GradCache instead (Gao et al., 2021; sentence-transformers' CachedMultipleNegativesRankingLoss): embed every
        chunk without a graph, take the loss and its gradient with respect to the embeddings over the whole batch, then
        embed each chunk again with a graph and backpropagate that gradient into the weights. Same gradient (dropout
        replays its random numbers), memory for one chunk's activations, about one extra forward pass of time.
        """
        if chunk_size is None or chunk_size >= len(pairs):
            total, parts = self.loss(pairs)
            total.backward()
            return parts
        anchors_with_gradient, with_parent = self._before_step(compat=True)
        device = self.device
        chunks = []  # (ids, mask) per chunk of texts: all a's, then all b's
        for texts in ([p.a for p in pairs], [p.b for p in pairs]):
            for start in range(0, len(texts), chunk_size):
                ids, mask = self.tokenizer.batch(texts[start : start + chunk_size])
                chunks.append((ids.to(device), mask.to(device)))
        states, cached = [], []
        with torch.no_grad():
            for ids, mask in chunks:
                states.append(_random_state(device))
                cached.append(self.model(ids, mask))
        half = len(chunks) // 2
        abs_a = torch.cat(cached[:half]).requires_grad_()
        abs_b = torch.cat(cached[half:]).requires_grad_()
        total, parts = self._loss_of(pairs, abs_a, abs_b, anchors_with_gradient, with_parent)
        total.backward()  # into the cached embeddings (and the anchors, when they learn)
        assert abs_a.grad is not None and abs_b.grad is not None  # both enter the absolute InfoNCE
        gradients = [*abs_a.grad.split([len(c) for c in cached[:half]]), *abs_b.grad.split([len(c) for c in cached[half:]])]
        for (ids, mask), state, gradient in zip(chunks, states, gradients):
            _set_random_state(device, state)
            self.model(ids, mask).backward(gradient)
        return parts

    def _before_step(self, compat: bool) -> tuple[bool, bool]:
        """Refresh the anchors when due; (anchors learn this step, the compatibility term is on)."""
        relational = self.config.objective.relational_weight > 0
        with_parent = compat and self.parent is not None
        anchors_with_gradient = relational and self.config.anchor_refresh_every == 0 and self.model.training
        if ((relational and not anchors_with_gradient) or with_parent) and self.steps_since_refresh >= max(
            self.config.anchor_refresh_every, 1
        ):
            self.refresh_anchors()
        self.steps_since_refresh += 1
        return anchors_with_gradient, with_parent

    def _loss_of(
        self, pairs: list[Pair], abs_a: torch.Tensor, abs_b: torch.Tensor, anchors_with_gradient: bool, with_parent: bool
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a batch from its embeddings (both texts of every pair)."""
        relational = self.config.objective.relational_weight > 0
        device = self.device
        anchors = self.anchor_vectors
        if anchors_with_gradient:
            anchor_ids, anchor_mask = self.tokenizer.batch(self.landmarks.anchors)
            anchors = self.model(anchor_ids.to(device), anchor_mask.to(device))  # with gradient: the anchors learn too
        total, parts = matryoshka_relational_loss(abs_a, abs_b, anchors if relational else None, self.config.objective)
        parts["mean_cos"] = mean_pairwise_cosine(abs_b.detach())
        if with_parent:
            # set_parent forces refresh_anchors before the next step, which encodes the parent's anchors
            assert self.parent is not None and self.parent_anchor_vectors is not None
            targets = self.parent.targets([p.a for p in pairs] + [p.b for p in pairs]).to(device)
            drift = compat_loss(torch.cat([abs_a, abs_b]), self.parent_anchor_vectors, targets, self.parent.std.to(device))
            total = total + self.config.objective.compat_weight * drift
            parts["compat"] = float(drift.detach())
        return total, parts

    @torch.no_grad()
    def eval_loss(self, pairs: list[Pair], batch_size: int = 128) -> float:
        """Mean absolute InfoNCE over fixed pairs in eval mode (chance: ln batch_size): comparable between the
        swarm and the baseline, and what peers claim and the coordinator spot-checks."""
        was_training = self.model.training
        self.model.eval()
        if self.config.objective.relational_weight > 0:
            self.refresh_anchors()
        try:  # the absolute InfoNCE alone: its chance level is ln(batch), whatever the other terms and the parent held
            losses = [
                self.loss(pairs[i : i + batch_size], compat=False)[1]["abs"] for i in range(0, len(pairs) - batch_size + 1, batch_size)
            ]
        finally:
            self.model.train(was_training)
        return sum(losses) / max(len(losses), 1)


def optimizer_factory(config: TrainingConfig) -> partial:
    """params -> the run's optimizer: one definition for the trainer, every peer and the coordinator's state
    loader (hivemind packs a downloaded optimizer state into the receiver's own structure: they must match)."""
    return partial(AdamWTowardStart, lr=config.lr, weight_decay=config.weight_decay, start_pull=config.start_pull)


OUTER_MOMENTUM = 0.9  # DiLoCo's outer Nesterov momentum (Douillard et al. 2023; OpenDiLoCo keeps it)


def shared_optimizer_factories(training: TrainingConfig, swarm) -> tuple[partial, partial | None]:
    """(optimizer, scheduler) factories of what hivemind.Optimizer wraps: the state every peer shares and the
    coordinator loads. Per-step gradient averaging shares the run's AdamW and its schedule; DiLoCo shares the outer
    SGD with Nesterov momentum over the parameters of the last outer round (each peer keeps its own inner AdamW,
    whose schedule it steps itself)."""
    if swarm.averaging == "diloco":
        return partial(torch.optim.SGD, lr=swarm.outer_lr, momentum=OUTER_MOMENTUM, nesterov=True), None
    return optimizer_factory(training), scheduler_factory(training)


def make_optimizer(model: TextEncoder, config: TrainingConfig) -> torch.optim.Optimizer:
    return optimizer_factory(config)(model.parameters())


def lr_factor(update: int, config: TrainingConfig) -> float:
    """Learning-rate multiplier of optimizer update `update` (0-based): linear warm-up, then constant.

    The one schedule of every loop (torch's LambdaLR calls it in the trainer and, through hivemind, in
    every peer, where `update` is the global epoch), so a swarm and a single process with the same
    effective batch follow the same curve update by update.
    """
    return min(1.0, (update + 1) / max(config.warmup_updates, 1))


def scheduler_factory(config: TrainingConfig) -> partial:
    """optimizer -> the run's learning-rate schedule (LambdaLR over lr_factor). Peers and the coordinator's state
    loader must both have it: a scheduler adds `initial_lr` to the optimizer state that hivemind transfers."""
    return partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=partial(lr_factor, config=config))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return scheduler_factory(config)(optimizer)


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine between distinct rows: near 1 when every text has collapsed onto one vector."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    count = len(unit)
    if count < 2:
        return float("nan")
    total = unit.sum(0)
    return float(((total @ total) - count) / (count * (count - 1)))


@dataclass
class CollapseDetector:
    """Notices a collapsed encoder: every text on one vector, the contrastive loss pinned at chance.

    A swarm once trained for minutes at loss ln(64) = 4.1589 with nobody noticing (docs/benchmarks.md, "the
    swarm that trained nothing"). Collapse shows as the absolute InfoNCE within `tolerance` of ln(batch) or the
    batch's mean pairwise cosine above `max_cosine`, for `patience` steps in a row.
    """

    patience: int = 20
    tolerance: float = 1e-3
    max_cosine: float = 0.98
    streak: int = 0

    def observe(self, batch_size: int, absolute_loss: float, mean_cosine: float) -> bool:
        """Record one step; True while collapsed (patience steps in a row looked collapsed)."""
        collapsed_now = abs(absolute_loss - math.log(batch_size)) < self.tolerance or mean_cosine > self.max_cosine
        self.streak = self.streak + 1 if collapsed_now else 0
        return self.streak >= self.patience

    @property
    def collapsed(self) -> bool:
        return self.streak >= self.patience

    @staticmethod
    def warning(batch_size: int, absolute_loss: float, mean_cosine: float) -> str:
        return (
            f"training has collapsed: loss {absolute_loss:.4f} against chance ln({batch_size}) = {math.log(batch_size):.4f}, "
            f"mean cosine between a batch's texts {mean_cosine:.3f}; the encoder maps every text to nearly one vector "
            "(lower the learning rate or lengthen the warm-up; docs/operating.md, 'collapse')"
        )


def _random_state(device: torch.device) -> tuple:
    """The random numbers dropout will draw next on `device` (CPU generator, and the GPU's for CUDA)."""
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_random_state(device: torch.device, state: tuple) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)
