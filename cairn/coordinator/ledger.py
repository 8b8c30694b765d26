"""The contribution ledger: turns peers' signed, self-reported records into checked credit.

Signatures prove who wrote a record, not that it is true, so credit is bounded:
- only records read from owner-signed subkeys reach here (the DHT validators reject the rest);
- a peer claims the increase of its own samples counter since its last record (a restart, where
  the counter starts again, claims the new counter);
- total credit never exceeds what the swarm's global step can explain ((step + 1) x target batch);
  claims beyond it wait, scaled proportionally, until the step catches up;
- a peer's claims are bounded by what its uptime allows and, all its records together, by the work
  the swarm as a whole did since the peer appeared (claim_of), so a peer that alternates its uptime
  to fake restarts cannot re-claim its counter again and again (issue 12);
- spot checks (recomputed probe losses) are stored beside. A failed check forfeits the peer's
  window: its outstanding claims and the credit it was paid since its previous check are taken back
  (forfeited_samples), and it gets no further credit until it passes again. A peer never checked gets
  credit only during its first PROBE_GRACE_SECONDS: one that publishes no probe cannot collect forever.
Each poll is one SQLite transaction (WAL, synchronous=FULL): acknowledged means durable. A record the
ledger cannot store is logged and skipped (a savepoint per record), never fatal to the poll.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from cairn.protocol.dht_keys import ContributionRecord, max_samples_for
from cairn.protocol.ledger_schema import connect

logger = logging.getLogger("cairn.coordinator.ledger")
# spot checks run every 20 s by default and a peer's first probe follows its first averaging round
PROBE_GRACE_SECONDS = 300.0
STEP_SLACK = 2  # target batches a peer may claim beyond the steps since it appeared: the epoch in progress, and lag


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

    @overload
    def meta(self, key: str, default: str) -> str: ...
    @overload
    def meta(self, key: str, default: None = None) -> str | None: ...
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def apply_poll(
        self,
        records: dict[str, ContributionRecord],
        global_step: int,
        target_batch_size: int,
        last_allreduce_at: float | None = None,
        now: float | None = None,
    ) -> PollResult:
        """Store new records, credit outstanding claims within the cap, snapshot the swarm; one transaction.

        The cap is cumulative: everything ever credited stays within (global_step + 1) x target batch
        (the +1 is the epoch in progress). Claims beyond it stay outstanding and are credited as the
        global step catches up, so honest work is delayed, never lost.
        """
        now = now if now is not None else time.time()
        with self._transaction():
            step = self._steps_explained(global_step)
            rejected = set()
            for public_id, record in records.items():
                self.db.execute("SAVEPOINT one_record")
                try:
                    self._store_record(public_id, record, step, target_batch_size, now)
                except Exception as error:  # one bad record must not stop the ledger (issue 12, attack 2)
                    self.db.execute("ROLLBACK TO one_record")
                    rejected.add(public_id)
                    logger.warning("skipped the contribution record of %s: %r", public_id, error)
                self.db.execute("RELEASE one_record")
            cap = (step + 1) * target_batch_size
            credited_total = self._credit_outstanding(cap, now)
            online = [r for public_id, r in records.items() if public_id not in rejected and now - r.reported_at < 60]
            mean_loss = sum(r.loss for r in online) / len(online) if online else None
            self.db.execute(
                "INSERT OR REPLACE INTO swarm(at, global_step, peers_online, samples_per_second, mean_loss, credit_cap, last_allreduce_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (now, global_step, len(online), sum(r.samples_per_second for r in online), mean_loss, cap, last_allreduce_at),
            )
        claimed = int(self.db.execute("SELECT COALESCE(SUM(claimed_samples), 0) FROM peers").fetchone()[0])
        return PollResult(claimed, credited_total, cap, len(online))

    def _store_record(self, public_id: str, record: ContributionRecord, step: int, target_batch_size: int, now: float) -> None:
        """Add one record and its bounded claim; nothing for a record already stored."""
        if self.db.execute("SELECT 1 FROM records WHERE public_id = ? AND reported_at = ?", (public_id, record.reported_at)).fetchone():
            return
        row = self.db.execute("SELECT * FROM peers WHERE public_id = ?", (public_id,)).fetchone()
        claim = claim_of(row, record, step, target_batch_size)
        start_step = step - -(-claim // target_batch_size) if row is None else row["start_step"]  # back by the batches claimed
        self._upsert_peer(public_id, record, claim, now, start_step)
        self.db.execute(
            "INSERT INTO records(public_id, reported_at, received_at, samples, steps, loss, samples_per_second, epoch, shard, credited_delta,"
            " collapsed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (
                public_id,
                record.reported_at,
                now,
                record.samples,
                record.steps,
                record.loss,
                record.samples_per_second,
                record.epoch,
                record.shard,
                int(bool(getattr(record, "collapsed", False))),
            ),
        )

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

    def _credit_outstanding(self, cap: int, now: float) -> int:
        """Credit claimed-but-uncredited samples of peers in good standing, scaled down to fit the cap."""
        rows = self.db.execute(
            "SELECT public_id, first_seen, claimed_samples - credited_samples - forfeited_samples AS outstanding FROM peers"
        ).fetchall()
        eligible = {r["public_id"]: r["outstanding"] for r in rows if r["outstanding"] > 0 and self._in_good_standing(r, now)}
        room = max(0, cap - self.total_credited())
        wanted = sum(eligible.values())
        scale = 1.0 if wanted <= room else room / wanted
        for public_id, outstanding in eligible.items():
            credit = int(outstanding * scale)
            if credit:
                self.db.execute("UPDATE peers SET credited_samples = credited_samples + ? WHERE public_id = ?", (credit, public_id))
                self.db.execute(
                    "UPDATE records SET credited_delta = credited_delta + ? WHERE id = (SELECT MAX(id) FROM records WHERE public_id = ?)",
                    (credit, public_id),
                )
        return self.total_credited()

    def _in_good_standing(self, peer, now: float) -> bool:
        """Its last spot check passed; or it was never checked and is still within its first PROBE_GRACE_SECONDS."""
        row = self.db.execute(
            "SELECT passed FROM spot_checks WHERE public_id = ? ORDER BY checked_at DESC, id DESC LIMIT 1", (peer["public_id"],)
        ).fetchone()
        if row is None:
            return now - peer["first_seen"] <= PROBE_GRACE_SECONDS
        return bool(row["passed"])

    def _upsert_peer(self, public_id: str, record: ContributionRecord, claimed: int, now: float, start_step: int) -> None:
        row = self.db.execute("SELECT last_uptime FROM peers WHERE public_id = ?", (public_id,)).fetchone()
        if row is None or record.uptime_seconds < row["last_uptime"]:  # new peer, or restarted
            online_delta = record.uptime_seconds
        else:
            online_delta = record.uptime_seconds - row["last_uptime"]
        self.db.execute(
            """INSERT INTO peers(public_id, display_name, peer_id, device, first_seen, last_seen, claimed_samples, credited_samples,
                                 seconds_online, shards_completed, last_counter, last_uptime, start_step)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(public_id) DO UPDATE SET display_name = excluded.display_name, peer_id = excluded.peer_id,
                   device = excluded.device, last_seen = excluded.last_seen,
                   claimed_samples = peers.claimed_samples + excluded.claimed_samples,
                   seconds_online = peers.seconds_online + excluded.seconds_online,
                   shards_completed = MAX(peers.shards_completed, excluded.shards_completed),
                   last_counter = excluded.last_counter, last_uptime = excluded.last_uptime""",
            (
                public_id,
                record.display_name,
                record.peer_id,
                record.device,
                now,
                now,
                claimed,
                0,
                online_delta,
                record.shards_completed,
                record.samples,
                record.uptime_seconds,
                start_step,
            ),
        )

    def record_spot_check(
        self, public_id: str, epoch: int, claimed: float, recomputed: float, passed: bool, now: float | None = None
    ) -> None:
        """Store a check. A failed one forfeits the window since the peer's previous check: its outstanding claims and
        the credit paid for records received in that window (a free-rider loses what it collected, not just its next credit)."""
        now = now if now is not None else time.time()
        with self._transaction():
            previous = self.db.execute("SELECT MAX(checked_at) FROM spot_checks WHERE public_id = ?", (public_id,)).fetchone()[0]
            inserted = self.db.execute(
                "INSERT OR IGNORE INTO spot_checks(public_id, epoch, claimed_loss, recomputed_loss, passed, checked_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (public_id, epoch, claimed, recomputed, int(passed), now),
            ).rowcount
            if passed or not inserted:
                return
            since = previous if previous is not None else float("-inf")
            revoked = int(
                self.db.execute(
                    "SELECT COALESCE(SUM(credited_delta), 0) FROM records WHERE public_id = ? AND received_at > ?", (public_id, since)
                ).fetchone()[0]
            )
            self.db.execute("UPDATE records SET credited_delta = 0 WHERE public_id = ? AND received_at > ?", (public_id, since))
            # everything claimed and not kept as credit is forfeited: outstanding claims and the revoked credit
            self.db.execute(
                "UPDATE peers SET credited_samples = credited_samples - ?, forfeited_samples = claimed_samples - (credited_samples - ?)"
                " WHERE public_id = ?",
                (revoked, revoked, public_id),
            )
        logger.warning(
            "spot check failed for %s at epoch %s (claimed %.4f, recomputed %.4f): %s credited samples taken back",
            public_id,
            epoch,
            claimed,
            recomputed,
            revoked,
        )

    def spot_checked(self, public_id: str, epoch: int) -> bool:
        return self.db.execute("SELECT 1 FROM spot_checks WHERE public_id = ? AND epoch = ?", (public_id, epoch)).fetchone() is not None

    def spot_check_summary(self) -> dict:
        claims = self.db.execute("SELECT COUNT(*) AS n FROM records").fetchone()["n"]
        row = self.db.execute("SELECT COUNT(*) AS n, COALESCE(SUM(1 - passed), 0) AS failed FROM spot_checks").fetchone()
        return {"claims": claims, "checked": row["n"], "failed": row["failed"], "share_checked": row["n"] / claims if claims else 0.0}

    def record_release(self, version: str, parent: str | None, global_step: int, samples_seen: int, manifest: dict) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT OR REPLACE INTO releases(version, parent_version, global_step, samples_seen, created_at, manifest_json)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (version, parent, global_step, samples_seen, time.time(), json.dumps(manifest)),
            )

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


def claim_of(peer, record: ContributionRecord, step: int, target_batch_size: int) -> int:
    """The samples one record may add to its peer's claims (`peer`: its ledger row, None for a new peer).

    The increase of the peer's counter since its last record (the whole counter for a new peer or a restart), at most
    what its uptime allows, and, with everything the peer claimed before, at most what the whole swarm did since the
    peer appeared: (global steps since its start_step + STEP_SLACK) target batches. A new peer's start_step is set
    back by the batches its first claim covers (so its slack counts twice, once). Without this bound a peer alternating uptime_seconds re-claimed its
    whole counter every other record.
    """
    if peer is None:
        return min(record.samples, max_samples_for(record.uptime_seconds), (step + STEP_SLACK) * target_batch_size)
    if record.samples < peer["last_counter"] or record.uptime_seconds < peer["last_uptime"]:
        claimed, seconds = record.samples, record.uptime_seconds  # restarted: it counts from zero again
    else:
        claimed, seconds = record.samples - peer["last_counter"], record.uptime_seconds - peer["last_uptime"]
    room = (step - peer["start_step"] + STEP_SLACK) * target_batch_size - peer["claimed_samples"]
    return max(0, min(claimed, max_samples_for(seconds), room))
