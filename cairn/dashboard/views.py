"""The data behind every page: one function per page, returning plain JSON-ready dicts.

The HTML page and its `/api/...` twin are rendered from the same call, so they can never disagree.
These functions block (SQLite, files); the app runs them on one worker thread, never on the loop.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cairn.dashboard import ledger as q
from cairn.dashboard.ledger import Ledger, LedgerUnavailable
from cairn.dashboard.live import LiveRecords
from cairn.dashboard.releases import ParsedCache, landmark_sets, release_list
from cairn.dashboard.repository import SignedRepository
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import LANDMARKS_FILE
from cairn.protocol.workdir import MAX_STATE_BYTES, CoordinatorState, Workdir

MAX_JOIN_SHOWN = 8
HISTORY_SECONDS = 3600.0
STALE_SNAPSHOT_SECONDS = 60.0


@dataclass
class Sources:
    """Everything the dashboard reads, all of it under the coordinator's workdir, never written."""

    workdir: Path
    ledger: Ledger
    repository: SignedRepository
    live: LiveRecords | None = None
    clock: Callable[[], float] = time.time
    parsed: ParsedCache = field(default_factory=ParsedCache)

    @classmethod
    def for_workdir(cls, workdir: Path, **kwargs: Any) -> Sources:
        workdir = Path(workdir)
        layout = Workdir(Path(workdir))
        return cls(layout.root, Ledger(layout.ledger), SignedRepository(layout.repository), **kwargs)


def coordinator_info(workdir: Path) -> dict[str, Any]:
    """Join addresses and repository URL from DIR/coordinator.json; absent or malformed means none.

    The pages show them, so only what CoordinatorState.load accepts (http(s) URL, bounded lengths) gets through.
    """
    try:
        state = CoordinatorState.load(Workdir(workdir).state_file)
    except CairnError:
        return {"join": [], "repository_url": None}
    return {"join": list(state.join[:MAX_JOIN_SHOWN]), "repository_url": state.repository_url}


def chance_loss(workdir: Path) -> dict[str, Any] | None:
    """The chance level of the loss peers report: absolute InfoNCE over a batch of B pairs is ln B when the encoder
    tells nothing apart. B is the run's batch size (DIR/run.json); a peer that overrides --batch-size has its own."""
    try:
        with open(Workdir(workdir).run_config_path, "rb") as handle:  # read leniently: only one number is needed
            batch_size = json.loads(handle.read(MAX_STATE_BYTES + 1).decode("utf-8"))["training"]["batch_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        return None
    return {"batch_size": batch_size, "loss": math.log(batch_size)}


def _read(sources: Sources, notices: list[str], query, *args, default=None):
    try:
        return sources.ledger.read(query, *args)
    except LedgerUnavailable as error:
        if str(error) not in notices:
            notices.append(str(error))
        return default


# ---- pages -------------------------------------------------------------------------------------


def swarm(sources: Sources) -> dict[str, Any]:
    """The swarm now: peers online, global step, speed, last all-reduce, and the last hour."""
    now = sources.clock()
    notices: list[str] = []
    snapshot = _read(sources, notices, q.latest_snapshot)
    peers = _read(sources, notices, q.online_peers, now, default=[])
    history = _read(sources, notices, q.swarm_series, now - HISTORY_SECONDS, default=[])
    for peer in peers:
        peer["source"] = "ledger"
    used = ["ledger"]
    live_step = None
    if sources.live is not None:
        used.append("dht")
        live_step = _merge_live(peers, sources.live, now, notices)
    if snapshot is not None and now - snapshot["at"] > STALE_SNAPSHOT_SECONDS:
        notices.append(f"the coordinator's latest swarm snapshot is {int(now - snapshot['at'])} s old: is the coordinator running?")
    samples_per_second = snapshot["samples_per_second"] if snapshot else sum(p["samples_per_second"] or 0 for p in peers)
    last_allreduce = snapshot["last_allreduce_at"] if snapshot else None
    coordinator_fresh = snapshot is not None and now - snapshot["at"] <= STALE_SNAPSHOT_SECONDS
    return {
        # the status dot: green only while a coordinator writes snapshots and someone trains
        "status": "training" if coordinator_fresh and peers else "idle",
        "chance": chance_loss(sources.workdir),
        "now": now,
        "global_step": max((s for s in (snapshot["global_step"] if snapshot else None, live_step) if s is not None), default=None),
        "samples_per_second": samples_per_second,
        "mean_loss": snapshot["mean_loss"] if snapshot else None,
        "snapshot_at": snapshot["at"] if snapshot else None,
        "last_allreduce_at": last_allreduce,
        "seconds_since_allreduce": now - last_allreduce if last_allreduce is not None else None,
        "peers_online": len(peers),
        "peers": peers,
        "history": history,
        "sources": used,
        "notices": notices,
        **coordinator_info(sources.workdir),
    }


def _merge_live(peers: list[dict[str, Any]], live: LiveRecords, now: float, notices: list[str]) -> int | None:
    """Overlay fresh DHT records on the ledger's view: fresher speed and shard, peers the ledger lacks.

    Returns the highest global step (hivemind epoch) a fresh record reports, if any.
    """
    records, error = live.snapshot()
    if error:
        notices.append(f"DHT: {error}")
    by_id = {p["public_id"]: p for p in peers}
    step = None
    for public_id, record in sorted(records.items()):
        if record.reported_at < now - q.ONLINE_SECONDS:
            continue
        epoch = getattr(record, "epoch", None)
        if isinstance(epoch, int):
            step = max(step or 0, epoch)
        fresh = {
            "display_name": record.display_name,
            "device": record.device,
            "samples_per_second": record.samples_per_second,
            "uptime_seconds": record.uptime_seconds,
            "shard": record.shard,
            "loss": record.loss,
            "collapsed": bool(getattr(record, "collapsed", False)),
            "last_seen": record.reported_at,
        }
        if public_id in by_id:
            by_id[public_id].update(fresh, source="ledger+dht")
        else:
            peers.append({"public_id": public_id, "first_seen": None, **fresh, "source": "dht"})
    return step


def contributors(sources: Sources, sort: str) -> dict[str, Any]:
    notices: list[str] = []
    board = _read(sources, notices, q.contributors, sort, sources.clock(), default=None) or {"count": 0, "total_samples": 0, "rows": []}
    return {"sort": sort, "sorts": list(q.SORT_COLUMNS), **board, "notices": notices}


def contributor(sources: Sources, public_id: str) -> dict[str, Any] | None:
    """One contributor with its history; None if the ledger does not know it (404)."""
    notices: list[str] = []
    found = _read(sources, notices, q.contributor, public_id, sources.clock())
    if found is not None:
        found["notices"] = notices
        found["chance"] = chance_loss(sources.workdir)
    return found


def convergence(sources: Sources) -> dict[str, Any]:
    """Loss against step and wall time, per-peer loss, and every release's metrics and compatibility."""
    notices: list[str] = []
    releases = _releases(sources, notices)
    ordered = list(reversed(releases["releases"]))  # oldest first, for charts
    return {
        "chance": chance_loss(sources.workdir),
        "loss_by_step": _read(sources, notices, q.loss_by_step, default=[]),
        "swarm": _read(sources, notices, q.swarm_series, default=[]),
        "peer_loss": _read(sources, notices, q.peer_loss_series, default=[]),
        "releases": [
            {
                key: r[key]
                for key in ("version", "parent_version", "global_step", "created_at", "metrics", "matryoshka", "compatibility", "promises")
            }
            for r in ordered
        ],
        "notices": notices,
    }


def releases(sources: Sources) -> dict[str, Any]:
    notices: list[str] = []
    data = _releases(sources, notices)
    return {**data, "notices": notices}


def landmarks(sources: Sources) -> dict[str, Any]:
    notices: list[str] = []
    listed = _releases(sources, notices)["releases"]
    data = landmark_sets(sources.repository, Workdir(sources.workdir).run_dir / LANDMARKS_FILE, listed, sources.parsed)
    return {**data, "notices": notices + data.pop("problems")}


def _releases(sources: Sources, notices: list[str]) -> dict[str, Any]:
    rows = _read(sources, notices, q.release_rows, default=[])
    data = release_list(sources.repository, rows, coordinator_info(sources.workdir)["repository_url"], sources.parsed)
    error = data["signing"]["error"]
    if error and data["releases"]:
        notices.append(error)
    return data
