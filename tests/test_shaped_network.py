"""A two-peer swarm on a shaped network, end to end (issue 13): coordinator and peers in their own network namespaces
behind tc tbf links (bench/netns.py, bench/shaped_network.py), real hivemind, real p2pd. Root only."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from swarm_util import ROOT, write_corpus

sys.path.insert(0, str(ROOT))
from bench.netns import PREFIX, ShapedNetwork, list_namespaces, unavailable_reason  # noqa: E402
from bench.shaped_network import child_env, run_swarm_shaped, spot_check_outcomes  # noqa: E402
from cairn.peer.swarm import cairn  # noqa: E402

REASON = unavailable_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=f"shaped network: {REASON}")]

RATE_MBIT = 20.0
# the swarm test's links: the shaped benchmark's home uplink (docs/benchmarks.md section 10). At 20 Mbit/s the ~78 MB
# state a peer downloads after one failed round (and the coordinator's own state loads, on the same uplinks) took
# longer than the test's 30 s, and the test failed in 2 of 3 CI runs with no round through
SWARM_RATE_MBIT = 50.0


def own_namespaces() -> list[str]:
    return [n for n in list_namespaces() if n.startswith(f"{PREFIX}-{os.getpid()}-")]


@pytest.fixture
def no_leftovers():
    """Every namespace this test process made is gone afterwards, pass or fail (and removed here if one was not)."""
    assert own_namespaces() == []
    yield
    left = own_namespaces()
    for name in left:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert left == [], f"namespaces left behind: {left}"


def test_the_shaped_link_holds_its_rate_both_ways_and_its_namespaces_go(no_leftovers):
    with ShapedNetwork(["c", "p1"], {"p1": RATE_MBIT}) as net:
        assert len(own_namespaces()) == 3  # hub, c, p1
        up, down = net.measure_mbit("p1", "c", 4), net.measure_mbit("c", "p1", 4)
        assert 0.6 * RATE_MBIT < up <= 1.05 * RATE_MBIT, up
        assert 0.6 * RATE_MBIT < down <= 1.05 * RATE_MBIT, down
        unshaped = net.measure_mbit("c", "c", 8)  # the coordinator's own loopback, no tbf
        assert unshaped > 5 * RATE_MBIT, unshaped
    assert own_namespaces() == []


def test_bad_network_input_is_refused_in_one_line():
    from bench.netns import NetnsError

    with pytest.raises(NetnsError, match="node name"):
        ShapedNetwork(["peer_with_a_long_name"])
    with pytest.raises(NetnsError, match="Mbit/s"):
        ShapedNetwork(["c", "p1"], {"p1": 0})


@pytest.mark.timeout(420)
def test_two_peers_train_together_over_shaped_links(tmp_path: Path, no_leftovers):
    corpus = write_corpus(tmp_path / "pairs.jsonl", pairs=6000)
    coordinator_dir = tmp_path / "coordinator"
    init = subprocess.run(
        cairn(
            "coordinator",
            "init",
            "--workdir",
            str(coordinator_dir),
            "--run-id",
            "shaped-test",
            "--corpus",
            corpus,
            "--shards",
            "4",
            "--lease-seconds",
            "8",
            "--batch-size",
            "256",
            "--target-batch-size",
            "512",
            "--initialisation",
            "random",
            # the default averaging (DiLoCo, overlapped outer rounds) with a round short enough for a 30-s run: 4 global
            # steps' worth, 4 inner steps per peer (the default 128 would close no round here; bench/shaped_network.py
            # measures H = 128)
            "--averaging",
            "diloco",
            "--outer-every",
            "4",
            "--no-outside-reference",
        ),  # the links are under test, not the start
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert init.returncode == 0, init.stderr[-2000:]

    # A second 30-s run of the same swarm only when a peer took part in no successful round. The start race that left
    # 2 of 6 runs without any (one peer met the target before the other's first step) is gone with the start barrier
    # (cairn/peer/start_barrier.py); what remains, 1 run in 5 on 2026-12-02: a first all-reduce that times out with half
    # the parts received, or a peer behind that spends the run on ~78 MB state downloads cut short (docs/benchmarks.md,
    # section 10). Both are hivemind over a slow link and stay open under issue 13; what must hold is that both peers
    # average over these links.
    for attempt in ("swarm", "swarm-again"):
        result = run_swarm_shaped(
            coordinator_dir,
            tmp_path / attempt,
            peers=2,
            rate_mbit=SWARM_RATE_MBIT,
            seconds=30,
            peer_args=["--compression", "blockwise8"],
            cpus=sorted(os.sched_getaffinity(0)),
        )
        if all(s and s["rounds"].get("success", 0) >= 1 for s in result["summaries"].values()):
            break
    logs = {name: (tmp_path / attempt / "logs" / f"{name}.log").read_text(errors="replace")[-1500:] for name in ("p1", "p2")}
    assert result["exit_codes"] == {"p1": 0, "p2": 0}, logs
    assert result["join"].startswith("/ip4/10.77.0.1/tcp/"), result["join"]  # peers joined through the bridge, not loopback
    summaries = result["summaries"]
    # both contributed, under the run's averaging, and they stepped together
    assert all(s["samples"] > 0 and s["averaging"] == "diloco" for s in summaries.values()), summaries
    assert max(s["final_epoch"] for s in summaries.values()) > 0, summaries
    # both took part in averaging rounds that went through: the barrier lets them start together, so the first round
    # finds its group (before it, the second peer's first step came after the first peer's round had given up)
    assert all(s["rounds"].get("success", 0) >= 1 for s in summaries.values()), [s["rounds"] for s in summaries.values()]
    # the averaging went over the shaped links: each peer's uplink carried at least its payload...
    for name, summary in summaries.items():
        assert result["traffic"][name]["up"] >= summary["bytes_sent"] > 0, (name, result["traffic"], summary["bytes_sent"])
    # ...and no 1-s window on either link ran above the configured rate (tbf's burst is 16 kB, under 1 % of a second here)
    for name in ("p1", "p2"):
        peak = result["peak_mbit"][name]
        assert max(peak["up"], peak["down"]) <= 1.1 * SWARM_RATE_MBIT, (name, peak)
        assert max(peak["up"], peak["down"]) > 0.3 * SWARM_RATE_MBIT, (name, peak)  # it did use the link
    # honest peers keep their credit: no spot check failed (a peer judged on a state only it held failed them before,
    # cairn/peer/state_sync.py), none taken back
    checks = spot_check_outcomes(coordinator_dir / "ledger.sqlite")
    assert checks["failed"] == 0 and checks["forfeited_samples"] == 0, checks
