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


def record(
    samples: int,
    *,
    name: str = "alice",
    uptime: float = 10.0,
    at: float | None = None,
    epoch: int = 0,
    probe_epoch: int = -1,
    probe_loss: float = 0.0,
) -> ContributionRecord:
    return ContributionRecord(
        display_name=name,
        peer_id="QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N",
        samples=samples,
        steps=samples // 32,
        loss=5.0,
        samples_per_second=100.0,
        device="cpu",
        uptime_seconds=float(uptime),
        shard=0,
        protocol_version=1,
        reported_at=at if at is not None else time.time(),
        epoch=epoch,
        shards_completed=0,
        probe_epoch=probe_epoch,
        probe_shard=0 if probe_epoch >= 0 else -1,
        probe_offset=0,
        probe_count=32 if probe_epoch >= 0 else 0,
        probe_loss=probe_loss,
    )


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
    ledger.apply_poll({"a" * 16: record(900, at=1.0), "b" * 16: record(300, name="bob", at=1.0)}, global_step=0, target_batch_size=512)
    first = credited(ledger)
    assert sum(first.values()) <= 512  # only one epoch in progress: at most one target batch explained
    assert first["a" * 16] == pytest.approx(3 * first["b" * 16], abs=2)  # scaled proportionally
    ledger.apply_poll({}, global_step=10, target_batch_size=512)
    assert credited(ledger) == {"a" * 16: 900, "b" * 16: 300}


def test_a_repeated_record_is_counted_once_and_a_restart_counts_from_zero(ledger: Ledger):
    peer = "a" * 16
    ledger.apply_poll({peer: record(100, uptime=10, at=1.0)}, global_step=5, target_batch_size=512)
    ledger.apply_poll({peer: record(100, uptime=10, at=1.0)}, global_step=5, target_batch_size=512)
    ledger.apply_poll({peer: record(250, uptime=20, at=2.0)}, global_step=5, target_batch_size=512)
    assert credited(ledger)[peer] == 250
    ledger.apply_poll({peer: record(40, uptime=3, at=3.0)}, global_step=5, target_batch_size=512)  # restarted
    assert credited(ledger)[peer] == 290


def test_a_failed_spot_check_forfeits_its_window_and_withholds_credit_until_the_next_pass(ledger: Ledger):
    """Issue 12, attack 5: a failed check took no credit back, it only delayed the next."""
    peer = "a" * 16
    ledger.apply_poll({peer: record(100, at=1.0)}, global_step=5, target_batch_size=512, now=100.0)
    assert credited(ledger)[peer] == 100
    ledger.record_spot_check(peer, 3, claimed=2.0, recomputed=5.0, passed=False, now=101.0)
    assert credited(ledger)[peer] == 0  # the window before the failed check is forfeited
    ledger.apply_poll({peer: record(300, uptime=20, at=2.0)}, global_step=6, target_batch_size=512, now=102.0)
    assert credited(ledger)[peer] == 0  # withheld until a check passes
    ledger.record_spot_check(peer, 4, claimed=5.0, recomputed=5.01, passed=True, now=103.0)
    ledger.apply_poll({}, global_step=6, target_batch_size=512, now=104.0)
    assert credited(ledger)[peer] == 200  # the claim made after the failure
    ledger.apply_poll({peer: record(500, uptime=30, at=3.0)}, global_step=7, target_batch_size=512, now=105.0)
    assert credited(ledger)[peer] == 400
    ledger.record_spot_check(peer, 5, claimed=2.0, recomputed=5.0, passed=False, now=106.0)
    assert credited(ledger)[peer] == 200  # only the window since the passed check is taken back
    summary = ledger.spot_check_summary()
    assert summary["checked"] == 3 and summary["failed"] == 2 and 0 < summary["share_checked"] <= 1


def test_a_peer_that_never_publishes_a_probe_is_credited_only_in_its_grace_period(ledger: Ledger):
    """Issue 12, attack 5: a peer never spot-checked was credited forever."""
    from cairn.coordinator.ledger import PROBE_GRACE_SECONDS

    lazy, honest = "a" * 16, "b" * 16
    t0, polls = 1000.0, int(2 * PROBE_GRACE_SECONDS / 3)
    for i in range(1, polls + 1):
        now = t0 + 3 * i
        if i % 7 == 0:  # the honest peer's probes are checked and pass
            ledger.record_spot_check(honest, i, claimed=5.0, recomputed=5.0, passed=True, now=now)
        ledger.apply_poll(
            {lazy: record(100 * i, uptime=3 * i, at=now), honest: record(100 * i, name="bob", uptime=3 * i, at=now)},
            global_step=i,
            target_batch_size=512,
            now=now,
        )
        if now - t0 <= PROBE_GRACE_SECONDS - 3:
            in_grace = credited(ledger)[lazy]
    assert credited(ledger)[honest] == 100 * polls
    assert credited(ledger)[lazy] <= in_grace + 200 < 100 * polls


def test_a_record_claiming_an_impossible_counter_is_refused_at_the_schema():
    """Issue 12, attacks 2 and 5: 2^63 overflowed SQLite, 10^15 took all the credit; NaN, inf and negatives too."""
    import pydantic.v1 as pydantic

    from cairn.protocol.dht_keys import MAX_SAMPLES_PER_SECOND, decode_contributions

    honest = record(300).dict()
    for field, value in [
        ("samples", 2**63),
        ("samples", 2**62),
        ("samples", 10**15),
        ("samples", -1),
        ("steps", 2**63),
        ("epoch", 2**63),
        ("loss", float("nan")),
        ("loss", float("inf")),
        ("probe_loss", float("-inf")),
        ("uptime_seconds", float("inf")),
        ("uptime_seconds", -1.0),
        ("samples_per_second", 1e30),
        ("reported_at", float("nan")),
        ("probe_offset", 2**63),
        ("shard", -2),
    ]:
        with pytest.raises(pydantic.ValidationError):
            ContributionRecord.parse_obj({**honest, field: value})
    # a counter no process reaches in its uptime (10 s at the ceiling rate, plus one batch)
    with pytest.raises(pydantic.ValidationError):
        ContributionRecord.parse_obj({**honest, "samples": int(11 * MAX_SAMPLES_PER_SECOND) + 4096})
    owner = b"[owner:ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC0]"
    other = b"[owner:ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC1]"
    decoded = decode_contributions({owner: {**honest, "samples": 2**63}, other: honest})
    assert list(decoded.values()) == [ContributionRecord.parse_obj(honest)]


def unchecked(samples: int, **fields) -> ContributionRecord:
    """A record as an attacker could hand to a coordinator that lacks the schema's bounds (no validation)."""
    return ContributionRecord.construct(**{**record(0).dict(), "samples": samples, **fields})


@pytest.mark.parametrize(
    "bad",
    [
        {"x" * 16: unchecked(2**63)},
        {"x" * 16: unchecked(2**62, uptime_seconds=1e12), "y" * 16: unchecked(2**62, uptime_seconds=1e12, display_name="y")},
        {"x" * 16: unchecked(10, loss=float("nan"))},
        {"x" * 16: unchecked(10, reported_at=float("inf"))},
        {"x" * 16: unchecked(-(2**63) - 1)},
        {"x" * 16: unchecked(10**15, uptime_seconds=1e12)},
    ],
)
def test_one_bad_record_never_stops_the_ledger_and_honest_credit_is_unchanged(tmp_path: Path, bad: dict):
    """Issue 12, attack 2: `apply_poll` raised (sqlite3.OverflowError, SUM overflow), which ended `serve()`."""

    def run(path: Path, extra: dict) -> dict:
        ledger = Ledger(path)
        try:
            for i in range(1, 4):
                honest = {
                    "a" * 16: record(200 * i, uptime=3 * i, at=float(i)),
                    "b" * 16: record(100 * i, name="bob", uptime=3 * i, at=float(i)),
                }
                ledger.apply_poll({**extra, **honest}, global_step=10 * i, target_batch_size=512, now=1000.0 + i)
            return {k: v for k, v in credited(ledger).items() if k in ("a" * 16, "b" * 16)}
        finally:
            ledger.close()

    assert run(tmp_path / "attacked.sqlite", bad) == run(tmp_path / "clean.sqlite", {}) == {"a" * 16: 600, "b" * 16: 300}


def test_oscillating_uptime_cannot_reclaim_the_counter(ledger: Ledger):
    """Issue 12, attack 5: a peer alternating uptime_seconds looked restarted at every other record and re-claimed its
    whole counter each time. Its claims now stay within what the swarm did since it appeared."""
    attacker = "a" * 16
    for i in range(1, 41):
        ledger.apply_poll(
            {attacker: record(10**6, uptime=1000.0 - (i % 2), at=float(i))}, global_step=i, target_batch_size=512, now=1000.0 + i
        )
    claimed = ledger.db.execute("SELECT claimed_samples FROM peers WHERE public_id = ?", (attacker,)).fetchone()[0]
    assert claimed <= (40 + 2 * 2) * 512  # the old code: 20 re-claims of 10^6


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
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER.format(tests=str(Path(__file__).parent), path=str(path))],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
        start_new_session=True,
    )
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
    ledger.apply_poll(
        {alice: record(3000, uptime=100, at=1.0), bob: record(3000, name="bob", uptime=100, at=1.0)}, global_step=20, target_batch_size=512
    )
    assert sum(credited(ledger).values()) == 6000
    # the swarm stops; a new session starts from step 0: the coordinator first reads step 0, then the new run's steps
    ledger.apply_poll({alice: record(512, uptime=5, at=2.0)}, global_step=0, target_batch_size=512)
    ledger.apply_poll(
        {alice: record(1024, uptime=10, at=3.0), bob: record(900, name="bob", uptime=10, at=3.0)}, global_step=2, target_batch_size=512
    )
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


def test_release_cadence_counts_samples_so_a_diloco_round_is_many_global_steps():
    from cairn.coordinator.service import release_is_due
    from cairn.protocol.run_config import SwarmConfig

    diloco = SwarmConfig(averaging="diloco", outer_every=128)
    assert diloco.steps_per_epoch == 128 and SwarmConfig(averaging="gradients", outer_every=128).steps_per_epoch == 1
    # --release-every 10 under DiLoCo at H = 128: every outer round passes it (counting rounds, the first release
    # would come after 10 rounds, ~15 minutes of a 2-peer CPU swarm)
    assert release_is_due(1, 0, 10, diloco.steps_per_epoch) and not release_is_due(1, 1, 10, diloco.steps_per_epoch)
    # R larger than one round: released at the first round past R global steps' worth of samples
    assert not release_is_due(2, 0, 300, 128) and release_is_due(3, 0, 300, 128)
    assert not release_is_due(3, 0, 0, 128)  # 0: on request only
