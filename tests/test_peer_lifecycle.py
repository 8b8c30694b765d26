"""What a newcomer does first (issue 18): join a running swarm from behind a router (client mode), and stop
a peer or the coordinator with Ctrl+C.

Ctrl+C in a terminal is SIGINT to the whole foreground process group: these tests send exactly that to the
group of the process they started (each runs in its own session), and wait on conditions, never fixed sleeps.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from swarm_util import process_group_members, swarm_in, wait_for, write_corpus

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def running_swarm(tmp_path_factory):
    """A coordinator and one ordinary (reachable) peer that has already taken a global step (a state to load)."""
    root = tmp_path_factory.mktemp("swarm")
    corpus = write_corpus(root / "pairs.jsonl")
    with swarm_in(root, corpus) as swarm:
        swarm.init(
            "--averaging",
            "gradients",
            "--target-batch-size",
            "4096",
            "--batch-size",
            "32",
            "--landmarks",
            "64",
            "--compat-weight",
            "0",
            "--no-outside-reference",
        )
        swarm.start_coordinator("--no-outside-reference")
        swarm.start_peer("host", "--wait-for-peers", "1")
        wait_for(lambda: swarm.global_step() >= 1, 400, 1, "the first peer's first global step")
        yield swarm


def _epoch_of(swarm, name: str) -> int:
    rows = swarm.ledger("SELECT MAX(r.epoch) FROM records r JOIN peers p USING (public_id) WHERE p.display_name = ?", name)
    return int(rows[0][0]) if rows and rows[0][0] is not None else -1


def _ctrl_c(process, timeout: float = 60.0) -> int | None:
    """SIGINT to the process group, as a terminal's Ctrl+C; the exit code, or None if it is still running."""
    os.killpg(process.pid, signal.SIGINT)
    try:
        return process.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def _traceback_free(log: str) -> bool:
    return "Traceback" not in log and "Task exception was never retrieved" not in log


@pytest.mark.timeout(600)
def test_a_client_mode_peer_joins_a_running_swarm_and_trains_through_epochs(running_swarm):
    """`--client-mode` used to crash within a minute and a half: hivemind left the Optimizer's client_mode None while its
    averagers took the DHT's True, then set a state-sharing priority on them (ValueError) after loading state or at the
    next epoch. The newcomer must load the swarm's state and keep averaging through several epochs."""
    swarm = running_swarm
    joined_at = swarm.global_step()
    nat = swarm.start_peer("nat", "--client-mode", "--wait-for-peers", "1")
    # two epoch transitions after its first record: the state load and the epoch code both ran
    wait_for(lambda: (not nat.alive()) or _epoch_of(swarm, "nat") >= 0, 300, 1, "the client-mode peer's first record")
    first = _epoch_of(swarm, "nat")
    wait_for(lambda: (not nat.alive()) or _epoch_of(swarm, "nat") >= first + 2, 300, 1, "the client-mode peer to train through epochs")
    assert nat.alive(), nat.tail()
    assert _ctrl_c(nat) == 0, nat.tail()
    summary = swarm.summary("nat")
    assert summary["start_epoch"] >= max(joined_at - 1, 1), (joined_at, summary)  # it loaded the swarm's state
    assert summary["final_epoch"] >= summary["start_epoch"] + 2, summary
    assert summary["rounds"].get("success", 0) >= 1, (summary, nat.tail())  # and averaged with the host, not only alone
    log = nat.tail(200_000)
    assert "State sharing priority" not in log and _traceback_free(log), log[-3000:]


@pytest.mark.timeout(600)
def test_ctrl_c_stops_a_peer_and_the_coordinator_cleanly(running_swarm):
    """hivemind's averagers set SIGINT to ignored in the peer's main process when they start: Ctrl+C did nothing
    for minutes. Now the peer finishes its step, leaves, and its whole group (hivemind's children, p2pd) exits;
    the coordinator leaves without a traceback."""
    swarm = running_swarm
    host = next(p for p in swarm.processes if p.name == "host")
    coordinator = next(p for p in swarm.processes if p.name == "coordinator")
    assert host.alive(), host.tail()
    assert _ctrl_c(host) == 0, host.tail()
    wait_for(lambda: not process_group_members(host.pid), 30, 0.5, "the peer's hivemind processes and p2pd to exit")
    assert "host: left after" in host.tail() and _traceback_free(host.tail(200_000)), host.tail()

    code = _ctrl_c(coordinator)
    assert code in (0, 130), coordinator.tail()
    wait_for(lambda: not process_group_members(coordinator.pid), 30, 0.5, "the coordinator's processes to exit")
    assert _traceback_free(coordinator.tail(200_000)), coordinator.tail()
