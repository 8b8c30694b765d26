"""Shard leases through the DHT: every live peer trains on its own shard of the corpus, and a shard whose
peer left goes back to the pool by itself.

How it works. Leases live under key `{run_id}_shard_leases`, subkey = shard index, value = LeaseRecord
(holder public id, expires_at), DHT expiration = expires_at. hivemind keeps, per subkey, the entry with
the latest expiration and refuses a store whose expiration is not later; there is no delete. The
protocol is built on that ordering:

1. Read all leases. A shard is free if its entry is missing, expired, released (holder "") or ours
   (a restarted peer takes its own shard back).
2. Claim: store with expiration max(now + lease, seen + 1 ms) plus a sub-millisecond offset derived
   from the holder id, which beats the entry we saw as free and makes no two claims expire together.
3. Wait `settle_seconds` and re-read. If someone else's claim is there, the claim expiring last won
   the race (the DHT's own rule, the same on every node): back off and try the next shard. Only
   re-reads decide, never a store's True/False (see _store_lease).
4. Confirm: store with expiration now + lease + margin (margin = lease / 3). A racer that read the
   shard as free before our claim was visible stores its claim about one RPC later, so its claim
   expires before our confirmation and the DHT refuses it, instead of it silently taking over.

While training, `renew()` every lease/3 seconds re-reads the lease (someone else there: the lease is
lost, `lost` turns True) and stores it again with a fresh expiration; `renewing()` does that from a
background thread. A peer that dies stops renewing and its shard is free after at most lease + margin.
`release()` stores a tombstone (holder "") with an expiration just after the lease's, since an earlier
one would be refused.

Progress lives under `{run_id}_shard_progress`, subkey = shard index, value = the next sample offset,
so the next holder of a shard resumes where the last one stopped. It survives as long as some DHT node
keeps it, which in practice means the coordinator.

Trust trade-off. Lease subkeys are plain shard indexes, so any peer can overwrite any lease or any
progress entry. Owner-signed subkeys (`[owner:key]` + shard) would stop peers from erasing each
other's claims, but not from lying: the rule that picks a winner among coexisting claims (earliest
claim, say) would rest on numbers each claimant writes itself, and one person can run many identities
anyway. They would cost a signature per renewal and leave one
entry per claimant per shard to reconcile. Leases only decide who reads which data; nothing of value
(credit, weights) depends on them, and a misbehaving peer can waste data order, not corrupt the model.
So this is an honest-peer design; if shard hogging ever matters, the coordinator should hand out
leases signed with its own key.

Two cheap defences against a squatter (issue 12, attack 4), since the DHT's latest-expiration rule would
otherwise let one far-future entry hold a shard or a progress offset forever: an entry expiring beyond
what an honest writer ever stores (now + lease + margin, now + progress TTL, plus MAX_CLOCK_SKEW) is
ignored, and a shard whose only entry is such a squat is taken without a confirmed lease (our stores are
refused there; two peers may then share that shard, which wastes data order and nothing more). A
progress offset lower than the highest this peer has seen for the shard is ignored too (this peer's own
writes reset it, since an offset wraps around at the end of the shard).

A squatter that renews ordinary-looking leases on every shard is caught by what it does not do: train.
Every training peer publishes a signed contribution record naming its shard every few seconds
(cairn/peer/records.py), so a lease whose holder has published no live record naming that shard for
`idle_grace_seconds` in a row (as this peer watches it), and whose shard no other peer's record names, is
an idle squat, and the shard is taken the way a far-future squat is: confirmed if our stores win, else
unconfirmed (shared with the squatter's empty claim). The second condition spreads honest peers over the
squatted shards instead of piling them onto the first.
An identity that publishes made-up records to look busy is beyond this defence (the coordinator's spot
checks forfeit such a peer's credit, but its leases stand); see docs/operating.md.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import hivemind
import pydantic.v1 as pydantic
from hivemind.utils import get_dht_time

from cairn.protocol.dht_keys import LeaseRecord, RunKeys

logger = logging.getLogger(__name__)

_TICK = 1e-3
"""How much later than an existing entry a store must expire to replace it; clocks are far coarser."""
MAX_CLOCK_SKEW = 60.0
"""How far another peer's clock may run ahead of ours before its expirations count as a squat."""


class ShardLease:
    """At most one shard leased by one peer (`holder`, its public id) out of `num_shards`.

    One ShardLease per identity: a lease held under `holder` counts as free for that holder (so a
    restarted peer gets its shard back), hence two objects with one holder would share a shard.
    Methods may be called from the training loop and from the renewal thread; a lock serialises them.
    """

    def __init__(
        self,
        dht: hivemind.DHT,
        run_id: str,
        holder: str,
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
        LeaseRecord(holder=holder, expires_at=0.0)  # fail here, not at the first store, on a malformed id
        self._dht, self._keys, self.holder, self.num_shards = dht, RunKeys(run_id), holder, num_shards
        self.lease_seconds, self.settle_seconds = lease_seconds, settle_seconds
        self._margin = lease_seconds / 3  # must exceed one DHT round trip; see step 4 above
        self._tiebreak = int(hashlib.sha256(holder.encode()).hexdigest()[:8], 16) / 2**32
        self.progress_ttl_seconds = progress_ttl_seconds
        self._lock = threading.RLock()
        self._shard: int | None = None
        self._expires_at = 0.0
        self._lost = False
        self._progress_expirations: dict[int, float] = {}
        self._progress_high: dict[int, int] = {}  # the highest offset seen per shard, reset by our own writes
        self._squatted: set[int] = set()  # shards whose only entry expires implausibly late (see the module doc)
        # holder public id -> the shard its live contribution record names (records.shards_in_use); None: no idle check
        self._shards_in_use, self.idle_grace_seconds = shards_in_use, idle_grace_seconds
        self._idle_since: dict[tuple[int, str], float] = {}  # (shard, holder) -> when we first saw it hold the shard idle

    @property
    def shard(self) -> int | None:
        """The shard held now, or None."""
        return self._shard

    @property
    def lost(self) -> bool:
        """True once a renewal found another holder: stop reading the shard and acquire again."""
        return self._lost

    def acquire(self, preferred: int | None = None) -> int | None:
        """Lease a free shard, trying `preferred` first; None when every shard is held by someone else.

        Takes about `settle_seconds` per shard tried. Returns the held shard if there already is one.
        Another peer's live lease is never taken: only missing, expired, released or own entries.
        """
        with self._lock:
            if self._shard is not None:
                return self._shard
            tried: set[int] = set()
            while True:
                leases = self._read_leases()  # afresh each time: a stale view could take a live lease
                idle = self._idle_holders(leases)
                shard = next((s for s in self._candidates(preferred) if s not in tried and self._is_free(leases.get(s), s, idle)), None)
                if shard is None:
                    return None
                tried.add(shard)
                seen_expiration = leases[shard][1] if shard in leases else 0.0
                self._store_lease(shard, self._claim_expiration(seen_expiration))
                time.sleep(self.settle_seconds)
                entry = self._read_leases().get(shard)
                if entry is None and shard in self._squatted:
                    logger.warning("shard %d is squatted (a lease expiring implausibly late): training on it unconfirmed", shard)
                elif entry is not None and (shard, entry[0].holder) in idle:
                    logger.warning("shard %d is held by %s, which trains on nothing: training on it anyway", shard, entry[0].holder)
                elif entry is None or entry[0].holder != self.holder:
                    continue  # a claim expiring later won
                self._store_lease(shard, self._confirmed_expiration())
                self._shard, self._lost = shard, False
                return shard

    def renew(self) -> bool:
        """Extend the lease; False (and `lost` set) if another peer holds the shard now. Two DHT calls."""
        with self._lock:
            if self._shard is None:
                return False
            entry = self._read_leases().get(self._shard)
            if (
                entry is not None
                and entry[0].holder not in ("", self.holder)
                and entry[1] > get_dht_time()
                and (self._shard, entry[0].holder) not in self._idle_holders({self._shard: entry})
            ):
                logger.warning("lost the lease on shard %d to %s", self._shard, entry[0].holder)
                self._shard, self._lost = None, True
                return False
            self._store_lease(self._shard, self._confirmed_expiration())
            return True

    def release(self) -> None:
        """Give the shard back now rather than when the lease expires."""
        with self._lock:
            if self._shard is None:
                return
            tombstone = LeaseRecord(holder="", expires_at=get_dht_time())
            self._dht.store(
                self._keys.shard_leases,
                subkey=str(self._shard),
                value=tombstone.dict(),
                expiration_time=self._expires_at + _TICK,
            )
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
        found = self._dht.get(self._keys.shard_progress, latest=True)
        entry = found.value.get(str(shard)) if found is not None and isinstance(found.value, dict) else None
        with self._lock:
            high = self._progress_high.get(shard, 0)
            if (
                entry is None
                or not isinstance(entry.value, int)
                or isinstance(entry.value, bool)
                or entry.value < 0
                or entry.expiration_time > get_dht_time() + self.progress_ttl_seconds + MAX_CLOCK_SKEW
            ):
                return high
            if entry.value < high:  # a write that goes backwards: a rewind of the data order, ignored
                return high
            self._progress_expirations[shard] = entry.expiration_time
            self._progress_high[shard] = entry.value
        return entry.value

    def save_progress(self, shard: int, offset: int) -> None:
        """Record that `shard` should resume at `offset` (a plain int: the schema refuses numpy ints)."""
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"a shard offset is a non-negative int, got {offset!r}")
        with self._lock:
            # beat the entry read by progress() even if its writer's clock runs ahead of ours
            latest_seen = self._progress_expirations.get(shard, 0.0)
            expiration = max(get_dht_time() + self.progress_ttl_seconds, latest_seen + _TICK)
            self._progress_expirations[shard] = expiration
            self._progress_high[shard] = offset
        self._dht.store(self._keys.shard_progress, subkey=str(shard), value=offset, expiration_time=expiration)

    def _candidates(self, preferred: int | None) -> list[int]:
        # start each holder at its own place so that peers starting together do not all race for shard 0
        start = int(hashlib.sha256(self.holder.encode()).hexdigest(), 16) % self.num_shards
        order = [(start + i) % self.num_shards for i in range(self.num_shards)]
        if preferred is not None and 0 <= preferred < self.num_shards:
            order.remove(preferred)
            order.insert(0, preferred)
        return order

    def _is_free(self, entry: tuple[LeaseRecord, float] | None, shard: int, idle: set[tuple[int, str]]) -> bool:
        return entry is None or entry[0].holder in ("", self.holder) or entry[1] <= get_dht_time() or (shard, entry[0].holder) in idle

    def _idle_holders(self, leases: dict[int, tuple[LeaseRecord, float]]) -> set[tuple[int, str]]:
        """(shard, holder) among these live leases of others whose holder has named that shard in no live contribution
        record for `idle_grace_seconds` in a row, as watched from here (module doc). `leases` may be a part of the
        table (renew looks at its own shard): watches of shards not in it are kept. One DHT read when others hold any."""
        others = {
            (shard, record.holder)
            for shard, (record, expiration) in leases.items()
            if record.holder not in ("", self.holder) and expiration > get_dht_time()
        }
        for key in list(self._idle_since):
            if key[0] in leases and key not in others:  # that shard has another holder now, or none
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
        for shard, holder in others:
            if in_use.get(holder) == shard or shard in trained_on:  # busy, or an honest peer already shares it
                self._idle_since.pop((shard, holder), None)
                continue
            since = self._idle_since.setdefault((shard, holder), now)
            if now - since >= self.idle_grace_seconds:
                idle.add((shard, holder))
        return idle

    def _claim_expiration(self, seen_expiration: float) -> float:
        # Peers that saw the same tombstone would otherwise claim with the same expiration; the DHT keeps
        # whichever came first on each node, nodes may disagree, and every claimant could back off.
        return max(get_dht_time() + self.lease_seconds, seen_expiration + _TICK) + _TICK * self._tiebreak

    def _confirmed_expiration(self) -> float:
        return get_dht_time() + self.lease_seconds + self._margin

    def _store_lease(self, shard: int, expiration: float) -> None:
        # No decision rests on the store's result: hivemind reports the answer of the last replica to
        # reply, and when a concurrent reader has already copied our record to that replica (hivemind
        # caches what it finds on nearby nodes) the replica refuses our own copy as not newer. So False
        # may well mean stored; the re-reads decide instead.
        record = LeaseRecord(holder=self.holder, expires_at=expiration)
        self._dht.store(self._keys.shard_leases, subkey=str(shard), value=record.dict(), expiration_time=expiration)
        self._expires_at = expiration

    def _read_leases(self) -> dict[int, tuple[LeaseRecord, float]]:
        """Shard -> (lease, DHT expiration) for every well-formed entry of a shard of this run."""
        found = self._dht.get(self._keys.shard_leases, latest=True)
        if found is None or not isinstance(found.value, dict):
            self._squatted.clear()
            return {}
        leases: dict[int, tuple[LeaseRecord, float]] = {}
        latest_honest = get_dht_time() + self.lease_seconds + self._margin + MAX_CLOCK_SKEW
        for subkey, entry in found.value.items():
            shard = _shard_number(subkey)
            if shard is None or shard >= self.num_shards:
                continue
            if entry.expiration_time > latest_honest:  # no honest peer stores that far ahead: a squat
                self._squatted.add(shard)
                continue
            self._squatted.discard(shard)
            try:
                leases[shard] = (LeaseRecord.parse_obj(entry.value), entry.expiration_time)
            except pydantic.ValidationError:
                continue
        return leases

    def _renew_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.lease_seconds / 3):
            if self._shard is None:
                return
            try:
                if not self.renew():
                    return  # lost or released
            except Exception:  # the DHT process may be busy or restarting; the next tick retries
                logger.warning("could not renew the lease on shard %s", self._shard, exc_info=True)


def _shard_number(subkey: Any) -> int | None:
    return int(subkey) if isinstance(subkey, str) and subkey.isdigit() else None
