"""The coordinator's workdir: the one module that names its files, so every reader agrees on them.

The coordinator writes the directory; `cairn swarm`, the dashboard, the container entrypoint and the tests read
parts of it. They may not import the coordinator, so the layout, the state file's format and the release
request live here in the contract. Documented so operators can back it up:

    DIR/run.json            the run configuration (RunConfig JSON)
    DIR/run/                tokenizer.json and landmarks.json of the run (v1 landmark set)
    DIR/run/outside_reference.npz   all-MiniLM-L6-v2 vectors of the held-out alignment texts (a cache)
    DIR/p2p.key             the libp2p identity: a fixed PeerID, so the join address never changes
    DIR/dht.pem             the RSA key that signs the run configuration and DHT records (0600)
    DIR/keys/               TUF role keys, <role>-<keyid>.pem (0600; root and targets encrypted with a passphrase);
                            export the root keys and keep them offline (`cairn coordinator keys export-root`)
    DIR/repository/         the TUF release repository served over HTTP
    DIR/ledger.sqlite       the contribution ledger (SQLite, WAL; schema in cairn.protocol.ledger_schema)
    DIR/releases/           unsigned release directories as built, before publishing
    DIR/known_peers.json    peers seen at the last shutdown, dialled again on restart
    DIR/coordinator.json    the running coordinator's addresses (CoordinatorState), for peers, `cairn swarm`, the dashboard
    DIR/release.request     present: cut a release at the next check (`cairn coordinator release` creates it)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cairn.protocol.errors import CairnError
from cairn.protocol.fsutil import atomic_write_json, read_at_most

if TYPE_CHECKING:  # run_config pulls the tokenizer tables; the entrypoint and the dashboard only read coordinator.json
    from cairn.protocol.run_config import RunConfig

STATE_FILE = "coordinator.json"
MAX_STATE_BYTES = 64 * 1024  # a state file is a few hundred bytes; a reader never loads more than this
MAX_ADDRESS_CHARS = 500


@dataclass(frozen=True)
class CoordinatorState:
    """DIR/coordinator.json: written atomically by `cairn coordinator run` once it listens.

    Only `join` is required: older files and test fixtures carry just the addresses. `started_at` (Unix time)
    lets a reader tell this run's file from one a previous run left behind.
    """

    join: tuple[str, ...]
    repository_url: str | None = None
    pid: int | None = None
    run_id: str | None = None
    started_at: float = 0.0

    def save(self, path: Path) -> None:
        document: dict[str, Any] = asdict(self)
        document["join"] = list(self.join)
        atomic_write_json(path, {key: value for key, value in document.items() if value is not None})

    @classmethod
    def load(cls, path: Path) -> CoordinatorState:
        """The state in `path`; CairnError (one line) when it is missing, too large or not a coordinator state."""
        try:
            data = read_at_most(path, MAX_STATE_BYTES)
        except OSError as error:
            raise CairnError(f"{path}: cannot read the coordinator's state ({error.strerror or error})") from None
        if data is None:
            raise CairnError(f"{path}: larger than {MAX_STATE_BYTES} bytes, not a coordinator state file")
        try:
            document = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise CairnError(f"{path}: not JSON ({error})") from None
        problem = _problem(document)
        if problem:
            raise CairnError(f"{path}: not a coordinator state file ({problem})")
        return cls(
            join=tuple(document["join"]),
            repository_url=document.get("repository_url"),
            pid=document.get("pid"),
            run_id=document.get("run_id"),
            started_at=float(document.get("started_at", 0.0)),
        )


def _problem(document: object) -> str | None:
    """What makes `document` unusable as a CoordinatorState, or None."""
    if not isinstance(document, dict):
        return "not an object"
    join = document.get("join")
    if not isinstance(join, list) or not join or not all(isinstance(a, str) and 0 < len(a) < MAX_ADDRESS_CHARS for a in join):
        return "'join' must be a non-empty list of addresses"
    url = document.get("repository_url")
    if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) < MAX_ADDRESS_CHARS):
        return "'repository_url' must be an http(s) URL"
    for key, kind in (("pid", int), ("run_id", str), ("started_at", (int, float))):
        value = document.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            return f"{key!r} has the wrong type"
    return None


@dataclass(frozen=True)
class Workdir:
    """The paths of a coordinator workdir (see the module docstring); nothing is created by naming them."""

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
    def known_peers(self) -> Path:
        return self.root / "known_peers.json"

    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def release_request(self) -> Path:
        return self.root / "release.request"

    def is_initialised(self) -> bool:
        return self.run_config_path.exists()

    def load_run_config(self) -> RunConfig:
        from cairn.protocol.run_config import RunConfig

        if not self.is_initialised():
            raise CairnError(f"{self.root} is not an initialised coordinator workdir; run `cairn coordinator init --workdir {self.root}`")
        return RunConfig.from_json_bytes(self.run_config_path.read_bytes())

    def read_state(self) -> CoordinatorState | None:
        """The running (or last) coordinator's state; None while there is none, CairnError when it is malformed."""
        if not self.state_file.exists():
            return None
        return CoordinatorState.load(self.state_file)

    def request_release(self) -> None:
        """Ask the running coordinator to cut a release at its next check (a file, so any process may ask)."""
        self.release_request.touch()

    def release_requested(self) -> bool:
        return self.release_request.exists()

    def clear_release_request(self) -> None:
        self.release_request.unlink(missing_ok=True)
