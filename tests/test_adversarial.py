"""Issue 12, function by function: what one dishonest or broken peer can no longer do (no swarm needed)."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch

from cairn.coordinator.releaser import ReleaseRefused, release_gate, state_is_finite
from cairn.protocol.epoch_bound import MIN_SECONDS_PER_STEP, plausible_epoch_limit
from cairn.peer.gradients import MAX_GRAD_NORM, sanitize_gradients
from cairn.peer.records import build_record
from tests.test_ledger import record


# ---- attack 3: poisoned gradients ------------------------------------------------------------


def model_with_gradients(scale: float = 1.0, poison: float | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
    (model(torch.randn(4, 8)).sum() * scale).backward()
    if poison is not None:
        model[1].weight.grad[0, 0] = poison
    return model


@pytest.mark.parametrize("poison", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_gradient_is_dropped_before_it_is_shared(poison: float):
    model = model_with_gradients(poison=poison)
    assert sanitize_gradients(model.parameters()) is False
    assert all(p.grad is None for p in model.parameters())  # nothing of this batch reaches the averager


def test_a_huge_gradient_is_clipped_and_a_healthy_one_is_kept():
    huge = model_with_gradients(scale=-1e6)  # sign-flipped and scaled, as the attacker sends
    assert sanitize_gradients(huge.parameters()) is True
    norm = torch.norm(torch.stack([p.grad.norm() for p in huge.parameters()]))
    assert norm == pytest.approx(MAX_GRAD_NORM, rel=1e-4)
    healthy = model_with_gradients(scale=0.01)
    before = [p.grad.clone() for p in healthy.parameters()]
    assert sanitize_gradients(healthy.parameters()) is True
    assert all(torch.equal(a, p.grad) for a, p in zip(before, healthy.parameters()))


def test_a_nan_probe_loss_skips_the_record_with_a_warning_instead_of_raising(caplog):
    """After a poisoned round an honest peer raised pydantic's ValidationError out of its training loop."""
    fields = record(300).dict()
    assert build_record(**fields) is not None
    with caplog.at_level(logging.WARNING, logger="cairn.peer"):
        assert build_record(**{**fields, "probe_loss": float("nan")}) is None
        assert build_record(**{**fields, "loss": float("inf")}) is None
    assert "no contribution record this time (probe_loss" in caplog.text


# ---- attack 1: a tampered state and an absurd epoch ------------------------------------------------


def test_an_absurd_epoch_is_beyond_what_the_clock_allows():
    now = time.time()
    limit = plausible_epoch_limit(trusted_epoch=120, trusted_at=now - 60, now=now)
    assert limit == 120 + 1 + int(60 / MIN_SECONDS_PER_STEP)
    assert 10**9 > limit and 150 <= limit
    assert plausible_epoch_limit(0, now, now - 5) == 1  # a clock that went back allows no more than the epoch in progress


def test_the_release_gate_refuses_a_broken_or_worse_state():
    assert release_gate(2.0, None)["held_out_loss"] == 2.0  # the first gated release
    gate = release_gate(2.1, 2.0, tolerance=0.10)
    assert gate == {"held_out_loss": 2.1, "previous_loss": 2.0, "tolerance": 0.10, "pairs": gate["pairs"]}
    with pytest.raises(ReleaseRefused, match="worse than the last release"):
        release_gate(2.3, 2.0, tolerance=0.10)
    for broken in (float("nan"), float("inf")):
        with pytest.raises(ReleaseRefused, match="broken"):
            release_gate(broken, 2.0)


def test_non_finite_parameters_are_refused():
    model = torch.nn.Linear(4, 4)
    assert state_is_finite(model)
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    assert not state_is_finite(model)


# ---- attack 4: lease squatting --------------------------------------------------------------------


class FakeDHT:
    """hivemind's rule in memory: per (key, subkey) the entry expiring latest wins; an earlier one is refused."""

    def __init__(self):
        self.data: dict[str, dict] = {}
        self.stores: list[bytes] = []  # the subkey of every store, in order

    def store(self, key, subkey, value, expiration_time):
        self.stores.append(subkey)
        from hivemind.utils import ValueWithExpiration

        entries = self.data.setdefault(key, {})
        if subkey in entries and entries[subkey].expiration_time >= expiration_time:
            return False
        entries[subkey] = ValueWithExpiration(value, expiration_time)
        return True

    def get(self, key, latest=True):
        from hivemind.utils import ValueWithExpiration, get_dht_time

        live = {k: v for k, v in self.data.get(key, {}).items() if v.expiration_time > get_dht_time()}
        return ValueWithExpiration(live, max((v.expiration_time for v in live.values()), default=0.0)) if live else None


def owner(letter: str) -> bytes:
    """A stand-in owner tag (the FakeDHT checks no signatures; tests/test_peer_dht.py checks them on real nodes)."""
    return b"[owner:ssh-rsa AAAAB3NzaC1yc2E" + letter.encode() * 24 + b"]"


def holder_id(letter: str) -> str:
    from cairn.protocol.dht_keys import owner_public_id

    holder = owner_public_id(owner(letter))
    assert holder is not None
    return holder


SQUATTER = "f"


def lease(dht, letter: str, num_shards: int, **options):
    from cairn.peer.leases import ShardLease

    return ShardLease(dht, "run", owner(letter), num_shards, **{"lease_seconds": 30.0, "settle_seconds": 0.0, **options})


def write_entry(dht, letter: str, shard: int, *, claimed_at=None, expires_in=40.0, released=False, offset=None, updated_in=0.0, ttl=60.0):
    """What a peer that skips cairn's code can write: any value, under its own owner tag only (the DHT checks that)."""
    from hivemind.utils import get_dht_time

    from cairn.protocol.dht_keys import lease_subkey
    from cairn.protocol.dht_keys import LeaseRecord, RunKeys

    now = get_dht_time()
    record = LeaseRecord(
        claimed_at=now if claimed_at is None else claimed_at,
        expires_at=now + expires_in,
        released=released,
        offset=offset,
        updated_at=now + updated_in,
    )
    existing = dht.data.get(RunKeys("run").shard_leases, {}).get(lease_subkey(shard, owner(letter)))
    expiration = max(now + expires_in + ttl, existing.expiration_time + 1e-3 if existing else 0.0)
    assert dht.store(RunKeys("run").shard_leases, lease_subkey(shard, owner(letter)), record.dict(), expiration)


def test_far_future_leases_on_every_shard_do_not_stop_an_honest_peer():
    dht = FakeDHT()
    for shard in range(4):
        write_entry(dht, SQUATTER, shard, expires_in=10**6, offset=0)  # the old code: every shard "held" for 11 days
    honest = lease(dht, "a", 4)
    shard = honest.acquire()
    assert shard is not None
    assert honest.renew() and not honest.lost


def test_a_live_honest_lease_is_still_respected():
    dht = FakeDHT()
    assert lease(dht, "a", 1).acquire() == 0
    assert lease(dht, "b", 1).acquire() is None


def test_a_confirmed_holder_is_never_displaced_by_a_later_claim_whatever_start_it_declares():
    """Owner-keyed leases (issue 12): with plain subkeys a squatter's store expiring later replaced the holder's lease and
    the holder lost its shard; now nobody can write the holder's entry, and a backdated claim that appears later is ignored."""
    dht = FakeDHT()
    holder = lease(dht, "a", 1)
    assert holder.acquire() == 0
    write_entry(dht, SQUATTER, 0, claimed_at=0.0)  # claims the shard "since 1970"
    for _ in range(3):
        write_entry(dht, SQUATTER, 0, claimed_at=0.0, expires_in=40.0 + _)  # and renews it
        assert holder.renew() and not holder.lost and holder.shard == 0
    assert lease(dht, "c", 1).acquire() is None  # two live claims: nobody else piles on


class RacingDHT(FakeDHT):
    """A rival's claim lands during our settle, declaring that it began `rival_lead` seconds before ours."""

    def __init__(self, rival: str, rival_lead: float):
        super().__init__()
        self.rival, self.rival_lead, self.raced = rival, rival_lead, False

    def store(self, key, subkey, value, expiration_time):
        stored = super().store(key, subkey, value, expiration_time)
        if not self.raced and subkey.endswith(owner("a")):
            self.raced = True
            write_entry(self, self.rival, 0, claimed_at=value["claimed_at"] - self.rival_lead)
        return stored


@pytest.mark.parametrize("rival_lead, wins", [(0.5, False), (-0.5, True)])
def test_a_race_for_one_shard_goes_to_the_earlier_claim_and_the_loser_gives_its_claim_back(rival_lead, wins):
    from cairn.protocol.dht_keys import parse_lease_subkey

    dht = RacingDHT("b", rival_lead)
    racer = lease(dht, "a", 1)
    assert (racer.acquire() == 0) is wins
    ours = next(v for k, v in dht.data[next(iter(dht.data))].items() if parse_lease_subkey(k)[1] == holder_id("a"))
    assert ours.value["released"] is not wins  # the loser marked its claim released at once: the shard is the winner's


def ordinary_squats(dht: FakeDHT, num_shards: int, letter: str = SQUATTER) -> None:
    """Claims on every shard that look like an honest holder's (now + lease + margin), renewed as often as a squatter likes."""
    for shard in range(num_shards):
        write_entry(dht, letter, shard)


def test_ordinary_looking_leases_of_a_holder_that_trains_on_nothing_stop_an_honest_peer_for_the_grace_only():
    """Attack 4 with leases no expiration betrays: the squatter renews them like an honest peer, and publishes no record."""
    dht = FakeDHT()
    ordinary_squats(dht, 3)
    honest = lease(dht, "a", 3, shards_in_use=dict, idle_grace_seconds=0.3)
    assert honest.acquire() is None  # the first look starts the watch: an honest holder may not have reported yet
    time.sleep(0.35)
    ordinary_squats(dht, 3)  # it renews meanwhile
    shard = honest.acquire()
    assert shard is not None  # the old code: None for as long as the squatter renews
    ordinary_squats(dht, 3)
    assert honest.renew() and not honest.lost and honest.shard == shard  # its renewals do not take the shard back


def test_a_holder_whose_record_names_its_shard_is_never_taken_for_idle():
    dht = FakeDHT()
    ordinary_squats(dht, 2, letter="b")
    busy = {holder_id("b"): 0}  # trains on shard 0 (its record says so); holds shard 1 as well without training on it
    ours = lease(dht, "a", 2, shards_in_use=lambda: busy, idle_grace_seconds=0.0)
    assert ours.acquire(preferred=0) == 1
    busy[holder_id("a")] = 1  # our records name shard 1 from now on
    assert ours.renew() and ours.shard == 1
    assert lease(dht, "c", 2, shards_in_use=lambda: busy, idle_grace_seconds=0.0).acquire(preferred=0) is None  # 0: b trains; 1: we do
    assert lease(dht, "d", 2, shards_in_use=_raises, idle_grace_seconds=0.0).acquire() is None  # no evidence, nobody is idle


def _raises() -> dict[str, int]:
    raise TimeoutError("the DHT is busy")


def test_progress_is_the_latest_holders_offset_and_lies_about_it_are_bounded():
    dht = FakeDHT()
    first = lease(dht, "a", 2)
    assert first.acquire(preferred=0) == 0
    first.save_progress(0, 640)
    first.release()
    successor = lease(dht, "b", 2)
    assert successor.acquire(preferred=0) == 0
    assert successor.progress(0) == 640  # where the last holder stopped, from its own signed entry
    stores = len(dht.stores)
    assert successor.renew(offset=960)  # the training loop's report: renewal and progress in one signed store
    assert len(dht.stores) == stores + 1
    assert lease(dht, "c", 2).progress(0) == 960  # the newest offset, not the first holder's
    write_entry(dht, SQUATTER, 0, offset=0, updated_in=10 * 24 * 3600)  # an update "from the future" to pin the offset
    assert lease(dht, "c", 2).progress(0) == 960
    write_entry(dht, SQUATTER, 1, offset=7, expires_in=10**6)  # a far-future claim carries no offset either
    assert lease(dht, "c", 2).progress(1) == 0
    write_entry(dht, SQUATTER, 0, offset=0, released=True)  # a rewind written now: a reader that saw 960 keeps it
    assert successor.progress(0) == 960
    successor.save_progress(0, 32)  # our own write stands: it is what this peer read (a restart that read less)
    assert successor.progress(0) == 32


def test_a_restarted_holder_takes_its_shard_and_its_offset_back():
    dht = FakeDHT()
    before = lease(dht, "a", 3)
    shard = before._candidates()[1]  # not the shard its own order would try first
    assert before.acquire(preferred=shard) == shard
    before.save_progress(shard, 4096)
    claimed = dht.data[next(iter(dht.data))][lease_subkey_of("a", shard)].value
    after = lease(dht, "a", 3)  # the same identity, a new process: nothing in memory
    assert after.acquire() == shard  # its live entry still holds that shard: back to it, not to the first free one
    rewritten = dht.data[next(iter(dht.data))][lease_subkey_of("a", shard)].value
    assert rewritten["updated_at"] > claimed["updated_at"]  # its stores beat the old process's entry (not refused as older)
    assert rewritten["claimed_at"] == claimed["claimed_at"]  # the same tenure: it keeps winning races it won before
    assert after.progress(shard) == 4096
    assert after.renew() and not after.lost


def lease_subkey_of(letter: str, shard: int) -> bytes:
    from cairn.protocol.dht_keys import lease_subkey

    return lease_subkey(shard, owner(letter))


def test_a_holder_whose_lease_lapsed_while_another_took_the_shard_learns_it_has_lost_it():
    """A peer stalled past its lease (a long state download, say) must stop reading the shard its successor holds now;
    writing its progress must not revive the lease behind the successor's back."""
    dht = FakeDHT()
    stalled = lease(dht, "a", 1, lease_seconds=0.3)
    assert stalled.acquire() == 0
    time.sleep(0.45)  # past lease + margin: nobody renewed
    successor = lease(dht, "b", 1)
    assert successor.acquire() == 0
    successor.save_progress(0, 512)
    assert not stalled.renew(offset=64) and stalled.lost and stalled.shard is None  # the peer's report
    assert successor.renew() and not successor.lost
    assert lease(dht, "c", 1).progress(0) == 512  # the stalled peer's stale offset was not written over the holder's


def wait_for_move(holder, offset: int, timeout: float = 10.0) -> int | None:
    """What the training loop does: take_move() at every batch until the background move has leased a shard."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        moved = holder.take_move(offset)
        if moved is not None:
            return moved
        if holder._move is None:  # the move ended without a shard
            return None
        time.sleep(0.01)
    raise AssertionError("the move neither leased a shard nor gave up")


def test_a_new_peer_takes_the_least_read_free_shard():
    dht = FakeDHT()
    for shard, offset in {0: 9_000, 1: 100, 2: 5_000, 3: 300}.items():
        write_entry(dht, "b", shard, offset=offset, released=True)
    assert lease(dht, "a", 4).acquire() == 1


def test_a_peer_that_finished_a_pass_moves_on_to_the_least_read_free_shard_and_hands_its_own_on():
    """Four peers on 16 shards read a quarter of the corpus, each its shard over and over (docs/benchmarks.md
    section 10): after a pass a peer moves to the least-read free shard, and the next reader of its old one resumes
    where it stopped."""
    dht = FakeDHT()
    mover = lease(dht, "a", 4)
    assert mover.acquire(preferred=0) == 0
    write_entry(dht, "b", 1, offset=40_000, released=True)
    write_entry(dht, "b", 2, offset=20_000, released=True)
    assert lease(dht, "c", 4).acquire(preferred=3) == 3  # held by another peer: never a move's target
    mover.start_moving()
    assert mover.shard == 0  # the loop keeps reading its shard while the move claims the next one
    assert wait_for_move(mover, offset=19_456) == 2
    assert mover.shard == 2 and mover.renew() and not mover.lost
    newcomer = lease(dht, "d", 4)
    assert newcomer.acquire() == 0  # the old shard is free again and the least read (19,456 samples)
    assert newcomer.progress(0) == 19_456


def test_a_move_with_no_free_shard_keeps_the_shard_and_a_move_not_taken_is_given_back():
    dht = FakeDHT()
    mover = lease(dht, "a", 2)
    assert mover.acquire(preferred=0) == 0
    assert lease(dht, "b", 2).acquire() == 1
    mover.start_moving()
    assert wait_for_move(mover, offset=512) is None  # shard 1 is held: keep reading shard 0
    assert mover.shard == 0 and mover.renew()
    other = lease(dht, "c", 3)
    assert other.acquire(preferred=2) == 2
    other.start_moving()  # shard 0 and 1 are held, so nothing; then one frees while the peer leaves
    assert wait_for_move(other, offset=0) is None
    mover.release()
    other.start_moving()
    deadline = time.monotonic() + 10
    while other._move is not None and other._move.claim is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other._move is not None and other._move.claim is not None  # leased shard 0, not yet taken by the loop
    other.release()  # the peer leaves before its loop took it: both shards go back
    assert lease(dht, "d", 3).acquire(preferred=0) == 0
    assert lease(dht, "e", 3).acquire(preferred=2) == 2


def test_a_lease_owner_must_be_an_owner_tag():
    from cairn.peer.leases import ShardLease

    with pytest.raises(ValueError, match="owner"):
        ShardLease(FakeDHT(), "run", b"a" * 16, 2)


# ---- attack 2 at the coordinator: poll_once with a forged record -------------------------------------


def test_poll_once_survives_a_forged_record_and_bounds_a_forged_global_step(tmp_path):
    from types import SimpleNamespace

    from cairn.coordinator.ledger import Ledger
    from cairn.coordinator.metrics import CoordinatorMetrics
    from cairn.coordinator.service import Coordinator
    from cairn.protocol.run_config import SwarmConfig

    honest_key = b"[owner:ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0]"
    forged_key = b"[owner:ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC1]"
    entries = {
        honest_key: SimpleNamespace(value=record(300).dict()),
        forged_key: SimpleNamespace(value={**record(300).dict(), "samples": 2**63, "loss": float("nan")}),
    }
    coordinator = Coordinator.__new__(Coordinator)
    coordinator.ledger = Ledger(tmp_path / "ledger.sqlite")
    coordinator._trust_epoch(5)
    coordinator.config = SimpleNamespace(run_id="run", swarm=SwarmConfig(target_batch_size=512))
    coordinator.dht = SimpleNamespace(get=lambda key, latest: SimpleNamespace(value=entries), run_coroutine=lambda fn: [])
    coordinator.state_loader = SimpleNamespace(tracker=SimpleNamespace(global_epoch=10**9))
    coordinator._seen_epoch, coordinator._epoch_changed_at, coordinator._saved_peers = -1, None, set()
    coordinator.metrics = CoordinatorMetrics()
    try:
        coordinator.poll_once()
        credited = dict(coordinator.ledger.db.execute("SELECT public_id, credited_samples FROM peers").fetchall())
        assert list(credited.values()) == [300]
        assert coordinator._seen_epoch < 100  # the forged global step did not reach the ledger's cap
    finally:
        coordinator.ledger.close()


def test_the_coordinator_does_not_download_a_step_it_holds_and_still_checks_its_late_probes(tmp_path):
    """Every check downloaded the whole state again (~50 MB from a peer's uplink), new step or not."""
    from types import SimpleNamespace

    from cairn.coordinator.ledger import Ledger
    from cairn.coordinator.metrics import CoordinatorMetrics
    from cairn.coordinator.service import Coordinator
    from cairn.protocol.run_config import SwarmConfig
    from cairn.corpora.base import Pair

    downloads = []

    def download(**kwargs):
        downloads.append(kwargs)
        raise RuntimeError("no donor in this test")  # the coordinator logs it and tries at the next check

    coordinator = Coordinator.__new__(Coordinator)
    coordinator.ledger = Ledger(tmp_path / "ledger.sqlite")
    coordinator.config = SimpleNamespace(run_id="run", swarm=SwarmConfig(target_batch_size=512))
    tracker = SimpleNamespace(global_epoch=5)
    coordinator.state_loader = SimpleNamespace(
        tracker=tracker, state_averager=SimpleNamespace(load_state_from_peers=download, local_epoch=5)
    )
    coordinator.workdir = SimpleNamespace(release_requested=lambda: False)
    coordinator.loaded_epoch = 5
    coordinator.model = torch.nn.Linear(2, 2)
    coordinator.corpus = SimpleNamespace(shard=lambda index, count: [Pair(f"a{i}", f"b{i}") for i in range(8)])
    coordinator.task = SimpleNamespace(eval_loss=lambda batch, batch_size: 1.0)
    coordinator.metrics = CoordinatorMetrics()
    late = record(300, probe_epoch=5, probe_loss=1.0).copy(update=dict(probe_shard=0, probe_count=4))
    coordinator._last_records = {"0123456789abcdef": late}
    try:
        coordinator.check_and_maybe_release()
        assert downloads == []  # step 5 is held: nothing downloaded
        assert coordinator.ledger.spot_checked("0123456789abcdef", 5)  # its probe, published after the load, checked
        # a probe of step 5 published after that check and before the swarm's next round: checked against the state
        # still held, before the coordinator moves on to step 6 (before, it was never checked)
        coordinator._last_records["fedcba9876543210"] = late
        tracker.global_epoch = 6
        coordinator.check_and_maybe_release()
        assert len(downloads) == 1  # a new step: downloaded
        assert coordinator.ledger.spot_checked("fedcba9876543210", 5)
    finally:
        coordinator.ledger.close()
