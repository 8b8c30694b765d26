"""A synthetic coordinator workdir: a realistic ledger, release directories and coordinator.json.

For the dashboard's tests, screenshots and load benchmark. The ledger is written through
cairn.protocol.ledger_schema.connect, exactly as the coordinator writes it. Releases are built as release
directories (manifest, landmarks, weights stand-in); signing them into DIR/repository is the
coordinator's job, so the caller passes its publisher (cairn.coordinator.publishing's ReleaseRepository:
anything with init(), publish_release(dir) and publish_landmarks(path, version)) -- the dashboard
itself never imports the coordinator.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet
from cairn.protocol.workdir import CoordinatorState, Workdir
from cairn.protocol.ledger_schema import connect
from cairn.releases.files import file_sha256
from cairn.releases.manifest import FileEntry, Manifest, write_manifest
from cairn.releases.version import ReleaseVersion

HOSTILE_NAMES = ("<script>alert(1)</script>", '"><img src=x onerror=alert(2)>')
RUN_ID = "cairn-demo"


class Publisher(Protocol):
    def init(self) -> None: ...

    def publish_release(self, release_dir: Path) -> Any: ...

    def publish_landmarks(self, path: Path, version: int) -> Any: ...


@dataclass(frozen=True)
class SyntheticPeer:
    public_id: str
    display_name: str
    device: str
    speed: float  # samples per second
    online: bool = True


def default_peers(count: int = 3) -> list[SyntheticPeer]:
    """alice plus the two hostile display names, then more ordinary peers, and one peer gone offline."""
    names = ["alice-laptop", *HOSTILE_NAMES] + [f"volunteer-{i:03d}" for i in range(max(0, count - 3))]
    peers = [
        SyntheticPeer(f"{i + 1:016x}", name, "cuda" if i % 3 == 1 else "cpu", 40.0 + 25.0 * (i % 4)) for i, name in enumerate(names[:count])
    ]
    return peers + [SyntheticPeer("00000000000000ff", "bob (offline)", "cpu", 30.0, online=False)]


def anchors(count: int, offset: int = 0) -> list[str]:
    topics = [
        "a river in spring",
        "the stock market fell",
        "a goal in extra time",
        "quantum entanglement",
        "baking sourdough bread",
        "a parliamentary vote",
        "the violin concerto",
        "a broken leg",
        "machine translation",
        "volcanic ash cloud",
    ]
    return [f"{topics[(i + offset) % len(topics)]} #{i + offset}" for i in range(count)]


BATCH_SIZE = 32  # the synthetic run's batch size: its loss at chance is ln 32


def build_workdir(
    root: Path,
    *,
    now: float,
    peers: list[SyntheticPeer] | None = None,
    hours: float = 1.0,
    record_every: float = 10.0,
    snapshot_every: float = 5.0,
    publisher: Publisher | None = None,
    seed: int = 0,
    at_chance: bool = False,
    gap: tuple[float, float] | None = None,
    collapsed: frozenset[str] = frozenset(),
) -> Path:
    """Write a coordinator workdir under `root` whose history ends at `now`; returns `root`.

    `at_chance`: a run that learns nothing (loss at ln BATCH_SIZE, probe scores at chance), the case the dashboard
    must not make look healthy. `gap`: (from, to) as fractions of the history with no data (the swarm was down
    between two runs). `collapsed`: public ids whose records carry the collapsed flag.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    peers = peers if peers is not None else default_peers()
    start = now - hours * 3600.0
    v1 = LandmarkSet(1, anchors(24))
    v2 = v1.extend(anchors(8, offset=24))
    layout = Workdir(root)
    layout.run_dir.mkdir(exist_ok=True)
    v1.save(layout.run_dir / LANDMARKS_FILE)
    layout.run_config_path.write_text(json.dumps({"run_id": RUN_ID, "training": {"batch_size": BATCH_SIZE}}))
    loss = _chance_loss if at_chance else _loss
    missing = (lambda at: False) if gap is None else (lambda at: start + gap[0] * (now - start) <= at < start + gap[1] * (now - start))
    CoordinatorState(
        join=("/ip4/127.0.0.1/tcp/31337/p2p/12D3KooWDemoCoordinatorPeerIdForTheDashboardTests",),
        repository_url="http://127.0.0.1:8700",
        run_id=RUN_ID,
        started_at=now,
    ).save(layout.state_file)

    db = connect(layout.ledger)
    db.execute("BEGIN")
    for peer in peers:
        _write_peer(db, peer, start, now, record_every, rng, loss, missing, peer.public_id in collapsed)
    step_rate = sum(p.speed for p in peers if p.online) / 256.0  # global steps per second
    steps = int(hours * 3600.0 / snapshot_every)
    for i in range(steps + 1):
        at = start + i * snapshot_every
        if missing(at):
            continue
        progress = (at - start) / max(now - start, 1.0)
        db.execute(
            "INSERT INTO swarm VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                at,
                int((at - start) * step_rate),
                sum(p.online for p in peers),
                sum(p.speed for p in peers if p.online) * (1 + 0.06 * math.sin(12 * progress)) * rng.uniform(0.98, 1.02),
                loss(progress, rng),
                int((at - start) * step_rate * 256),
                at - rng.uniform(0.0, 8.0),
            ),
        )
    releases_dir = root / "releases"
    built = []
    for version, parent, landmarks, fraction in (("0.1.0", None, v1, 0.4), ("0.2.0", "0.1.0", v2, 0.9)):
        step = int(hours * 3600.0 * fraction * step_rate)
        directory = _release_dir(releases_dir / version, version, parent, landmarks, step, fraction, rng, at_chance)
        manifest_json = (directory / "manifest.json").read_text()
        db.execute(
            "INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?)",
            (version, parent, step, step * 256, start + hours * 3600.0 * fraction, manifest_json),
        )
        built.append(directory)
    db.execute("COMMIT")
    db.close()
    if publisher is not None:
        publisher.init()
        publisher.publish_landmarks(layout.run_dir / LANDMARKS_FILE, 1)
        for directory in built:
            publisher.publish_release(directory)
    return root


def _loss(progress: float, rng: random.Random) -> float:
    return 0.6 + 2.4 * math.exp(-3.0 * progress) + rng.uniform(-0.03, 0.03)


def _chance_loss(progress: float, rng: random.Random) -> float:
    return math.log(BATCH_SIZE) + rng.uniform(-0.02, 0.02)


def _write_peer(
    db,
    peer: SyntheticPeer,
    start: float,
    now: float,
    every: float,
    rng: random.Random,
    loss=_loss,
    missing=lambda at: False,
    collapsed: bool = False,
) -> None:
    begin = start + rng.uniform(0, 600)
    end = now - rng.uniform(1, 8) if peer.online else start + (now - start) * 0.4
    db.execute(
        "INSERT INTO peers (public_id, display_name, peer_id, device, first_seen, last_seen) VALUES (?, ?, ?, ?, ?, ?)",
        (peer.public_id, peer.display_name, f"12D3KooW{peer.public_id}Demo", peer.device, begin, begin),
    )
    samples = credited = shards = 0
    at = begin
    shard = rng.randrange(16)
    while at <= end:
        speed = peer.speed * rng.uniform(0.85, 1.15)
        delta = int(speed * every)
        samples += delta
        granted = int(delta * rng.uniform(0.9, 1.0))
        credited += granted
        if rng.random() < 0.02:
            shards += 1
            shard = rng.randrange(16)
        progress = (at - start) / max(now - start, 1.0)
        if not missing(at):
            db.execute(
                "INSERT INTO records (public_id, reported_at, received_at, samples, steps, loss, samples_per_second, epoch, shard, credited_delta, "
                "collapsed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    peer.public_id,
                    at,
                    at + 0.5,
                    samples,
                    samples // 32,
                    loss(progress, rng) + 0.05,
                    speed,
                    int(progress * 40),
                    shard,
                    granted,
                    int(collapsed),
                ),
            )
        at += every
    db.execute(
        "UPDATE peers SET last_seen = ?, claimed_samples = ?, credited_samples = ?, seconds_online = ?, shards_completed = ?, "
        "last_counter = ?, last_uptime = ? WHERE public_id = ?",
        (at - every, samples, credited, at - every - begin, shards, samples, at - every - begin, peer.public_id),
    )
    for epoch in (5, 10):
        claimed = 1.2 + rng.uniform(-0.02, 0.02)
        passed = not peer.display_name.startswith('"')
        db.execute(
            "INSERT INTO spot_checks (public_id, epoch, claimed_loss, recomputed_loss, passed, checked_at) VALUES (?, ?, ?, ?, ?, ?)",
            (peer.public_id, epoch, claimed, claimed + (0.01 if passed else 0.9), int(passed), begin + 60 * epoch),
        )


def _release_dir(
    directory: Path,
    version: str,
    parent: str | None,
    landmarks: LandmarkSet,
    step: int,
    quality: float,
    rng: random.Random,
    at_chance: bool = False,
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    landmarks.save(directory / "landmarks.json")
    (directory / "model.safetensors").write_bytes(rng.randbytes(256 * 1024))
    (directory / "config.json").write_text(json.dumps({"dim": 256, "layers": 4}))
    (directory / "tokenizer.json").write_text(json.dumps({"model": {"type": "WordPiece"}}))
    files = {}
    for name in ("model.safetensors", "config.json", "tokenizer.json", "landmarks.json"):
        sha256, length = file_sha256(directory / name)
        files[name] = FileEntry(sha256, length)

    def view(scale: float) -> dict[str, float]:
        return {
            "gloss_lemma_r1": round(0.12 * quality * scale, 4),
            "gloss_lemma_r10": round(0.35 * quality * scale, 4),
            "simlex_spearman": round(0.30 * quality * scale, 4),
            "wordsim_spearman": round(0.45 * quality * scale, 4),
            "bbc_probe_acc": round(0.55 + 0.4 * quality * scale, 4),
        }

    # the shapes cairn/coordinator/releaser.py writes: cairn.evaluation.suite's report, cairn.evaluation.compatibility's report
    metrics: dict[str, Any] = {
        "relational": {**{str(m): view(1 - 0.5 / math.log2(m)) for m in (16, 32, 64)}, "full": view(1.0)},
        "absolute": {"full": view(1.05)},
        "meta": {"quick": True, "dims": [16, 32, 64], "widths": {"relational": 64, "absolute": 256}},
        # cairn.evaluation.promises: Matryoshka prefixes on the BBC probe, alignment with the outside reference
        "matryoshka": {
            "relational_prefix": {
                "8": round(0.5 + 0.3 * quality, 4),
                "16": round(0.55 + 0.38 * quality, 4),
                "32": round(0.6 + 0.38 * quality, 4),
                "64": round(0.6 + 0.4 * quality, 4),
                "k95": 16 if quality > 0.5 else 32,
            },
            "random_order": {
                "8": round(0.35 + 0.2 * quality, 4),
                "16": round(0.45 + 0.3 * quality, 4),
                "32": round(0.55 + 0.36 * quality, 4),
                "64": round(0.6 + 0.4 * quality, 4),
                "k95": 64,
            },
            "pca_absolute": {
                "8": round(0.55 + 0.4 * quality, 4),
                "16": round(0.58 + 0.41 * quality, 4),
                "32": round(0.6 + 0.4 * quality, 4),
                "64": round(0.6 + 0.4 * quality, 4),
                "k95": 8,
            },
            "goal": {"k95": 8},
            "goal_met": False,
        },
        "outside": {
            "reference": "all-MiniLM-L6-v2 on 1000 held-out texts of the run's corpus",
            "relational": {"mutual_knn10": round(0.25 * quality, 4)},
            "absolute": {"mutual_knn10": round(0.27 * quality, 4)},
            "chance": {"mutual_knn10": 0.01},
        },
    }
    if at_chance:  # BBC's 5 topics: every prefix at about 0.2, so "95 % of full" comes at the smallest prefix
        for curve in ("relational_prefix", "random_order", "pca_absolute"):
            metrics["matryoshka"][curve] = {**{k: round(0.2 + rng.uniform(-0.01, 0.01), 4) for k in ("8", "16", "32", "64")}, "k95": 8.0}
        metrics["matryoshka"]["goal_met"] = True
    compatibility = (
        {}
        if parent is None
        else {
            "parent": parent,
            "probe": "bbc-news 5 topics, 60 per topic",
            "relational": {
                "head_score_old": 0.82,
                "head_score_new": 0.79,
                "head_ratio": 0.963,
                "agreement": 0.93,
                "cross_retrieval_r1": 0.88,
            },
            "absolute": {
                "head_score_old": 0.85,
                "head_score_new": 0.31,
                "head_ratio": 0.365,
                "agreement": 0.12,
                "cross_retrieval_r1": 0.05,
            },
        }
    )
    manifest = Manifest(
        version=ReleaseVersion.parse(version),
        parent_version=ReleaseVersion.parse(parent) if parent else None,
        run_id=RUN_ID,
        global_step=step,
        landmarks_version=landmarks.version,
        landmarks_digest=landmarks.digest,
        files=files,
        metrics=metrics,
        compatibility=compatibility,
        extra={
            "samples_seen": step * 256,
            "contributors": 4,
            "created_at": 0.0,
            "encoder": {"model": "tiny", "parameters": 1_234_567},
            "spot_checks": {"passed": 7, "failed": 1},
        },
    )
    write_manifest(manifest, directory / "manifest.json")
    return directory
