"""The run configuration: what every peer of one training run must agree on before it trains.

TrainingConfig (with its ObjectiveConfig) and SwarmConfig are the hyperparameters; RunConfig adds the corpus,
tokenizer and landmark digests. Every command-line option that sets one is generated from its `setting`
(cairn/cli_options.py): one default and one range per setting.

The coordinator derives it from the corpus (tokenizer and landmark digests are deterministic
functions of corpus + config), signs it and serves it; a peer recomputes the digests from its own
copy of the corpus and refuses to start on any mismatch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from cairn.protocol import PROTOCOL_VERSION
from cairn.protocol.encoder_config import MODEL_SIZES, config_for
from cairn.protocol.errors import CairnError, ProtocolMismatch
from cairn.protocol.settings import check_ranges, setting
from cairn.protocol.tokenizer import VOCABULARIES

COMPRESSIONS = ("none", "fp16", "uniform8", "blockwise8", "sparse8")
# how peers combine their work: an all-reduce of gradients every global step, or DiLoCo's local steps and outer rounds
AVERAGING = ("gradients", "diloco")
# how a reducer combines the senders' parts of a slice: hivemind's weighted mean, or a robust rule (cairn/peer/aggregation.py)
AGGREGATIONS = ("mean", "centered_clip", "trimmed_mean")


@dataclass(frozen=True)
class ObjectiveConfig:
    """The loss: weight x InfoNCE on the absolute vector + weight x mean InfoNCE over relational prefixes (+ compat)."""

    prefix_dims: Sequence[int] = (16, 32, 64, 128, 256)
    # Trains the relational vector itself (docs/embedding.md, "the recipe"): with the static encoder it lifts the
    # relational read-out to the absolute vector's quality. (From a random start the tiny transformer's relational
    # term stalled at chance: docs/benchmarks.md, "objective".)
    relational_weight: float = setting(1.0, "weight of the Matryoshka relational term (InfoNCE on relational prefixes)", min=0.0, max=100.0)
    absolute_weight: float = setting(1.0, "weight of InfoNCE on the absolute (pooled) vector", min=0.0, max=100.0)
    temperature: float = setting(0.05, "InfoNCE temperature of the absolute vector", min=0.0, max=10.0, min_open=True)
    relational_temperature: float = setting(0.1, "InfoNCE temperature of the relational prefixes", min=0.0, max=10.0, min_open=True)
    # Backward compatibility with the parent release (0: off). Measured in bench/compat_loss.py.
    compat_weight: float = setting(0.0, "weight of the compatibility term against the parent release (0: off)", min=0.0, max=100.0)

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.prefix_dims or any(not isinstance(d, int) or d < 1 for d in self.prefix_dims):
            raise ValueError("prefix_dims must be positive integers")


INITIALISATIONS = ("distilled", "random")


@dataclass(frozen=True)
class TrainingConfig:
    """Hyperparameters; the coordinator publishes these in the run configuration. Every command-line option
    that sets one is generated from its `setting` (cairn/protocol/settings.py): one default, one range."""

    model: str = setting("static", "encoder family and size (cairn.protocol.encoder.MODEL_SIZES)", choices=tuple(MODEL_SIZES))
    initialisation: str = setting(
        "distilled",
        "initial weights: 'distilled' (static model only) starts from "
        "all-MiniLM-L6-v2's vector of every token, reduced by PCA (cairn/training/distill.py); "
        "'random' from the seeded random init",
        choices=INITIALISATIONS,
    )
    vocabulary: str = setting(
        "bert-base-uncased",
        "token vocabulary: an established one shipped in cairn/protocol/vocab, or 'corpus' (WordPiece trained on the run's texts)",
        choices=VOCABULARIES,
    )
    batch_size: int = setting(1024, "pairs per forward pass (in-batch negatives: InfoNCE needs at least 2)", min=2, max=65536)
    lr: float = setting(3e-3, "peak learning rate of AdamW", min=0.0, max=10.0, min_open=True)
    weight_decay: float = setting(0.0, "AdamW's decoupled weight decay (toward zero)", min=0.0, max=1.0)
    start_pull: float = setting(
        1.0,
        "decoupled decay toward the initial weights (L2-SP, cairn/training/optim.py): keeps what a "
        "distilled start knows while the corpus is learned",
        min=0.0,
        max=100.0,
    )
    # Counted in updates, not samples: a swarm updating once per 2,048 samples got 1.5 updates of warm-up that
    # way, and its first full-size Adam steps collapsed the encoder (docs/benchmarks.md, "the swarm that trained nothing").
    warmup_updates: int = setting(20, "linear learning-rate warm-up, in optimizer updates", min=1, max=1_000_000)
    landmarks: int = setting(256, "anchors in the landmark set: the relational vector's width K", min=16, max=4096)
    landmark_order: str = setting(
        "farthest", "anchor order: farthest-point (anchors that split the data most first) or random", choices=("farthest", "random")
    )
    # 0: the anchors are encoded with gradient in every step (cheap for the static encoder: 256 more texts);
    # N > 0: re-encoded without gradient every N steps (a transformer's cost; bench/anchor_refresh.py)
    anchor_refresh_every: int = setting(
        0,
        "anchors of the relational term: 0 encodes them with gradient in every step, N re-encodes them without gradient every N steps",
        min=0,
        max=100_000,
    )
    reference_size: int = setting(512, "texts over which each anchor's cosine is standardised", min=16, max=100_000)
    seed: int = setting(
        0, "seed of the landmark set and reference texts (and of the initial weights unless --init-seed)", min=0, max=2**31 - 1
    )
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.initialisation == "distilled" and config_for(self.model).architecture != "static":
            raise ValueError(f"a distilled start needs the static model, not {self.model!r}: use --initialisation random")

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


@dataclass(frozen=True)
class SwarmConfig:
    """hivemind.Optimizer settings. Defaults measured on 2-core CPUs (docs/benchmarks.md):
    a small target batch spends most wall time averaging."""

    target_batch_size: int = setting(2048, "samples per global step (all peers together)", min=2, max=2**24)
    matchmaking_time: float = setting(1.0, "seconds a peer waits to gather a group for a per-step averaging round", min=0.1, max=600.0)
    # measured in docs/benchmarks.md section 10 ("matchmaking that follows the group")
    matchmaking_quorum: bool = setting(
        True,
        "start an averaging round as soon as every training peer with a live progress report has joined its group "
        "(false: always wait out the matchmaking time)",
    )
    averaging_timeout: float = setting(
        15.0,
        "how long a peer's first averaging rounds may take; later deadlines follow the rounds (3x the median of "
        "recent ones after successes, doubled after a timeout; at least 2x --next-chunk-timeout, at most 8x this)",
        min=1.0,
        max=3600.0,
    )
    # >= 5 s: hivemind's default silently half-averages some rounds
    next_chunk_timeout: float = setting(5.0, "seconds to wait for the next chunk of a peer's part in a round", min=5.0, max=600.0)
    request_timeout: float = setting(0.5, "seconds to wait for a peer to answer a request", min=0.05, max=60.0)
    average_state_every: int = setting(10, "full-state averaging rounds (fp16) every N global steps", min=1, max=100_000)
    compression: str = setting("blockwise8", "gradient compression on the wire", choices=COMPRESSIONS)
    # the default since the shaped-link and README-job measurements (docs/benchmarks.md sections 10 and 15): behind
    # 50 Mbit/s links per-step fp32 computes 2 % of the time, DiLoCo at H = 128 keeps 104 % of its unshaped throughput
    # with 140x fewer bytes per sample and a held-out loss 2.8 % below one process; on loopback (the README job) it
    # trains 2.7x the samples per second of per-step gradients and ends at a lower held-out loss
    averaging: str = setting(
        "diloco",
        "how peers combine their work: 'gradients' (all-reduce every global step) or 'diloco' "
        "(local AdamW steps; every --outer-every global steps, an outer Nesterov step on the averaged "
        "parameter change)",
        choices=AVERAGING,
    )
    # H = 128: the shortest measured round that sends 100x fewer bytes than per-step fp32 (H = 64: 79x); outer lr 0.35,
    # DiLoCo's 0.7 halved: 2.5-2.8 % below one process at H = 128 (at 0.7 the same H was 17 % above it where 0.35 was
    # 8 %, both in runs that read a quarter of the corpus; docs/benchmarks.md §10)
    outer_every: int = setting(
        128, "diloco: global steps' worth of samples (x --target-batch-size) between two outer rounds", min=1, max=100_000
    )
    # measured in docs/benchmarks.md section 10 ("a split swarm, reproduced"): hivemind declares a round's group to end
    # a matchmaking time after the peer pre-schedules it, and a peer joins only a group declared to end before its own;
    # peers whose estimates of the round's end differ by the window or more average in separate groups. Overlapped outer
    # rounds let peers drift apart by whole inner steps (1-2 s each behind home links); with the quorum a longer window
    # costs nothing while every peer is there, and the round runs in the background when one is missing
    outer_matchmaking_time: float = setting(
        5.0,
        "diloco: seconds a peer waits to gather a group for an outer round or a state averaging round "
        "(--matchmaking-time is for per-step rounds)",
        min=0.1,
        max=600.0,
    )
    outer_lr: float = setting(
        0.35, "diloco: learning rate of the outer Nesterov step (1 with no momentum = plain averaging)", min=0.0, max=10.0, min_open=True
    )
    # measured in docs/benchmarks.md section 10 ("top-k pseudo-gradients with error feedback"); Covenant-72B sends 1.6 %
    outer_topk: float = setting(
        0.0,
        "diloco: send only this fraction of each pseudo-gradient tensor's largest values every outer round and carry "
        "the rest into the next one (top-k with error feedback; blockwise8 then leaves out the zeros: sparse8); "
        "0 sends every value",
        min=0.0,
        max=1.0,
    )
    # measured in docs/benchmarks.md section 10 ("overlapped outer rounds"): the synchronous round stops every peer
    # for the all-reduce, which behind a home link costs a large share of the wall time
    outer_overlap: bool = setting(
        True,
        "diloco: run the outer round in the background while the next inner steps go on "
        "(the shared state lags one round; false: every peer waits for the round)",
    )
    # Robust rules hold every sender's part of a slice before answering (hivemind already waits for all of them) and
    # drop non-finite parts; measured in docs/benchmarks.md ("one malicious peer of four"): see aggregation.py's docstring
    # for what each rule guarantees for n peers (with 2 peers every rule is the mean of the finite parts).
    aggregation: str = setting(
        "centered_clip",
        "how each reducer combines the peers' parts: 'mean' (hivemind's, weighted by "
        "claimed samples), 'centered_clip' (BTARD) or 'trimmed_mean' (coordinate-wise); robust rules also "
        "drop non-finite parts",
        choices=AGGREGATIONS,
    )
    num_shards: int = setting(16, "corpus shards that peers lease", min=1, max=1_000_000)
    lease_seconds: float = setting(30.0, "shard lease; a departed peer's shard frees after this", min=5.0, max=86_400.0)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.outer_topk and self.averaging != "diloco":
            raise ValueError("outer_topk (--outer-topk) sparsifies DiLoCo's pseudo-gradients: it needs averaging diloco")
        if self.outer_topk and self.aggregation == "trimmed_mean":
            # a value only one peer of the group sent is an extreme of its coordinate, and trimmed away
            raise ValueError(
                "outer_topk (--outer-topk) with trimmed_mean aggregation drops every value only one peer sent: use centered_clip or mean"
            )

    @property
    def wire_compression(self) -> str:
        """What gradients travel as: `compression`, except that top-k pseudo-gradients leave out their zeros (sparse8)."""
        return "sparse8" if self.outer_topk and self.compression == "blockwise8" else self.compression

    @property
    def samples_per_epoch(self) -> int:
        """Samples (all peers together) between two averaging rounds: hivemind's target batch size, and what the
        ledger caps credit by per global step. A DiLoCo epoch is one outer round."""
        return self.target_batch_size * self.steps_per_epoch

    @property
    def steps_per_epoch(self) -> int:
        """Global steps' worth of samples (x target_batch_size) in one epoch: what release cadences count in, so that
        `--release-every R` means the same samples under either averaging (a DiLoCo epoch is --outer-every of them)."""
        return self.outer_every if self.averaging == "diloco" else 1

    @property
    def round_matchmaking_time(self) -> float:
        """The matchmaking window of this run's averaging rounds: DiLoCo's outer one, or the per-step one."""
        return self.outer_matchmaking_time if self.averaging == "diloco" else self.matchmaking_time

    @classmethod
    def from_json(cls, document: dict) -> "SwarmConfig":
        document = dict(document)
        # a run keeps the settings it was initialised with, whatever today's defaults: runs from before issue 13 averaged
        # gradients every step (or, with --local-updates, parameters: that became DiLoCo), and DiLoCo's round length and
        # outer learning rate were 16 and 0.7 until they became the defaults at 128 and 0.35 (2026-12-03)
        local_updates = document.pop("local_updates", False)
        document.setdefault("averaging", "diloco" if local_updates else "gradients")
        document.setdefault("outer_every", 16)
        document.setdefault("outer_lr", 0.7)
        # and every round, outer ones included, gathered its group for --matchmaking-time until 2026-12-03
        document.setdefault("outer_matchmaking_time", document.get("matchmaking_time", 1.0))
        return cls(**document)


@dataclass(frozen=True)
class RunConfig:
    run_id: str
    corpus: str
    corpus_digest: str
    tokenizer_digest: str
    landmarks_digest: str
    landmarks_version: int
    training: TrainingConfig = field(default_factory=TrainingConfig)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    init: str = "fresh"  # or "release": start from the latest release when alone
    protocol_version: int = PROTOCOL_VERSION

    def to_json_bytes(self) -> bytes:
        document = asdict(self)
        document["training"] = self.training.to_json()
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> "RunConfig":
        try:
            document = json.loads(data.decode("utf-8"))
            training = TrainingConfig.from_json(document.pop("training"))
            swarm = SwarmConfig.from_json(document.pop("swarm"))
            return cls(training=training, swarm=swarm, **document)
        except CairnError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
            raise CairnError(f"malformed run configuration ({error.__class__.__name__}: {error})") from None

    def check_compatible(self, tokenizer_digest: str, landmarks_digest: str, corpus_digest: str) -> None:
        """Refuse to train with a different protocol, corpus, tokenizer or landmark set."""
        if self.protocol_version != PROTOCOL_VERSION:
            raise ProtocolMismatch(
                f"run {self.run_id} speaks protocol v{self.protocol_version}, this peer v{PROTOCOL_VERSION}; upgrade cairn-net"
            )
        for what, ours, theirs in (
            ("corpus", corpus_digest, self.corpus_digest),
            ("tokenizer", tokenizer_digest, self.tokenizer_digest),
            ("landmark set", landmarks_digest, self.landmarks_digest),
        ):
            if ours != theirs:
                raise ProtocolMismatch(
                    f"this peer's {what} digest {ours[:12]} differs from run {self.run_id}'s {theirs[:12]}; refusing to train"
                )
