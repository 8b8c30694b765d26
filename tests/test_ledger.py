"""The contribution ledger: credit is bounded by the global step, survives restarts and kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cairn.coordinator.ledger import Ledger
from cairn.protocol.dht_keys import ContributionRecord


def record(samples: int, *, name: str = "alice", uptime: float = 10.0, at: float | None = None, epoch: int = 0,
           probe_epoch: int = -1, probe_loss: float = 0.0) -> ContributionRecord:
    return ContributionRecord(
        display_name=name, peer_id="QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", samples=samples, steps=samples // 32,
        loss=5.0, samples_per_second=100.0, device="cpu", uptime_seconds=float(uptime), shard=0, protocol_version=1,
        reported_at=at if at is not None else time.time(), epoch=epoch, shards_completed=0, probe_epoch=probe_epoch,
        probe_shard=0 if probe_epoch >= 0 else -1, probe_offset=0, probe_count=32 if probe_epoch >= 0 else 0, probe_loss=probe_loss)


@pytest.fixture
def ledger(tmp_path: Path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    yield ledger
    ledger.close()


def credited(ledger: Ledger) -> dict[str, int]:
    return {row["public_id"]: row["credited_samples"] for row in ledger.db.execute("SELECT * FROM peers")}


def test_claims_within_what_the_global_step_explains_are_credited(ledger: Ledger):
    ledger.apply_poll({"a" * 16: record(300, at=1.0), "b" * 16: record(200, name="bob", at=1.0)}, global_step=1, target_batch_size=512)
    assert credited(ledger) == {"a" * 16: 300, "b" * 16: 200}


def test_claims_beyond_the_cap_wait_and_are_credited_when_the_step_catches_up(ledger: Ledger):
    ledger.apply_poll({"a" * 16: record(3000, at=1.0), "b" * 16: record(1000, name="bob", at=1.0)}, global_step=0, target_batch_size=512)
    first = credited(ledger)
    assert sum(first.values()) <= 512  # only one epoch in progress: at most one target batch explained
    assert first["a" * 16] == pytest.approx(3 * first["b" * 16], abs=2)  # scaled proportionally
    ledger.apply_poll({}, global_step=10, target_batch_size=512)
    assert credited(ledger) == {"a" * 16: 3000, "b" * 16: 1000}


def test_a_repeated_record_is_counted_once_and_a_restart_counts_from_zero(ledger: Ledger):
    peer = "a" * 16
    ledger.apply_poll({peer: record(100, uptime=10, at=1.0)}, global_step=5, target_batch_size=512)
    ledger.apply_poll({peer: record(100, uptime=10, at=1.0)}, global_step=5, target_batch_size=512)
    ledger.apply_poll({peer: record(250, uptime=20, at=2.0)}, global_step=5, target_batch_size=512)
    assert credited(ledger)[peer] == 250
    ledger.apply_poll({peer: record(40, uptime=3, at=3.0)}, global_step=5, target_batch_size=512)  # restarted
    assert credited(ledger)[peer] == 290


def test_a_failed_spot_check_withholds_credit_until_the_next_pass(ledger: Ledger):
    peer = "a" * 16
    ledger.apply_poll({peer: record(100, at=1.0)}, global_step=5, target_batch_size=512)
    ledger.record_spot_check(peer, 3, claimed=2.0, recomputed=5.0, passed=False)
    ledger.apply_poll({peer: record(300, uptime=20, at=2.0)}, global_step=6, target_batch_size=512)
    assert credited(ledger)[peer] == 100
    ledger.record_spot_check(peer, 4, claimed=5.0, recomputed=5.01, passed=True)
    ledger.apply_poll({}, global_step=6, target_batch_size=512)
    assert credited(ledger)[peer] == 300
    summary = ledger.spot_check_summary()
    assert summary["checked"] == 2 and summary["failed"] == 1 and 0 < summary["share_checked"] <= 1


WRITER = """
import sys, time
from cairn.coordinator.ledger import Ledger
sys.path.insert(0, {tests!r})
from test_ledger import record
ledger = Ledger({path!r})
for i in range(1, 100000):
    ledger.apply_poll({{"a" * 16: record(i * 10, uptime=float(i), at=float(i))}}, global_step=10**6, target_batch_size=512)
    print(i, flush=True)  # acknowledged: the transaction committed
"""


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path):
    path = tmp_path / "ledger.sqlite"
    process = subprocess.Popen([sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent), path=str(path))],
                               stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent, start_new_session=True)
    try:
        acknowledged = 0
        deadline = time.monotonic() + 60
        while acknowledged < 30 and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            acknowledged = int(line.split()[0])
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=10)
    assert acknowledged >= 30, "the writer made no progress"
    reopened = Ledger(path)
    try:
        rows = reopened.db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        assert rows >= acknowledged
        assert credited(reopened)["a" * 16] >= acknowledged * 10
    finally:
        reopened.close()


def test_credit_continues_when_the_swarm_is_restarted_on_the_same_workdir(ledger: Ledger):
    """Issue 18: `cairn swarm` run again starts the global step at 0; capped by the new step alone, a second session's
    work was credited nothing until the first run's high point was passed. The earlier runs' steps carry over."""
    alice, bob = "a" * 16, "b" * 16
    ledger.apply_poll({alice: record(3000, uptime=100, at=1.0), bob: record(3000, name="bob", uptime=100, at=1.0)},
                      global_step=20, target_batch_size=512)
    assert sum(credited(ledger).values()) == 6000
    # the swarm stops; a new session starts from step 0: the coordinator first reads step 0, then the new run's steps
    ledger.apply_poll({alice: record(512, uptime=5, at=2.0)}, global_step=0, target_batch_size=512)
    ledger.apply_poll({alice: record(1024, uptime=10, at=3.0), bob: record(900, name="bob", uptime=10, at=3.0)},
                      global_step=2, target_batch_size=512)
    assert credited(ledger) == {alice: 3000 + 1024, bob: 3000 + 900}  # within 20 + 2 steps: all of it, now
    # the cap still binds: the new run's claims beyond what its steps explain wait
    ledger.apply_poll({alice: record(1024 + 512 * 40, uptime=60, at=4.0)}, global_step=3, target_batch_size=512)
    assert sum(credited(ledger).values()) <= (20 + 3 + 1) * 512


def test_one_step_back_is_not_a_new_run(ledger: Ledger):
    """When the most advanced peer leaves, the swarm's step may read one lower: that must not add a run's worth of cap."""
    peer = "a" * 16
    ledger.apply_poll({peer: record(512, at=1.0)}, global_step=10, target_batch_size=512)
    ledger.apply_poll({}, global_step=9, target_batch_size=512)
    ledger.apply_poll({peer: record(512 + 512 * 30, uptime=20, at=2.0)}, global_step=10, target_batch_size=512)
    assert credited(ledger)[peer] <= 11 * 512


def test_releases_continue_when_the_swarm_is_restarted_on_the_same_workdir():
    from cairn.coordinator.service import release_is_due

    assert release_is_due(60, 50, 10) and not release_is_due(59, 50, 10)
    assert not release_is_due(55, 50, 0)  # 0: on request only
    # the swarm started again from step 0 after a release at step 50: due again after 10 steps of the new run
    assert not release_is_due(5, 50, 10) and release_is_due(10, 50, 10)
    assert not release_is_due(49, 50, 10)  # one step back is a donor behind, not a new run
