"""A restarted coordinator rejoins through the peers it knew, and still starts when they are all gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cairn.coordinator.node import CoordinatorOptions, load_known_peers, start_dht
from cairn.protocol.workdir import Workdir
from cairn.protocol.identity import load_or_create_identity
from cairn.protocol.run_config import RunConfig
from swarm_util import free_port


@pytest.mark.timeout(120)
def test_start_with_only_departed_known_peers_falls_back_to_a_new_network(tmp_path: Path):
    workdir = Workdir(tmp_path)
    dead = f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    Workdir(tmp_path).known_peers.write_text(json.dumps([dead, 42, "not an address"]))
    assert load_known_peers(workdir) == [dead]
    config = RunConfig("restart-test", "wordnet", "c" * 64, "t" * 64, "l" * 64, 1)
    port = free_port()
    dht = start_dht(
        workdir, config, CoordinatorOptions(workdir=tmp_path, host="127.0.0.1", port=port), load_or_create_identity(tmp_path / "dht.pem")
    )
    try:
        assert any(f"/tcp/{port}/" in str(address) for address in dht.get_visible_maddrs())
    finally:
        dht.shutdown()


def test_unreadable_known_peers_file_means_none(tmp_path: Path):
    Workdir(tmp_path).known_peers.write_text("{not json")
    assert load_known_peers(Workdir(tmp_path)) == []
