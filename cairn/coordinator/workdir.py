"""Where a coordinator keeps its state: one directory, documented here so operators can back it up.

    DIR/run.json            the run configuration (RunConfig JSON)
    DIR/run/                tokenizer.json and landmarks.json of the run (v1 landmark set)
    DIR/run/outside_reference.npz   all-MiniLM-L6-v2 vectors of the held-out alignment texts (a cache)
    DIR/p2p.key             the libp2p identity: a fixed PeerID, so the join address never changes
    DIR/dht.pem             the RSA key that signs the run configuration and DHT records (0600)
    DIR/keys/               TUF role keys, <role>-<keyid>.pem (0600; root and targets encrypted with a passphrase);
                            export the root keys and keep them offline (`cairn coordinator keys export-root`)
    DIR/repository/         the TUF release repository served over HTTP
    DIR/ledger.sqlite       the contribution ledger (SQLite, WAL, synchronous=FULL)
    DIR/releases/           unsigned release directories as built, before publishing
    DIR/coordinator.json    addresses of the running coordinator (for `cairn swarm` and the dashboard)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cairn.protocol.errors import CairnError
from cairn.protocol.run_config import RunConfig


@dataclass(frozen=True)
class Workdir:
    root: Path

    @property
    def run_config_path(self) -> Path:
        return self.root / "run.json"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def p2p_identity(self) -> Path:
        return self.root / "p2p.key"

    @property
    def dht_key(self) -> Path:
        return self.root / "dht.pem"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def repository(self) -> Path:
        return self.root / "repository"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def releases(self) -> Path:
        return self.root / "releases"

    @property
    def state_file(self) -> Path:
        return self.root / "coordinator.json"

    def load_run_config(self) -> RunConfig:
        if not self.run_config_path.exists():
            raise CairnError(f"{self.root} is not an initialised coordinator workdir; run `cairn coordinator init --workdir {self.root}`")
        return RunConfig.from_json_bytes(self.run_config_path.read_bytes())
