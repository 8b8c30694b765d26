"""End to end on loopback: real coordinator, real peers (hivemind + p2pd), real SQLite, HTTP, TUF, Chromium.

Slow by nature (each peer is five processes that start in ~10 s on 2 cores); every test is bounded
and stops, then kills by process group, everything it started.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from protocol.encoder import Encoder, load_encoder
from swarm_util import ROOT, cairn, process_group_members, swarm_in, wait_for, write_corpus

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus_spec(tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "pairs.jsonl")


def _parameters(directory: Path) -> np.ndarray:
    model = load_encoder(directory)
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


def _initial_parameters(like: Path, seed: int = 0) -> np.ndarray:
    torch.manual_seed(seed)
    model = Encoder(load_encoder(like).config)
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


@pytest.mark.timeout(1200)
def test_two_peers_train_together_release_and_serve(tmp_path: Path, corpus_spec: str):
    """Two peers average into identical parameters; the coordinator credits both, cuts releases that a
    user pulls, verifies and embeds with; the dashboard shows both peers; nothing is left running."""
    with swarm_in(tmp_path, corpus_spec) as swarm:
        swarm.init("--target-batch-size", "512", "--batch-size", "32", "--landmarks", "128")
        swarm.start_coordinator("--release-every", "3")
        alice = swarm.start_peer("alice", "--wait-for-peers", "2")
        bob = swarm.start_peer("bob", "--wait-for-peers", "2")

        def two_releases():
            assert alice.alive(), alice.tail()
            assert bob.alive(), bob.tail()
            return len(swarm.ledger("SELECT version FROM releases")) >= 2

        wait_for(two_releases, 700, 5, "two releases")
        credited = dict(swarm.ledger("SELECT display_name, credited_samples FROM peers"))
        assert credited.get("alice", 0) > 0 and credited.get("bob", 0) > 0, credited

        _check_dashboard(swarm.coordinator_dir, tmp_path / "screenshots")

        # a clean leave: SIGTERM both at once; each finishes its step, releases its lease, shuts hivemind down
        for peer in (alice, bob):
            peer.popen.send_signal(15)
        for peer in (alice, bob):
            assert peer.popen.wait(timeout=90) == 0, peer.tail()
            assert process_group_members(peer.pid) == [], f"{peer.name} left processes behind"

        a, b = swarm.summary("alice"), swarm.summary("bob")
        assert a["rounds"]["success"] > 0 and b["rounds"]["success"] > 0, (a["rounds"], b["rounds"])
        assert a["final_epoch"] == b["final_epoch"], "the peers left at different global steps"
        params_a, params_b = _parameters(swarm.peer_dir("alice") / "state"), _parameters(swarm.peer_dir("bob") / "state")
        initial = _initial_parameters(swarm.peer_dir("alice") / "state")
        moved = np.abs(params_a - initial).mean()
        disagreement = np.abs(params_a - params_b).mean()
        # averaging changed every peer: both moved far from the shared initialisation, to the same point
        assert moved > 1e-3 and np.abs(params_b - initial).mean() > 1e-3
        assert disagreement < moved / 50, (disagreement, moved)

        _pull_verify_embed(swarm, tmp_path)


def _check_dashboard(coordinator_dir: Path, screenshots: Path) -> None:
    from browser_util import chromium_available, serve_dashboard, visit_pages

    if not chromium_available():
        pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh --test installs it)")
    screenshots = Path(os.environ.get("CAIRN_SCREENSHOTS", screenshots))
    with serve_dashboard(coordinator_dir) as base:
        pages = visit_pages([f"{base}/", f"{base}/contributors", f"{base}/convergence", f"{base}/releases"],
                            screenshot_dir=screenshots, wait_for_api="/api/swarm", screenshot_prefix="swarm-")
    for page in pages:
        assert page.status == 200 and not page.problems, (page.url, page.problems)
    leaderboard = pages[1].text
    assert "alice" in leaderboard and "bob" in leaderboard
    assert any(points > 1 for points in pages[2].chart_points), "the convergence charts have no data"


def _pull_verify_embed(swarm, tmp_path: Path) -> None:
    listed = subprocess.run(cairn("release", "list", swarm.repository_url, "--cache-dir", str(tmp_path / "trust")), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "0.1.0" in listed.stdout and "0.2.0" in listed.stdout
    installed = tmp_path / "installed"
    pulled = subprocess.run(cairn("release", "pull", swarm.repository_url, "--to", str(installed), "--cache-dir", str(tmp_path / "trust")),
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert pulled.returncode == 0, pulled.stderr
    verified = subprocess.run(cairn("release", "verify", str(installed), "--cache-dir", str(tmp_path / "trust")), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stderr
    embedded = subprocess.run(cairn("embed", "--release", str(installed), "--dims", "64", "a small dog", "a large cat"), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert embedded.returncode == 0, embedded.stderr
    lines = [json.loads(line) for line in embedded.stdout.splitlines()]
    assert [len(line["embedding"]) for line in lines] == [64, 64]
    assert abs(np.linalg.norm(lines[0]["embedding"]) - 1.0) < 1e-3

    manifest = json.loads((installed / "manifest.json").read_text())
    assert manifest["parent_version"] is not None
    compatibility = manifest["compatibility"]
    assert compatibility["parent"] == manifest["parent_version"]
    relational = compatibility["relational"]
    for key in ("head_score_old", "head_score_new", "head_ratio", "agreement", "cross_retrieval_r1"):
        assert isinstance(relational[key], float) and 0.0 <= relational[key] <= 1.5, (key, relational)
    # computed, not copied: the two releases' weights differ, so agreement is below a perfect 1
    assert relational["agreement"] < 0.99999
