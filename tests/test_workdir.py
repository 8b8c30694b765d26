"""The coordinator workdir's file contract (cairn.protocol.workdir): what every role reads, in one place."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cairn.protocol.errors import CairnError
from cairn.protocol.ledger_schema import connect, latest_release_version, swarm_progress
from cairn.protocol.workdir import MAX_STATE_BYTES, CoordinatorState, Workdir

JOIN = ("/ip4/127.0.0.1/tcp/31337/p2p/QmA", "/ip4/172.18.0.2/tcp/31337/p2p/QmA")


def test_state_round_trips_in_the_format_the_coordinator_has_always_written(tmp_path):
    state = CoordinatorState(join=JOIN, repository_url="http://127.0.0.1:8700", pid=42, run_id="run-1", started_at=1700000000.5)
    path = Workdir(tmp_path).state_file
    state.save(path)
    assert json.loads(path.read_text()) == {
        "join": list(JOIN),
        "repository_url": "http://127.0.0.1:8700",
        "pid": 42,
        "run_id": "run-1",
        "started_at": 1700000000.5,
    }
    assert CoordinatorState.load(path) == state
    assert not [p.name for p in tmp_path.iterdir() if p.name != "coordinator.json"], "no temp file left behind"


def test_a_state_with_only_the_join_addresses_is_read(tmp_path):
    path = tmp_path / "coordinator.json"
    path.write_text(json.dumps({"join": [JOIN[0]]}))
    assert CoordinatorState.load(path) == CoordinatorState(join=(JOIN[0],))


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"{not json", "not JSON"),
        (b"[]", "not an object"),
        (json.dumps({"join": []}).encode(), "'join' must be a non-empty list"),
        (json.dumps({"join": [JOIN[0]], "repository_url": "javascript:alert(1)"}).encode(), "'repository_url' must be an http"),
        (json.dumps({"join": [JOIN[0]], "pid": True}).encode(), "'pid' has the wrong type"),
        (json.dumps({"join": [JOIN[0]], "started_at": "yesterday"}).encode(), "'started_at' has the wrong type"),
        (b" " * (MAX_STATE_BYTES + 1), "larger than"),
    ],
)
def test_a_malformed_state_is_one_line_naming_the_file(tmp_path, content, reason):
    path = tmp_path / "coordinator.json"
    path.write_bytes(content)
    with pytest.raises(CairnError, match=reason) as raised:
        CoordinatorState.load(path)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_read_state_is_none_before_the_coordinator_starts(tmp_path):
    workdir = Workdir(tmp_path)
    assert workdir.read_state() is None
    with pytest.raises(CairnError, match="cannot read"):
        CoordinatorState.load(workdir.state_file)


def test_the_release_request_is_a_file_any_process_can_create(tmp_path):
    workdir = Workdir(tmp_path)
    assert not workdir.release_requested()
    subprocess.run(
        [
            sys.executable,
            "-c",
            f"from pathlib import Path; from cairn.protocol.workdir import Workdir; Workdir(Path({str(tmp_path)!r})).request_release()",
        ],
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert workdir.release_requested() and (tmp_path / "release.request").exists()
    workdir.clear_release_request()
    workdir.clear_release_request()  # twice: the coordinator may clear a request that is already gone
    assert not workdir.release_requested()


def test_ledger_readers_outside_the_coordinator(tmp_path):
    path = Workdir(tmp_path).ledger
    assert swarm_progress(path) == (0, []) and latest_release_version(path) is None
    db = connect(path)
    db.execute("INSERT INTO swarm (at, global_step, peers_online, samples_per_second, credit_cap) VALUES (1, 7, 2, 1.0, 0)")
    db.execute(
        "INSERT INTO peers (public_id, display_name, peer_id, device, first_seen, last_seen, credited_samples) "
        "VALUES ('p1', 'bob', 'Qm', 'cpu', 0, 0, 96), ('p2', 'alice', 'Qm', 'cpu', 0, 0, 64)"
    )
    for version, created in (("0.1.0", 1.0), ("0.2.0", 2.0)):
        db.execute("INSERT INTO releases VALUES (?, NULL, 1, 1, ?, '{}')", (version, created))
    db.close()
    assert swarm_progress(path) == (7, [("alice", 64), ("bob", 96)])
    assert latest_release_version(path) == "0.2.0"
