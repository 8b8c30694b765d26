"""The contribution ledger: turns peers' signed, self-reported records into checked credit.

Signatures prove who wrote a record, not that it is true, so credit is bounded:
- only records read from owner-signed subkeys reach here (the DHT validators reject the rest);
- a peer claims the increase of its own samples counter since its last record (a restart, where
  the counter starts again, claims the new counter);
- total credit never exceeds what the swarm's global step can explain ((step + 1) x target batch);
  claims beyond it wait, scaled proportionally, until the step catches up;
- spot checks (recomputed probe losses) are stored beside, and a peer that failed one gets no
  further credit until it passes again.
Each poll is one SQLite transaction (WAL, synchronous=FULL): acknowledged means durable.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from cairn.protocol.dht_keys import ContributionRecord
from cairn.protocol.ledger_schema import connect


@dataclass
class PollResult:
    claimed: int
    credited: int
    cap: int
    peers_online: int


class Ledger:
    def __init__(self, path: Path):
        self.db = connect(path)

    def close(self) -> None:
        self.db.close()

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def apply_poll(self, records: dict[str, ContributionRecord], global_step: int, target_batch_size: int,
                   last_allreduce_at: float | None = None, now: float | None = None) -> PollResult:
        """Store new records, credit outstanding claims within the cap, snapshot the swarm; one transaction.

        The cap is cumulative: everything ever credited stays within (global_step + 1) x target batch
        (the +1 is the epoch in progress). Claims beyond it stay outstanding and are credited as the
        global step catches up, so honest work is delayed, never lost.
        """
        now = now if now is not None else time.time()
        with self._transaction():
            for public_id, record in records.items():
                row = self.db.execute("SELECT * FROM peers WHERE public_id = ?", (public_id,)).fetchone()
                if self.db.execute("SELECT 1 FROM records WHERE public_id = ? AND reported_at = ?", (public_id, record.reported_at)).fetchone():
                    continue
                if row is None or record.samples < row["last_counter"] or record.uptime_seconds < row["last_uptime"]:
                    increment = record.samples  # a new peer, or one that restarted and counts from zero again
                else:
                    increment = record.samples - row["last_counter"]
                self._upsert_peer(public_id, record, increment, now)
                self.db.execute(
                    "INSERT INTO records(public_id, reported_at, received_at, samples, steps, loss, samples_per_second, epoch, shard, credited_delta,"
                    " collapsed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
                    (public_id, record.reported_at, now, record.samples, record.steps, record.loss, record.samples_per_second,
                     record.epoch, record.shard, int(bool(getattr(record, "collapsed", False)))))
            cap = (self._steps_explained(global_step) + 1) * target_batch_size
            credited_total = self._credit_outstanding(cap)
            online = [r for r in records.values() if now - r.reported_at < 60]
            mean_loss = sum(r.loss for r in online) / len(online) if online else None
            self.db.execute("INSERT OR REPLACE INTO swarm(at, global_step, peers_online, samples_per_second, mean_loss, credit_cap, last_allreduce_at)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (now, global_step, len(online), sum(r.samples_per_second for r in online), mean_loss, cap, last_allreduce_at))
        claimed = int(self.db.execute("SELECT COALESCE(SUM(claimed_samples), 0) FROM peers").fetchone()[0])
        return PollResult(claimed, credited_total, cap, len(online))

    def _steps_explained(self, global_step: int) -> int:
        """Global steps of every run of the swarm on this ledger, the current one's included.

        A swarm restarted on the same workdir counts its steps from 0 again, while the credit already paid stays:
        capped by the new run's step alone, nobody would be paid until it passed the old run's high point (minutes
        of unpaid work). So when the step falls back to at most half of what it was (to a positive value: a coordinator
        that just started reads 0 until it has fetched the swarm's progress), the steps of the runs before it are carried
        as a base.
        """
        step = max(global_step, 0)
        base, last = int(self.meta("step_base", "0")), int(self.meta("last_global_step", "0"))
        if step == 0:
            return base + last  # not fetched yet, or a new run before its first step: keep what was explained
        if step <= last // 2:  # the swarm started again from step 0 (one step back is only its leader leaving)
            base += last
            self.set_meta("step_base", str(base))
        if step != last:
            self.set_meta("last_global_step", str(step))
        return base + step

    def _credit_outstanding(self, cap: int) -> int:
        """Credit claimed-but-uncredited samples of peers in good standing, scaled down to fit the cap."""
        rows = self.db.execute("SELECT public_id, claimed_samples - credited_samples AS outstanding FROM peers").fetchall()
        eligible = {r["public_id"]: r["outstanding"] for r in rows if r["outstanding"] > 0 and not self._failed_last_spot_check(r["public_id"])}
        room = max(0, cap - self.total_credited())
        wanted = sum(eligible.values())
        scale = 1.0 if wanted <= room else room / wanted
        for public_id, outstanding in eligible.items():
            credit = int(outstanding * scale)
            if credit:
                self.db.execute("UPDATE peers SET credited_samples = credited_samples + ? WHERE public_id = ?", (credit, public_id))
                self.db.execute("UPDATE records SET credited_delta = credited_delta + ? WHERE id = "
                                "(SELECT MAX(id) FROM records WHERE public_id = ?)", (credit, public_id))
        return self.total_credited()

    def _upsert_peer(self, public_id: str, record: ContributionRecord, claimed: int, now: float) -> None:
        row = self.db.execute("SELECT last_uptime FROM peers WHERE public_id = ?", (public_id,)).fetchone()
        if row is None or record.uptime_seconds < row["last_uptime"]:  # new peer, or restarted
            online_delta = record.uptime_seconds
        else:
            online_delta = record.uptime_seconds - row["last_uptime"]
        self.db.execute(
            """INSERT INTO peers(public_id, display_name, peer_id, device, first_seen, last_seen, claimed_samples, credited_samples,
                                 seconds_online, shards_completed, last_counter, last_uptime)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(public_id) DO UPDATE SET display_name = excluded.display_name, peer_id = excluded.peer_id,
                   device = excluded.device, last_seen = excluded.last_seen,
                   claimed_samples = peers.claimed_samples + excluded.claimed_samples,
                   seconds_online = peers.seconds_online + excluded.seconds_online,
                   shards_completed = MAX(peers.shards_completed, excluded.shards_completed),
                   last_counter = excluded.last_counter, last_uptime = excluded.last_uptime""",
            (public_id, record.display_name, record.peer_id, record.device, now, now, claimed, 0, online_delta,
             record.shards_completed, record.samples, record.uptime_seconds))

    def _failed_last_spot_check(self, public_id: str) -> bool:
        row = self.db.execute("SELECT passed FROM spot_checks WHERE public_id = ? ORDER BY checked_at DESC LIMIT 1", (public_id,)).fetchone()
        return row is not None and not row["passed"]

    def record_spot_check(self, public_id: str, epoch: int, claimed: float, recomputed: float, passed: bool) -> None:
        with self._transaction():
            self.db.execute("INSERT OR IGNORE INTO spot_checks(public_id, epoch, claimed_loss, recomputed_loss, passed, checked_at)"
                            " VALUES (?, ?, ?, ?, ?, ?)", (public_id, epoch, claimed, recomputed, int(passed), time.time()))

    def spot_checked(self, public_id: str, epoch: int) -> bool:
        return self.db.execute("SELECT 1 FROM spot_checks WHERE public_id = ? AND epoch = ?", (public_id, epoch)).fetchone() is not None

    def spot_check_summary(self) -> dict:
        claims = self.db.execute("SELECT COUNT(*) AS n FROM records").fetchone()["n"]
        row = self.db.execute("SELECT COUNT(*) AS n, COALESCE(SUM(1 - passed), 0) AS failed FROM spot_checks").fetchone()
        return {"claims": claims, "checked": row["n"], "failed": row["failed"], "share_checked": row["n"] / claims if claims else 0.0}

    def record_release(self, version: str, parent: str | None, global_step: int, samples_seen: int, manifest: dict) -> None:
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO releases(version, parent_version, global_step, samples_seen, created_at, manifest_json)"
                            " VALUES (?, ?, ?, ?, ?, ?)", (version, parent, global_step, samples_seen, time.time(), json.dumps(manifest)))

    def total_credited(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(credited_samples), 0) AS s FROM peers").fetchone()["s"])

    def contributor_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) AS n FROM peers WHERE credited_samples > 0").fetchone()["n"])

    def _transaction(self):
        return _Transaction(self.db)


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error (connection is in autocommit mode)."""

    def __init__(self, db):
        self.db = db
        self.depth = 0

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.depth = 1
        return self.db

    def __exit__(self, exc_type, exc, tb):
        if self.depth:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
