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

    def store(self, key, subkey, value, expiration_time):
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


def squatted_dht(num_shards: int) -> FakeDHT:
    from hivemind.utils import get_dht_time

    from cairn.protocol.dht_keys import LeaseRecord, RunKeys

    dht, far = FakeDHT(), get_dht_time() + 10**6
    for shard in range(num_shards):
        dht.store(RunKeys("run").shard_leases, str(shard), LeaseRecord(holder="f" * 16, expires_at=far).dict(), far)
        dht.store(RunKeys("run").shard_progress, str(shard), 0, far)
    return dht


def test_far_future_leases_on_every_shard_do_not_stop_an_honest_peer():
    from cairn.peer.leases import ShardLease

    dht = squatted_dht(4)
    lease = ShardLease(dht, "run", "a" * 16, 4, lease_seconds=30.0, settle_seconds=0.0)
    shard = lease.acquire()
    assert shard is not None  # the old code: None forever, every shard "held" for 11 days
    assert lease.renew() and not lease.lost


def test_a_live_honest_lease_is_still_respected():
    from cairn.peer.leases import ShardLease

    dht = FakeDHT()
    first = ShardLease(dht, "run", "a" * 16, 1, lease_seconds=30.0, settle_seconds=0.0)
    assert first.acquire() == 0
    assert ShardLease(dht, "run", "b" * 16, 1, lease_seconds=30.0, settle_seconds=0.0).acquire() is None


def ordinary_squats(dht: FakeDHT, num_shards: int, holder: str = "f" * 16) -> None:
    """Leases on every shard that look like an honest holder's (now + lease + margin), renewed as often as a squatter likes."""
    from hivemind.utils import get_dht_time

    from cairn.protocol.dht_keys import LeaseRecord, RunKeys

    for shard in range(num_shards):
        expiration = get_dht_time() + 40.0
        dht.store(RunKeys("run").shard_leases, str(shard), LeaseRecord(holder=holder, expires_at=expiration).dict(), expiration)


def test_ordinary_looking_leases_of_a_holder_that_trains_on_nothing_stop_an_honest_peer_for_the_grace_only():
    """Attack 4 with leases no expiration betrays: the squatter renews them like an honest peer, and publishes no record."""
    from cairn.peer.leases import ShardLease

    dht = FakeDHT()
    ordinary_squats(dht, 3)
    lease = ShardLease(dht, "run", "a" * 16, 3, lease_seconds=30.0, settle_seconds=0.0, shards_in_use=dict, idle_grace_seconds=0.3)
    assert lease.acquire() is None  # the first look starts the watch: an honest holder may not have reported yet
    time.sleep(0.35)
    ordinary_squats(dht, 3)  # it renews meanwhile, later than anything we store
    shard = lease.acquire()
    assert shard is not None  # the old code: None for as long as the squatter renews
    ordinary_squats(dht, 3)
    assert lease.renew() and not lease.lost and lease.shard == shard  # its renewals do not take the shard back


def test_a_holder_whose_record_names_its_shard_is_never_taken_for_idle():
    from cairn.peer.leases import ShardLease

    dht = FakeDHT()
    ordinary_squats(dht, 2, holder="b" * 16)
    busy = {"b" * 16: 0}  # trains on shard 0 (its record says so); holds shard 1 as well without training on it
    lease = ShardLease(dht, "run", "a" * 16, 2, lease_seconds=30.0, settle_seconds=0.0, shards_in_use=lambda: busy, idle_grace_seconds=0.0)
    assert lease.acquire(preferred=0) == 1
    busy["a" * 16] = 1  # our records name shard 1 from now on; b's squat is still the lease the DHT keeps
    assert lease.renew() and lease.shard == 1  # our own record does not make b look busy to us
    assert (
        ShardLease(
            dht, "run", "c" * 16, 2, lease_seconds=30.0, settle_seconds=0.0, shards_in_use=lambda: busy, idle_grace_seconds=0.0
        ).acquire(preferred=0)
        is None
    )  # 0: b trains there; 1: we do (no pile-up)
    unreadable = ShardLease(dht, "run", "d" * 16, 2, lease_seconds=30.0, settle_seconds=0.0, shards_in_use=_raises, idle_grace_seconds=0.0)
    assert unreadable.acquire() is None  # no evidence, nobody is idle


def _raises() -> dict[str, int]:
    raise TimeoutError("the DHT is busy")


def test_progress_that_goes_backwards_or_squats_is_ignored():
    from hivemind.utils import get_dht_time

    from cairn.peer.leases import ShardLease
    from cairn.protocol.dht_keys import RunKeys

    dht = FakeDHT()
    lease = ShardLease(dht, "run", "a" * 16, 2, lease_seconds=30.0, settle_seconds=0.0)
    lease.save_progress(0, 640)
    assert lease.progress(0) == 640
    dht.store(RunKeys("run").shard_progress, "0", 0, get_dht_time() + 10 * 24 * 3600)  # rewind, and squat it
    assert lease.progress(0) == 640
    dht.store(RunKeys("run").shard_progress, "1", 0, get_dht_time() + 10**6)
    assert lease.progress(1) == 0  # a squatted entry reads as no progress
    lease.save_progress(0, 32)  # our own wrap-around at the end of the shard is kept
    assert lease.progress(0) == 32


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
        tracker.global_epoch = 6
        coordinator.check_and_maybe_release()
        assert len(downloads) == 1  # a new step: downloaded
    finally:
        coordinator.ledger.close()
