"""The run configuration: what every peer of one training run must agree on before it trains.

The coordinator derives it from the corpus (tokenizer and landmark digests are deterministic
functions of corpus + config), signs it and serves it; a peer recomputes the digests from its own
copy of the corpus and refuses to start on any mismatch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from cairn.protocol import PROTOCOL_VERSION
from cairn.protocol.errors import CairnError, ProtocolMismatch
from cairn.protocol.settings import check_ranges, setting
from cairn.training.task import TrainingConfig

COMPRESSIONS = ("none", "fp16", "uniform8", "blockwise8")


@dataclass(frozen=True)
class SwarmConfig:
    """hivemind.Optimizer settings. Defaults measured on 2-core CPUs (docs/benchmarks.md):
    a small target batch spends most wall time averaging."""

    target_batch_size: int = setting(2048, "samples per global step (all peers together)", min=2, max=2**24)
    matchmaking_time: float = setting(1.0, "seconds a peer waits to gather a group for an averaging round", min=0.1, max=600.0)
    averaging_timeout: float = setting(15.0, "the longest an averaging round may take (a departed peer can stall a round this long)",
                                       min=1.0, max=3600.0)
    # >= 5 s: hivemind's default silently half-averages some rounds
    next_chunk_timeout: float = setting(5.0, "seconds to wait for the next chunk of a peer's part in a round", min=5.0, max=600.0)
    request_timeout: float = setting(0.5, "seconds to wait for a peer to answer a request", min=0.05, max=60.0)
    average_state_every: int = setting(10, "full-state averaging rounds (fp16) every N global steps", min=1, max=100_000)
    compression: str = setting("blockwise8", "gradient compression on the wire", choices=COMPRESSIONS)
    local_updates: bool = False  # DiLoCo-style: local steps, parameters averaged once per epoch
    num_shards: int = setting(16, "corpus shards that peers lease", min=1, max=1_000_000)
    lease_seconds: float = setting(30.0, "shard lease; a departed peer's shard frees after this", min=5.0, max=86_400.0)

    def __post_init__(self) -> None:
        check_ranges(self)


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
            swarm = SwarmConfig(**document.pop("swarm"))
            return cls(training=training, swarm=swarm, **document)
        except CairnError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
            raise CairnError(f"malformed run configuration ({error.__class__.__name__}: {error})") from None

    def check_compatible(self, tokenizer_digest: str, landmarks_digest: str, corpus_digest: str) -> None:
        """Refuse to train with a different protocol, corpus, tokenizer or landmark set."""
        if self.protocol_version != PROTOCOL_VERSION:
            raise ProtocolMismatch(f"run {self.run_id} speaks protocol v{self.protocol_version}, this peer v{PROTOCOL_VERSION}; upgrade cairn-net")
        for what, ours, theirs in (("corpus", corpus_digest, self.corpus_digest), ("tokenizer", tokenizer_digest, self.tokenizer_digest),
                                   ("landmark set", landmarks_digest, self.landmarks_digest)):
            if ours != theirs:
                raise ProtocolMismatch(f"this peer's {what} digest {ours[:12]} differs from run {self.run_id}'s {theirs[:12]}; refusing to train")
