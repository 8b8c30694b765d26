"""Shard leases through the DHT: every live peer trains on its own shard of the corpus, a shard whose peer left goes
back to the pool by itself, and its next holder resumes where the last one stopped.

Records (owner-keyed, issue 12). Under key `{run_id}_shard_leases` each peer writes only its own entries: subkey = the
shard number followed by the writer's `[owner:<public key>]` tag, so hivemind's RSASignatureValidator refuses anyone
else's write there. Value = LeaseRecord: when this holder's tenure began (`claimed_at`), until when it holds the shard
unless it renews (`expires_at`), whether it gave the shard back (`released`), where its reading of the shard stands
(`offset`, None until it read any) and when it wrote this (`updated_at`). The DHT keeps an entry `progress_ttl` past its
`expires_at`, so a holder's offset outlives its lease: progress is part of the holder's own signed entry, and nobody
can erase or overwrite another peer's lease or offset. An entry without an offset (a claim that lost its race) is gone a
margin after its lease. Size: every peer reads the whole key every few seconds, one entry per holder and shard it read in
the last `progress_ttl` (~0.8 KB each with its owner tag and signature); libp2p's 4 MiB message limit puts the ceiling
near 5,000 such entries, far above a run of hundreds of peers on 64 shards, and a key per shard is the step after that.

The protocol (times are DHT times, i.e. each node's clock):
1. Read the shard's entries. A shard is free if no other holder has a live claim on it (not released, `expires_at`
   ahead) other than idle ones (below). Our own entry never blocks us: a restarted peer takes its shard back.
2. Claim: store our entry with `claimed_at` = now and a lease's expiry.
3. Wait `settle_seconds` and re-read. If another live, non-idle claim began earlier (ties: the smaller public id), it won
   the race, the same decision on every node: we mark ours released and try the next shard.
4. Confirm: store with expiry now + lease + margin. From then on nothing displaces us: nobody else can write our entry,
   and renewals ignore claims that appear later, whatever `claimed_at` they declare (a squatter could backdate one to
   win every race). Two peers whose claims both missed each other at step 3 (a DHT that had not spread them yet) share
   the shard until one leaves: that wastes data order, nothing else.

While training, `renew()` every lease/3 seconds stores our entry with a fresh expiry and our offset; `renewing()` does
it from a background thread. `lost` turns True only when our own lease lapsed (renewals failed for a whole lease) and
another holder claimed the shard meanwhile. A peer that dies stops renewing and its shard is free after at most
lease + margin. `release()` gives the shard back at once.

Progress: an offset counts the samples read from a shard so far, all its holders together; it never wraps (the
reading position is offset modulo the shard's size), so it also says how many passes the shard has had.
`progress(shard)` is the offset in the most recently updated entry of the shard that carries one, skipping entries of
idle holders; `save_progress()` writes ours. An offset lower than the highest this peer has seen for the shard is
ignored too (a rewind).

Moving on: a peer that finished a pass over its shard calls `start_moving()`; a background thread leases the
least-read free shard (steps 1-4), and the training loop switches at its next `take_move()`, giving the old shard back
with its offset. So a swarm of a few peers reads every shard in turn, as one process reads the whole corpus, instead of
each peer reading its first shard over and over. `acquire()` prefers the least-read free shards too.

Bounds (issue 12, attack 4): an entry whose expiry lies beyond what an honest writer ever stores (now + lease + margin,
plus MAX_CLOCK_SKEW), whose update time lies in the future beyond MAX_CLOCK_SKEW, or whose DHT expiration lies beyond
that + progress_ttl, is ignored: a far-future claim holds nothing and a far-future update pins no offset.

Idle holders. A squatter that renews ordinary-looking claims on every free shard is caught by what it does not do:
train. Every training peer publishes a signed contribution record naming its shard every few seconds
(cairn/peer/records.py), so a claim whose holder has named that shard in no live record for `idle_grace_seconds` in a
row (as this peer watches it), on a shard no other peer's record names, counts as free, and its offset is skipped. The
second condition spreads honest peers over the squatted shards instead of piling them onto the first.

What this does not stop, and why it is acceptable: an identity that publishes made-up records to look busy keeps the
free shards it claimed first (the coordinator's spot checks forfeit its credit, not its leases); one that claims a free
shard and releases it within the idle grace can leave an offset there, which moves where the next holder starts
reading, and a high one makes the shard look read, so that honest peers take it last. One person can run many identities. Leases decide who reads which data; nothing of value (credit, weights)
depends on them, so the worst a liar does here is waste data order, never corrupt the model. Shards handed out by the
coordinator under its own key would close the rest; not built.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import hivemind
import pydantic.v1 as pydantic
from hivemind.utils import get_dht_time

from cairn.protocol.dht_keys import LeaseRecord, RunKeys, lease_subkey, owner_public_id, parse_lease_subkey

logger = logging.getLogger(__name__)

_TICK = 1e-3
"""How much later than an existing entry a store must expire to replace it; clocks are far coarser."""
MAX_CLOCK_SKEW = 60.0
"""How far another peer's clock may run ahead of ours before its expirations count as a squat."""


class ShardLease:
    """At most one shard leased by one identity (`owner`, its `[owner:<public key>]` tag) out of `num_shards`.

    `dht` must sign for that key (its RSASignatureValidator's; cairn.protocol.dht_keys.owner_subkey), or every store is
    refused. Methods may be called from the training loop and from the renewal thread; a lock serialises them.
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        run_id: str,
        owner: bytes,
        num_shards: int,
        *,
        lease_seconds: float = 30.0,
        settle_seconds: float = 1.0,
        progress_ttl_seconds: float = 7 * 24 * 3600.0,
        shards_in_use: Callable[[], dict[str, int]] | None = None,
        idle_grace_seconds: float = 120.0,
    ):
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}")
        holder = owner_public_id(owner)
        if holder is None:
            raise ValueError(f"a lease owner is an [owner:<public key>] tag (cairn.protocol.dht_keys.owner_subkey), got {owner!r:.60}")
        self._dht, self._keys, self._owner, self.holder, self.num_shards = dht, RunKeys(run_id), owner, holder, num_shards
        self.lease_seconds, self.settle_seconds = lease_seconds, settle_seconds
        self._margin = lease_seconds / 3  # must exceed one DHT round trip; see step 4 above
        self.progress_ttl_seconds = progress_ttl_seconds
        self._lock = threading.RLock()
        self._shard: int | None = None
        self._claimed_at = 0.0
        self._expires_at = 0.0  # when the held lease ends unless renewed, on our clock: only acquire and renew extend it
        self._lost = False
        self._stored: dict[int, float] = {}  # shard -> the DHT expiration of our entry there: a store must beat it
        self._offsets: dict[int, int] = {}  # shard -> the offset our entry there carries
        self._progress_high: dict[int, int] = {}  # the highest offset seen per shard, reset by our own writes
        # holder public id -> the shard its live contribution record names (records.shards_in_use); None: no idle check
        self._shards_in_use, self.idle_grace_seconds = shards_in_use, idle_grace_seconds
        self._idle_since: dict[tuple[int, str], float] = {}  # (shard, holder) -> when we first saw it hold the shard idle
        self._move: _Move | None = None  # a move to the next shard, under way or ready (start_moving)

    @property
    def shard(self) -> int | None:
        """The shard held now, or None."""
        return self._shard

    @property
    def lost(self) -> bool:
        """True once our lease lapsed and another peer took the shard: stop reading it and acquire again."""
        return self._lost

    def acquire(self, preferred: int | None = None) -> int | None:
        """Lease a free shard, trying `preferred` first, then the least-read ones; None when every shard is held by
        someone else.

        Takes about `settle_seconds` per shard tried. Returns the held shard if there already is one.
        Another peer's live, non-idle claim is never taken.
        """
        with self._lock:
            if self._shard is not None:
                return self._shard
            claim = self._claim_free(preferred, exclude=set(), resume_own=True)
            if claim is None:
                return None
            self._shard, (self._claimed_at, self._expires_at), self._lost = claim[0], claim[1:], False
            return self._shard

    def start_moving(self) -> None:
        """A whole pass over the held shard is done: lease the least-read free shard in a background thread, so that
        the swarm reads the whole corpus, not only the shards its first peers happened to take (four peers on 16
        shards read a quarter of it, each its own quarter-shard ten times over in docs/benchmarks.md section 10).

        The training loop keeps reading its shard meanwhile (a claim takes `settle_seconds`) and switches at its next
        `take_move()`. Nothing happens if a move is under way or ready; no free shard: the peer keeps its shard."""
        with self._lock:
            if self._shard is None or self._move is not None:
                return
            self._move = _Move(self._shard)
            thread = threading.Thread(target=self._move_on, args=(self._move,), name="cairn-lease-move", daemon=True)
            self._move.thread = thread
        thread.start()

    def take_move(self, offset: int) -> int | None:
        """The new shard, if a move started by `start_moving()` has leased one: the held shard is given back with
        `offset` (where this peer's reading of it stands) and the new one is held from now on. None otherwise."""
        _check_offset(offset)
        with self._lock:
            move = self._move
            if move is None or move.claim is None:
                return None
            self._move = None
            old = self._shard
            shard, claimed_at, expires_at = move.claim
            if old != move.old or self._lost:  # the old lease was lost meanwhile: the training loop acquires afresh
                self._store(shard, claimed_at, get_dht_time(), released=True)
                return None
            self._offsets[old] = self._progress_high[old] = offset
            self._store(old, self._claimed_at, get_dht_time(), released=True)
            self._shard, self._claimed_at, self._expires_at = shard, claimed_at, expires_at
            return shard

    def finish_moving(self, timeout: float | None = None) -> None:
        """Wait for a move under way and give back a shard it leased but the training loop never took (on leaving)."""
        with self._lock:
            move, self._move = self._move, None
        if move is None:
            return
        if move.thread is not None:
            move.thread.join(timeout)
        with self._lock:
            if move.claim is not None:
                self._store(move.claim[0], move.claim[1], get_dht_time(), released=True)

    def _move_on(self, move: "_Move") -> None:
        try:
            claim = self._claim_free(None, exclude={move.old}, resume_own=False)
        except Exception as error:  # the DHT may be busy: keep reading the shard held, and try after the next pass
            logger.warning("could not move on from shard %d: %r", move.old, error)
            claim = None
        with self._lock:
            if self._move is move and claim is not None:
                move.claim = claim
                return
            if self._move is move:
                self._move = None  # nothing free (or an error): the next pass tries again
        if claim is not None:  # given up meanwhile (finish_moving): give the claim back
            with self._lock:
                self._store(claim[0], claim[1], get_dht_time(), released=True)

    def _claim_free(self, preferred: int | None, exclude: set[int], resume_own: bool) -> tuple[int, float, float] | None:
        """Claim a free shard, not one in `exclude`: (shard, claimed_at, confirmed expiry), or None if none is free.

        Order: `preferred`; with `resume_own`, a shard our own live entry still holds (a restarted peer takes its shard
        back); then the least-read shards first (their progress, i.e. how many samples all their holders have read),
        ties in an order that starts at this holder's own place. The lock is held only around our own state, never
        across a DHT call's wait or the settle sleep: renewals of a held shard go on meanwhile."""
        tried: set[int] = set(exclude)
        while True:
            table = self._read()  # afresh each time: a stale view could take a live lease
            idle = self._idle_holders(table)
            own_live = [s for s, entries in table.items() if any(e.holder == self.holder and e.live() for e in entries)]
            if preferred is None and resume_own:
                preferred = min((s for s in own_live if s not in exclude), default=None)
            read = {s: self._read_so_far(entries, idle) for s, entries in table.items()}
            order = sorted(self._candidates(), key=lambda s: read.get(s, 0))  # stable: ties keep our own order
            if preferred is not None and 0 <= preferred < self.num_shards:
                order.remove(preferred)
                order.insert(0, preferred)
            shard = next((s for s in order if s not in tried and not self._rivals(table.get(s, []), idle)), None)
            if shard is None:
                return None
            tried.add(shard)
            own = next((e for e in table.get(shard, []) if e.holder == self.holder and e.live()), None)
            claimed_at = own.record.claimed_at if own is not None else get_dht_time()  # a restart continues its tenure
            # our entry keeps an offset of ours only while it is the shard's newest (a restart resumes from it); an older
            # one, written again now, would become the newest: a rewind. Otherwise this tenure carries an offset only
            # from its first save_progress, after progress() read where the last holder stopped
            newest = _newest_offset(table.get(shard, []), idle)
            with self._lock:
                if newest is not None and newest.holder == self.holder and newest.record.offset is not None:
                    self._offsets[shard] = newest.record.offset
                else:
                    self._offsets.pop(shard, None)
                self._store(shard, claimed_at, get_dht_time() + self.lease_seconds)
            time.sleep(self.settle_seconds)
            entries = self._read().get(shard, [])
            earlier = [e for e in self._rivals(entries, self._idle_holders({shard: entries})) if _order(e) < (claimed_at, self.holder)]
            with self._lock:
                if earlier:  # a claim that began first won the race: give ours back at once
                    self._store(shard, claimed_at, get_dht_time(), released=True)
                    continue
                for entry in entries:
                    if entry.holder != self.holder and entry.live() and (shard, entry.holder) in idle:
                        logger.warning("shard %d is held by %s, which trains on nothing: training on it anyway", shard, entry.holder)
                expires_at = self._confirmed_expiration()
                self._store(shard, claimed_at, expires_at)
                return shard, claimed_at, expires_at

    def _read_so_far(self, entries: list["LeaseEntry"], idle: set[tuple[int, str]]) -> int:
        """How many samples of a shard its holders have read: the offset of its progress entry (0: none yet)."""
        newest = _newest_offset(entries, idle)
        return (newest.record.offset or 0) if newest is not None else 0

    def renew(self, offset: int | None = None) -> bool:
        """Extend the lease; False (and `lost` set) if it lapsed and another peer holds the shard now. Two DHT calls.

        With `offset`, the same store records our progress on the shard too (save_progress without a store of its own:
        the training loop's report does both every few seconds, and each store is a signed DHT write)."""
        _check_offset(offset)
        with self._lock:
            if self._shard is None:
                return False
            now = get_dht_time()
            entries = self._read().get(self._shard, [])
            ours = next((e for e in entries if e.holder == self.holder), None)
            # lapsed: on our own clock (a read would show the entry save_progress just wrote), or gone from the DHT
            if now >= self._expires_at or ours is None or not ours.live(now):
                rivals = self._rivals(entries, self._idle_holders({self._shard: entries}))
                if rivals:
                    logger.warning("the lease on shard %d lapsed and %s holds it now", self._shard, rivals[0].holder)
                    self._shard, self._lost = None, True
                    return False
            if offset is not None:
                self._offsets[self._shard] = self._progress_high[self._shard] = offset
            self._expires_at = self._confirmed_expiration()
            self._store(self._shard, self._claimed_at, self._expires_at)
            return True

    def release(self) -> None:
        """Give the shard back now rather than when the lease expires (and any shard a move under way leased)."""
        self.finish_moving(timeout=self.settle_seconds + 10.0)
        with self._lock:
            if self._shard is None:
                return
            self._store(self._shard, self._claimed_at, get_dht_time(), released=True)
            self._shard = None

    @contextmanager
    def renewing(self) -> Iterator[None]:
        """Renew the held lease every lease/3 seconds from a background thread while the block runs.

        Check `lost` in the training loop. A failed renewal is logged and retried; the lease outlives
        three missed ones.
        """
        stop = threading.Event()
        thread = threading.Thread(target=self._renew_until, args=(stop,), name="cairn-lease-renewal", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def progress(self, shard: int) -> int:
        """The next sample offset of `shard`: where its last holder stopped, 0 if nobody started it."""
        entries = self._read().get(shard, [])
        latest = _newest_offset(entries, self._idle_holders({shard: entries}))
        with self._lock:
            high = self._progress_high.get(shard, 0)
            if latest is None or latest.record.offset is None:
                return high
            if latest.record.offset < high:  # a write that goes backwards: a rewind of the data order, ignored
                return high
            self._progress_high[shard] = latest.record.offset
            return latest.record.offset

    def save_progress(self, shard: int, offset: int) -> None:
        """Record that `shard` should resume at `offset` (a plain int: the schema refuses numpy ints), in our own entry."""
        _check_offset(offset)
        with self._lock:
            self._offsets[shard] = offset
            self._progress_high[shard] = offset
            if shard == self._shard:
                # the same expiry, not a later one: only renew() extends a lease, after checking it has not lapsed
                self._store(shard, self._claimed_at, self._expires_at)
            else:  # a shard we do not hold (any more): the offset travels in a released entry
                self._store(shard, self._claimed_at, get_dht_time(), released=True)

    def _candidates(self) -> list[int]:
        # start each holder at its own place so that peers starting together do not all race for shard 0
        start = int(hashlib.sha256(self.holder.encode()).hexdigest(), 16) % self.num_shards
        return [(start + i) % self.num_shards for i in range(self.num_shards)]

    def _rivals(self, entries: list["LeaseEntry"], idle: set[tuple[int, str]]) -> list["LeaseEntry"]:
        """Others' live claims among one shard's entries that are not idle (those keep the shard from us)."""
        return [e for e in entries if e.holder != self.holder and e.live() and (e.shard, e.holder) not in idle]

    def _idle_holders(self, table: dict[int, list["LeaseEntry"]]) -> set[tuple[int, str]]:
        """(shard, holder) among these live claims of others whose holder has named that shard in no live contribution
        record for `idle_grace_seconds` in a row, as watched from here (module doc). `table` may be a part of the shards
        (renew looks at its own): watches of shards not in it are kept. One DHT read when others hold any."""
        others = {(e.shard, e.holder) for entries in table.values() for e in entries if e.holder != self.holder and e.live()}
        with self._lock:
            for key in list(self._idle_since):
                if key[0] in table and key not in others:  # that holder's claim on the shard ended
                    del self._idle_since[key]
        if self._shards_in_use is None or not others:
            return set()
        try:
            in_use = self._shards_in_use()
        except Exception as error:  # the DHT may be busy: without evidence nobody counts as idle this time
            logger.warning("could not read the contribution records to check lease holders: %r", error)  # one line, no traceback
            return set()
        now = time.monotonic()
        trained_on = {shard for holder, shard in in_use.items() if holder != self.holder}
        idle = set()
        with self._lock:
            for shard, holder in others:
                if in_use.get(holder) == shard or shard in trained_on:  # busy, or an honest peer already shares it
                    self._idle_since.pop((shard, holder), None)
                    continue
                since = self._idle_since.setdefault((shard, holder), now)
                if now - since >= self.idle_grace_seconds:
                    idle.add((shard, holder))
        return idle

    def _confirmed_expiration(self) -> float:
        return get_dht_time() + self.lease_seconds + self._margin

    def _store(self, shard: int, claimed_at: float, expires_at: float, released: bool = False) -> None:
        """Write our own entry for `shard`. No decision rests on the store's result: hivemind reports the answer of the
        last replica to reply, which may have refused our copy as not newer after a reader cached it; re-reads decide."""
        now = get_dht_time()
        record = LeaseRecord(
            claimed_at=claimed_at, expires_at=expires_at, released=released, offset=self._offsets.get(shard), updated_at=now
        )
        # the DHT keeps the entry with the latest expiration per subkey: each write of ours must expire after the last one
        # an entry keeps its offset for progress_ttl past the lease; one without (a claim, a lost race) is gone soon after
        keep = self.progress_ttl_seconds if record.offset is not None else self._margin
        expiration = max(expires_at + keep, self._stored.get(shard, 0.0) + _TICK)
        self._stored[shard] = expiration
        self._dht.store(self._keys.shard_leases, subkey=lease_subkey(shard, self._owner), value=record.dict(), expiration_time=expiration)

    def _read(self) -> dict[int, list["LeaseEntry"]]:
        """Shard -> the well-formed, plausible entries of that shard (module doc, "Bounds")."""
        found = self._dht.get(self._keys.shard_leases, latest=True)
        if found is None or not isinstance(found.value, dict):
            return {}
        now = get_dht_time()
        latest_expiry = now + self.lease_seconds + self._margin + MAX_CLOCK_SKEW
        table: dict[int, list[LeaseEntry]] = {}
        for subkey, item in found.value.items():
            parsed = parse_lease_subkey(subkey)
            if parsed is None or parsed[0] >= self.num_shards:
                continue
            shard, holder = parsed
            try:
                record = LeaseRecord.parse_obj(getattr(item, "value", None))
            except (pydantic.ValidationError, TypeError):
                continue
            if holder == self.holder:  # a restart: our next store must beat what the DHT holds for us
                with self._lock:
                    self._stored[shard] = max(self._stored.get(shard, 0.0), item.expiration_time)
            if (
                record.expires_at > latest_expiry
                or record.updated_at > now + MAX_CLOCK_SKEW
                or item.expiration_time > latest_expiry + self.progress_ttl_seconds
            ):
                continue  # no honest peer writes that far ahead: a squat, holding nothing and pinning no offset
            table.setdefault(shard, []).append(LeaseEntry(shard, holder, record))
        return table

    def _renew_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_seconds / 3):
            if self._shard is None:
                return
            try:
                if not self.renew():
                    return  # lost or released
            except Exception:  # the DHT process may be busy or restarting; the next tick retries
                logger.warning("could not renew the lease on shard %s", self._shard, exc_info=True)


@dataclass
class _Move:
    """A move from shard `old` to the next one (ShardLease.start_moving): `claim` once the background thread leased it."""

    old: int
    claim: tuple[int, float, float] | None = None  # (shard, claimed_at, expires_at)
    thread: threading.Thread | None = None


@dataclass(frozen=True)
class LeaseEntry:
    """One holder's entry for one shard, as read."""

    shard: int
    holder: str  # public id of the owner tag: the only key that could have written it
    record: LeaseRecord

    def live(self, now: float | None = None) -> bool:
        return not self.record.released and self.record.expires_at > (get_dht_time() if now is None else now)


def _newest_offset(entries: list[LeaseEntry], idle: set[tuple[int, str]]) -> LeaseEntry | None:
    """The entry whose offset is a shard's progress: the latest written of those carrying one, idle holders' left out."""
    written = [e for e in entries if e.record.offset is not None and (e.shard, e.holder) not in idle]
    return max(written, key=lambda e: (e.record.updated_at, e.holder), default=None)


def _check_offset(offset: int | None) -> None:
    if offset is not None and (not isinstance(offset, int) or isinstance(offset, bool) or offset < 0):
        raise ValueError(f"a shard offset is a non-negative int, got {offset!r}")


def _order(entry: LeaseEntry) -> tuple[float, str]:
    """Who wins a race for one shard: the earlier claim, then the smaller public id."""
    return (entry.record.claimed_at, entry.holder)
