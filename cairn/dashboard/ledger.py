"""Read-only queries on the coordinator's contribution ledger (schema: cairn.protocol.ledger_schema).

Every function takes an open read-only connection and returns plain dicts and lists, ready for JSON.
Long series are averaged into at most `MAX_POINTS` buckets in SQL, so a ledger that grows for weeks
never makes a page or an API answer grow with it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cairn.protocol.errors import CairnError
from cairn.protocol.ledger_schema import has_column, open_readonly

ONLINE_SECONDS = 60.0
"""A peer whose last accepted record is at most this old counts as online."""
MAX_POINTS = 400
LEADERBOARD_LIMIT = 1000

T = TypeVar("T")


class LedgerUnavailable(CairnError):
    """The ledger file does not exist yet or cannot be read; pages show empty data and say why."""


class Ledger:
    """A lazily opened read-only connection; reopened after an error so a restarted coordinator is picked up.

    Callers must use it from one thread at a time (the app runs every query on one worker thread).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def read(self, query: Callable[..., T], *args: Any) -> T:
        with self._lock:
            try:
                if self._connection is None:
                    self._connection = open_readonly(self.path)
                return query(self._connection, *args)
            except CairnError as error:
                raise LedgerUnavailable(str(error)) from None
            except sqlite3.Error as error:
                self.close_locked()
                raise LedgerUnavailable(f"{self.path}: cannot read the ledger ({error})") from None

    def close(self) -> None:
        with self._lock:
            self.close_locked()

    def close_locked(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


# ---- the swarm ---------------------------------------------------------------------------------


def latest_snapshot(db: sqlite3.Connection) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM swarm ORDER BY at DESC LIMIT 1").fetchone()
    return dict(row) if row is not None else None


def online_peers(db: sqlite3.Connection, now: float) -> list[dict[str, Any]]:
    """Peers seen within ONLINE_SECONDS, with the shard and speed of their latest record."""
    collapsed = "r.collapsed" if has_column(db, "records", "collapsed") else "0"  # a ledger from before schema 2
    rows = db.execute(
        f"""
        SELECT p.public_id, p.display_name, p.device, p.last_seen, p.last_uptime AS uptime_seconds,
               p.first_seen, r.shard, r.samples_per_second, r.loss, COALESCE({collapsed}, 0) AS collapsed
        FROM peers p
        LEFT JOIN records r ON r.id = (
            SELECT id FROM records WHERE public_id = p.public_id ORDER BY reported_at DESC LIMIT 1)
        WHERE p.last_seen >= ?
        ORDER BY p.display_name COLLATE NOCASE, p.public_id
        """,
        (now - ONLINE_SECONDS,),
    ).fetchall()
    return [{**dict(row), "collapsed": bool(row["collapsed"])} for row in rows]


def swarm_series(db: sqlite3.Connection, since: float | None = None) -> list[dict[str, Any]]:
    """Swarm snapshots (time, step, peers, samples/s, loss), averaged into at most MAX_POINTS buckets."""
    where, params = ("WHERE at >= ?", (since,)) if since is not None else ("", ())
    bounds = db.execute(f"SELECT MIN(at), MAX(at) FROM swarm {where}", params).fetchone()
    if bounds[0] is None:
        return []
    start, width = bounds[0], max((bounds[1] - bounds[0]) / MAX_POINTS, 1e-9)
    rows = db.execute(
        f"""
        SELECT AVG(at) AS at, MAX(global_step) AS global_step, AVG(peers_online) AS peers_online,
               AVG(samples_per_second) AS samples_per_second, AVG(mean_loss) AS mean_loss
        FROM swarm {where}
        GROUP BY MIN(CAST((at - ?) / ? AS INTEGER), {MAX_POINTS - 1})
        ORDER BY 1
        """,
        (*params, start, width),
    ).fetchall()
    return [dict(row) for row in rows]


def loss_by_step(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Mean swarm loss against the global step, at most MAX_POINTS buckets of steps."""
    bounds = db.execute("SELECT MIN(global_step), MAX(global_step) FROM swarm WHERE mean_loss IS NOT NULL").fetchone()
    if bounds[0] is None:
        return []
    width = max((bounds[1] - bounds[0]) / MAX_POINTS, 1e-9)
    rows = db.execute(
        f"""
        SELECT AVG(global_step) AS global_step, AVG(mean_loss) AS mean_loss
        FROM swarm WHERE mean_loss IS NOT NULL
        GROUP BY MIN(CAST((global_step - ?) / ? AS INTEGER), {MAX_POINTS - 1})
        ORDER BY 1
        """,
        (bounds[0], width),
    ).fetchall()
    return [dict(row) for row in rows]


# ---- contributors ------------------------------------------------------------------------------

SORT_COLUMNS = {
    "samples": "credited_samples DESC",
    "hours": "seconds_online DESC",
    "shards": "shards_completed DESC",
    "name": "display_name COLLATE NOCASE ASC",
}


def contributors(db: sqlite3.Connection, sort: str, now: float) -> dict[str, Any]:
    """The leaderboard ordered by `sort` (a key of SORT_COLUMNS, checked by the caller), plus totals."""
    order = SORT_COLUMNS[sort]
    total = db.execute("SELECT COUNT(*), COALESCE(SUM(credited_samples), 0) FROM peers").fetchone()
    rows = db.execute(
        f"""
        SELECT public_id, display_name, device, credited_samples, claimed_samples, seconds_online,
               shards_completed, first_seen, last_seen, {_rejection_columns(db)}
        FROM peers ORDER BY {order}, public_id LIMIT ?
        """,
        (LEADERBOARD_LIMIT,),
    ).fetchall()
    return {"count": total[0], "total_samples": total[1], "rows": [_contributor_row(row, total[1], now) for row in rows]}


def contributor(db: sqlite3.Connection, public_id: str, now: float) -> dict[str, Any] | None:
    row = db.execute(
        f"""
        SELECT public_id, display_name, device, peer_id, credited_samples, claimed_samples, seconds_online,
               shards_completed, first_seen, last_seen, {_rejection_columns(db)}
        FROM peers WHERE public_id = ?
        """,
        (public_id,),
    ).fetchone()
    if row is None:
        return None
    total = db.execute("SELECT COALESCE(SUM(credited_samples), 0) FROM peers").fetchone()[0]
    result = _contributor_row(row, total, now)
    result["peer_id"] = row["peer_id"]
    result["history"] = contributor_history(db, public_id)
    result["spot_checks"] = [
        dict(check)
        for check in db.execute(
            "SELECT epoch, claimed_loss, recomputed_loss, passed, checked_at FROM spot_checks "
            "WHERE public_id = ? ORDER BY checked_at DESC LIMIT 50",
            (public_id,),
        )
    ]
    return result


def _rejection_columns(db: sqlite3.Connection) -> str:
    """SQL for what the coordinator refused of a peer's work: failed spot checks and the credit they took back
    (`forfeited_samples`: ledger schema 3; an older ledger has none)."""
    forfeited = "forfeited_samples" if has_column(db, "peers", "forfeited_samples") else "0"
    return (
        f"{forfeited} AS forfeited_samples, "
        "(SELECT COUNT(*) FROM spot_checks s WHERE s.public_id = peers.public_id AND s.passed = 0) AS failed_checks"
    )


def _contributor_row(row: sqlite3.Row, total_samples: int, now: float) -> dict[str, Any]:
    data = dict(row)
    # issue 12: the dashboard marks peers whose contributions were rejected (a failed spot check forfeits its window)
    data["rejected"] = bool(data["failed_checks"] or data["forfeited_samples"])
    data["hours_online"] = data.pop("seconds_online") / 3600.0
    data["share"] = data["credited_samples"] / total_samples if total_samples else 0.0
    data["online"] = data["last_seen"] >= now - ONLINE_SECONDS
    return data


def contributor_history(db: sqlite3.Connection, public_id: str) -> list[dict[str, Any]]:
    """One contributor's records in at most MAX_POINTS buckets: credited samples so far, loss, speed."""
    bounds = db.execute("SELECT MIN(reported_at), MAX(reported_at) FROM records WHERE public_id = ?", (public_id,)).fetchone()
    if bounds[0] is None:
        return []
    width = max((bounds[1] - bounds[0]) / MAX_POINTS, 1e-9)
    rows = db.execute(
        f"""
        SELECT MAX(reported_at) AS at, MAX(credited) AS credited_samples, MAX(samples) AS claimed_samples,
               AVG(loss) AS loss, AVG(samples_per_second) AS samples_per_second
        FROM (SELECT reported_at, samples, loss, samples_per_second,
                     SUM(credited_delta) OVER (ORDER BY reported_at) AS credited
              FROM records WHERE public_id = ?)
        GROUP BY MIN(CAST((reported_at - ?) / ? AS INTEGER), {MAX_POINTS - 1})
        ORDER BY 1
        """,
        (public_id, bounds[0], width),
    ).fetchall()
    return [dict(row) for row in rows]


def peer_loss_series(db: sqlite3.Connection, limit: int = 6) -> list[dict[str, Any]]:
    """Loss over wall time for the `limit` peers with the most credited samples, bucketed per peer."""
    series = []
    for peer in db.execute(
        "SELECT public_id, display_name FROM peers ORDER BY credited_samples DESC, public_id LIMIT ?", (limit,)
    ).fetchall():
        points = [{"at": p["at"], "loss": p["loss"]} for p in contributor_history(db, peer["public_id"])]
        if points:
            series.append({"public_id": peer["public_id"], "display_name": peer["display_name"], "points": points})
    return series


# ---- releases ---------------------------------------------------------------------------------


def release_rows(db: sqlite3.Connection) -> list[dict[str, Any]]:
    """Release rows as the coordinator recorded them (manifest_json still a string)."""
    return [dict(row) for row in db.execute("SELECT * FROM releases ORDER BY created_at")]
