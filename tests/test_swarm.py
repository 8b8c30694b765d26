"""End to end on loopback: real coordinator, real peers (hivemind + p2pd), real SQLite, HTTP, TUF, Chromium.

Slow by nature (each peer is five processes that start in ~10 s on 2 cores); every test is bounded
and stops, then kills by process group, everything it started.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from cairn.protocol.encoder import load_encoder
from swarm_util import ROOT, cairn, free_port, process_group_members, swarm_in, wait_for, write_corpus

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def corpus_spec(tmp_path_factory) -> str:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "pairs.jsonl")


def _parameters(directory: Path) -> np.ndarray:
    model = load_encoder(directory)
    return torch.cat([p.detach().flatten() for p in model.parameters()]).numpy()


def _initial_parameters(swarm) -> np.ndarray:
    """What every peer started from: the run's start release (a distilled start is release 0.1.0, cut at init)."""
    return _parameters(swarm.coordinator_dir / "releases" / "0.1.0")


@pytest.mark.timeout(1200)
def test_two_peers_train_together_release_and_serve(tmp_path: Path, corpus_spec: str):
    """Two peers average into identical parameters; the coordinator credits both, cuts releases that a
    user pulls, verifies and embeds with; the dashboard shows both peers; nothing is left running; a peer
    that then starts alone starts from the latest signed release."""
    with swarm_in(tmp_path, corpus_spec) as swarm:
        # no compatibility term here: its extra forward pass of the parent release per batch, on this shared 2-core
        # box, makes single averaging rounds miss their group and the parameter bound below is about averaging;
        # test_swarm_learns_like_the_single_process_baseline_at_the_readme_defaults runs the term end to end
        swarm.init(
            "--averaging", "gradients", "--target-batch-size", "512", "--batch-size", "32", "--landmarks", "128", "--compat-weight", "0"
        )
        swarm.start_coordinator("--release-every", "3")
        metrics_port = free_port()
        alice = swarm.start_peer("alice", "--wait-for-peers", "2", "--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1")
        # bob steps its batch of 32 in chunks of 8 (GradCache, as a GPU peer with little memory would): the same
        # gradient, so the two still end on one set of parameters
        bob = swarm.start_peer("bob", "--wait-for-peers", "2", "--micro-batch", "8")

        def two_releases():
            assert alice.alive(), alice.tail()
            assert bob.alive(), bob.tail()
            return len(swarm.ledger("SELECT version FROM releases")) >= 2

        wait_for(two_releases, 700, 5, "two releases")
        credited = dict(swarm.ledger("SELECT display_name, credited_samples FROM peers"))
        assert credited.get("alice", 0) > 0 and credited.get("bob", 0) > 0, credited

        peer_metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'cairn_allreduce_rounds_total{outcome="success"}' in peer_metrics and "cairn_bytes_sent_total" in peer_metrics
        samples_line = next(line for line in peer_metrics.splitlines() if line.startswith("cairn_samples_total "))
        assert float(samples_line.split()[1]) > 0
        coordinator_metrics = urllib.request.urlopen(f"{swarm.repository_url}/metrics", timeout=10).read().decode()
        assert "cairn_coordinator_global_step" in coordinator_metrics

        _check_dashboard(swarm.coordinator_dir, tmp_path / "screenshots")

        # a clean leave: SIGTERM both at once; each finishes its step, releases its lease, shuts hivemind down
        for peer in (alice, bob):
            peer.popen.send_signal(15)
        for peer in (alice, bob):
            assert peer.popen.wait(timeout=90) == 0, peer.tail()
            assert process_group_members(peer.pid) == [], f"{peer.name} left processes behind"

        a, b = swarm.summary("alice"), swarm.summary("bob")
        assert a["rounds"]["success"] > 0 and b["rounds"]["success"] > 0, (a["rounds"], b["rounds"])
        assert (a["micro_batch"], b["micro_batch"]) == (32, 8)
        assert a["compat_parent"] is None and b["compat_parent"] is None  # --compat-weight 0: no parent is ever pulled
        assert a["final_epoch"] == b["final_epoch"], "the peers left at different global steps"
        params_a, params_b = _parameters(swarm.peer_dir("alice") / "state"), _parameters(swarm.peer_dir("bob") / "state")
        initial = _initial_parameters(swarm)
        moved = np.abs(params_a - initial).mean()
        disagreement = np.abs(params_a - params_b).mean()
        # averaging changed every peer: both moved far from the shared initialisation, to the same point
        assert moved > 1e-3 and np.abs(params_b - initial).mean() > 1e-3
        # healthy runs disagree by 0.2-0.5 % of the distance moved (8-bit gradient deltas; state rounds every 10 steps);
        # fp16 optimizer statistics or inexact zeros (cairn/peer/compression.py) made it 6-100 %
        assert disagreement < moved / 20, (disagreement, moved)

        _pull_verify_embed(swarm, tmp_path)
        _a_lone_peer_starts_from_the_latest_release(swarm)


def _a_lone_peer_starts_from_the_latest_release(swarm) -> None:
    """A distilled start makes the run `init = release`: a peer alone in the swarm (alice and bob left) pulls and verifies
    the latest release and starts from its weights (its saved state is that release), and trains on from there.
    (Its own test once; folded in here to spare the suite a second swarm's start-up: two minutes on two cores.)"""
    second = swarm.start_peer("second", "--wait-for-peers", "1", "--max-samples", "96")
    assert second.popen.wait(timeout=300) == 0, second.tail()
    resumed = swarm.summary("second")
    pulled = json.loads((swarm.peer_dir("second") / "release" / "manifest.json").read_text())["version"]
    # the latest release when it started (the coordinator may cut one more from alice's and bob's last steps meanwhile)
    versions = [version for (version,) in swarm.ledger("SELECT version FROM releases")]
    assert pulled in versions and pulled != "0.1.0", (pulled, versions)
    # its saved state (96 samples, no global update at target 512) is that release, not the start release 0.1.0
    start, released, kept = (
        _parameters(path)
        for path in (
            swarm.coordinator_dir / "releases" / "0.1.0",
            swarm.coordinator_dir / "releases" / pulled,
            swarm.peer_dir("second") / "state",
        )
    )
    assert resumed["epochs"] == 0, resumed
    assert np.linalg.norm(kept - released) < 0.05 * np.linalg.norm(released - start), (
        np.linalg.norm(kept - released),
        np.linalg.norm(released - start),
    )
    # and it trained from there: all 96 samples, on those weights (the check above). Its first single-batch loss is not
    # asserted any more: from a release 1-3 steps past the start one batch of 32 gave 2.98 and, in a CI run, 3.52, above
    # ln 32 = 3.47 (a barely trained start is confidently wrong on some batches); the weights are the deterministic check
    assert resumed["samples"] == 96 and math.isfinite(resumed["first_loss"]), resumed


def _check_dashboard(coordinator_dir: Path, screenshots: Path) -> None:
    from browser_util import chromium_available, serve_dashboard, visit_pages

    if not chromium_available():
        pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh --test installs it)")
    screenshots = Path(os.environ.get("CAIRN_SCREENSHOTS", screenshots))
    with serve_dashboard(coordinator_dir) as base:
        pages = visit_pages(
            [f"{base}/", f"{base}/contributors", f"{base}/convergence", f"{base}/releases"],
            screenshot_dir=screenshots,
            wait_for_api="/api/swarm",
            screenshot_prefix="swarm-",
        )
    for page in pages:
        assert page.status == 200 and not page.problems, (page.url, page.problems)
    leaderboard = pages[1].text
    assert "alice" in leaderboard and "bob" in leaderboard
    assert any(points > 1 for points in pages[2].chart_points), "the convergence charts have no data"


def _pull_verify_embed(swarm, tmp_path: Path) -> None:
    listed = subprocess.run(
        cairn("release", "list", swarm.repository_url, "--cache-dir", str(tmp_path / "trust")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert "0.1.0" in listed.stdout and "0.2.0" in listed.stdout
    installed = tmp_path / "installed"
    pulled = subprocess.run(
        cairn("release", "pull", swarm.repository_url, "--to", str(installed), "--cache-dir", str(tmp_path / "trust")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, pulled.stderr
    verified = subprocess.run(
        cairn("release", "verify", str(installed), "--cache-dir", str(tmp_path / "trust")),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stderr
    embedded = subprocess.run(
        cairn("embed", "--release", str(installed), "--dims", "64", "--cache-dir", str(tmp_path / "trust"), "a small dog", "a large cat"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    # the other promises, signed into the same manifest (cairn/coordinator/releaser.py)
    matryoshka = manifest["metrics"]["matryoshka"]
    assert matryoshka["goal"] == {"k95": manifest_width(installed) // 8}
    assert 0.0 < matryoshka["relational_prefix"]["8"] <= 1.0 and isinstance(matryoshka["goal_met"], bool)
    outside = manifest["metrics"]["outside"]
    assert 0.0 <= outside["relational"]["mutual_knn10"] <= 1.0 and outside["chance"]["mutual_knn10"] < 0.1


def manifest_width(release: Path) -> int:
    """K: the number of anchors in the release's landmark set."""
    return len(json.loads((release / "landmarks.json").read_text())["anchors"])


def _records(swarm) -> dict[str, tuple]:
    """The latest ledger record of each peer: name -> (samples, loss, shard, epoch, reported_at)."""
    rows = swarm.ledger(
        "SELECT p.display_name, r.samples, r.loss, r.shard, r.epoch, r.reported_at FROM records r "
        "JOIN peers p USING(public_id) WHERE r.id IN (SELECT MAX(id) FROM records GROUP BY public_id)"
    )
    return {name: (samples, loss, shard, epoch, at) for name, samples, loss, shard, epoch, at in rows}


@pytest.mark.timeout(1500)
def test_failures_kill_9_peer_late_joiner_and_coordinator_restart(tmp_path: Path, corpus_spec: str):
    """A SIGKILLed peer stalls the others at most about one averaging timeout and its shard is leased
    again once a newcomer joins; the newcomer starts from the swarm's state; a coordinator killed with -9 comes back
    with its ledger and releases intact and continues the version sequence while peers kept training."""
    with swarm_in(tmp_path, corpus_spec) as swarm:
        # three shards for three peers: with a newcomer in the dead peer's place, every shard is held again
        # failure handling, not compatibility: without the term's parent pulls and extra forward passes on this 2-core box.
        # Per-step rounds: the stall bound below is one averaging timeout per global step (DiLoCo's leave and join are
        # test_diloco_peers_share_the_outer_state_through_a_leave_and_a_join)
        swarm.init(
            "--averaging",
            "gradients",
            "--target-batch-size",
            "384",
            "--batch-size",
            "32",
            "--landmarks",
            "64",
            "--shards",
            "3",
            "--compat-weight",
            "0",
            "--no-outside-reference",
        )  # what releases report beyond the run's own suite is not under test here
        coordinator = swarm.start_coordinator("--release-every", "4", "--no-outside-reference")
        peers = {name: swarm.start_peer(name, "--wait-for-peers", "3") for name in ("ann", "ben", "cat")}
        wait_for(lambda: swarm.global_step() >= 3 and len(_records(swarm)) == 3, 600, 3, "three peers to train together")

        # -- SIGKILL a peer mid-round (the whole group: its hivemind daemons die with it)
        victim_shard = _records(swarm)["cat"][2]
        step_at_kill = swarm.global_step()
        peers["cat"].kill_group()
        averaging_timeout, poll = 10, 3
        # the survivors keep stepping: the next global step comes within the averaging timeout plus one
        # ordinary epoch (384 samples at >= 30 samples/s) plus the ledger's poll interval and slack
        wait_for(
            lambda: swarm.global_step() >= step_at_kill + 2,
            averaging_timeout + 2 * 13 + poll + 30,
            1,
            "the survivors to make progress after a peer was killed",
        )

        # -- a late joiner: once the dead peer's lease (8 s) expires its shard is free again. Either the newcomer
        # leases it, or a survivor that finished a pass over its own shard moves onto it (the least-read free
        # shard, cairn/peer/leases.py) and the newcomer takes the one it left: either way the three live peers
        # end up holding the three shards, the dead peer's among them
        step_at_join = swarm.global_step()
        late = swarm.start_peer("dan", "--wait-for-peers", "1")
        wait_for(lambda: "dan" in _records(swarm), 180, 2, "the late joiner's first record")
        live = ("ann", "ben", "dan")
        wait_for(
            lambda: sorted(_records(swarm)[name][2] for name in live) == [0, 1, 2],
            120,
            2,
            f"the live peers to hold all three shards, the dead peer's shard {victim_shard} among them",
            lambda: f"latest records: {_records(swarm)}",
        )

        # -- kill -9 the coordinator while peers train; restart it on the same workdir and address
        wait_for(lambda: swarm.ledger("SELECT version FROM releases"), 300, 3, "a first release")
        releases_before = [v for (v,) in swarm.ledger("SELECT version FROM releases ORDER BY created_at")]
        # credited + forfeited: a spot check after the restart may take a window's credit back on purpose (the ledger's
        # rule: in one CI run the late joiner's probe at epoch 40 claimed 0.914 against 1.058 recomputed, and its 352
        # credited samples were forfeited; reported under issue 12); what a kill -9 must not do is lose credit
        paid = "SELECT display_name, credited_samples + forfeited_samples FROM peers"
        credited_before = dict(swarm.ledger(paid))
        step_before = swarm.global_step()
        coordinator.kill_group()
        killed_at = time.time()
        time.sleep(15)  # peers train on without their coordinator
        swarm.start_coordinator("--release-every", "4", "--no-outside-reference")
        wait_for(
            lambda: len(swarm.ledger("SELECT version FROM releases")) > len(releases_before),
            600,
            3,
            "a new release after the coordinator restart",
        )
        steps_after_restart = [step for (step,) in swarm.ledger("SELECT global_step FROM swarm WHERE at > ?", killed_at)]
        assert max(steps_after_restart) > step_before, "the peers did not train while the coordinator was down"
        releases_after = [v for (v,) in swarm.ledger("SELECT version FROM releases ORDER BY created_at")]
        assert releases_after[: len(releases_before)] == releases_before  # nothing lost
        assert releases_after[len(releases_before)] == _next_minor(releases_before[-1])  # the sequence continues
        credited_after = dict(swarm.ledger(paid))
        assert all(credited_after[name] >= credited for name, credited in credited_before.items()), (credited_before, credited_after)
        listed = subprocess.run(
            cairn("release", "list", swarm.repository_url, "--cache-dir", str(tmp_path / "trust")),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert listed.returncode == 0 and all(version in listed.stdout for version in releases_after), listed.stdout + listed.stderr

        leaving = [peers["ann"], peers["ben"], late]
        for peer in leaving:  # all at once, so none steps on alone after the others left
            peer.popen.send_signal(15)
        for peer in leaving:
            assert peer.popen.wait(timeout=90) == 0, peer.tail()
        summaries = {name: swarm.summary(name) for name in ("ann", "ben", "dan")}
        # the peers that left at most one global step apart share the state up to that one update: a peer whose last
        # step found no group (the others had already left) applies its own gradients alone and ends one epoch ahead.
        # Three SIGTERMs at once ended at 41, 40 and 39 in one CI run (2026-12-03), so two at one epoch is not a given.
        # Measured: one epoch apart 0.019 x the distance moved (54 epochs: one AdamW step is about moved / epochs), the
        # same epoch 0.0; peers that do not share a state differ by about the distance moved
        epochs = {name: s["final_epoch"] for name, s in summaries.items()}
        close = [(a, b) for a, b in itertools.combinations(sorted(epochs), 2) if abs(epochs[a] - epochs[b]) <= 1]
        assert close, {name: (s["final_epoch"], s["rounds"]) for name, s in summaries.items()}
        params = {name: _parameters(swarm.peer_dir(name) / "state") for pair in close for name in pair}
        moved = np.abs(params[close[0][0]] - _initial_parameters(swarm)).mean()
        for a, b in close:
            # the bound at one epoch and why: test_two_peers_train_together_release_and_serve. One epoch apart, one lone
            # AdamW step: 0.019 and 0.058 x moved in two CI runs (2026-12-03; Adam's step does not shrink with the
            # batch, while the distance moved grows slower than the epochs), so a fifth of it there
            bound = moved / 20 if epochs[a] == epochs[b] else moved / 5
            # the message says how far, and with which groups each peer averaged (a split swarm counts every round a success)
            rounds = {name: (s["rounds"], s["group_sizes"], s["start_epoch"]) for name, s in summaries.items()}
            disagreement = np.abs(params[a] - params[b]).mean()
            assert disagreement < bound, (
                f"{a} (epoch {epochs[a]}) disagrees with {b} ({epochs[b]}): {disagreement / moved:.3f} x moved; {rounds}"
            )
        late_summary = summaries["dan"]
        # the newcomer loaded the swarm's state (at least the global step it joined at; the donor may be one behind)
        assert late_summary["start_epoch"] >= max(step_at_join - 1, 1), (step_at_join, late_summary)
        # and it trained from there: its opening batches' loss is below a fresh model's (the veterans' opening batches,
        # about each one's share of the first global step; a batch past it only lowers their mean). Means, not first
        # batches: single batches of 32 vary by ~1.4 between peers, and in one CI run (2026-12-04) the newcomer's first
        # batch (3.15) was above the veterans' two (2.85); by the means, locally, 2.56 against 3.12
        fresh = statistics.mean(summaries["ann"]["opening_losses"] + summaries["ben"]["opening_losses"])
        started = statistics.mean(late_summary["opening_losses"])
        assert started < fresh, (late_summary["opening_losses"], started, fresh)


def _next_minor(version: str) -> str:
    major, minor, _ = (int(part) for part in version.split("."))
    return f"{major}.{minor + 1}.0"


@pytest.mark.timeout(1500)
def test_swarm_learns_like_the_single_process_baseline_at_the_readme_defaults(tmp_path: Path):
    """The swarm that trained nothing (docs/benchmarks.md section 7), at the defaults of the README's main job: DiLoCo,
    an outer round every 128 global steps' worth of samples, on the embedded WordNet. A 2-peer swarm and the
    single-process trainer at equal samples and the inner step's batch both learn well below chance, and the swarm's
    shared state is within 5 % of the trainer's held-out loss. Both start from the run's start release and stay
    compatible with it (the swarm's parent while no other release exists; the trainer's --compat-with).

    On the code before the fix the swarm's loss sat at ln(batch) from global step 3: this fails there, and it fails on
    a swarm whose outer rounds do not reach the shared state (what peers keep, and what joiners and releases get)."""

    from cairn.coordinator.cli import COMPAT_WEIGHT
    from cairn.corpora import load_corpus
    from cairn.protocol.embedder import load_bundle
    from cairn.training.trainer import train
    from cairn.protocol.run_config import SwarmConfig, TrainingConfig
    from cairn.training.task import TrainingTask, reference_texts

    config, defaults = TrainingConfig(), SwarmConfig()  # the README's defaults: `cairn swarm` = coordinator init with no options
    assert defaults.averaging == "diloco", "the README's defaults changed: this test compares their swarm with one process"
    round_samples = defaults.samples_per_epoch  # 128 x 2,048 = 262,144 samples, all peers together
    # two and a half rounds between the two peers: the shared state they keep is that of the second outer round (a peer
    # that leaves waits for the round in flight and keeps the shared state, never its own inner progress)
    samples_per_peer = round_samples * 5 // 4
    corpus_spec = "wordnet"
    with swarm_in(tmp_path, corpus_spec) as swarm:
        # only the test's shard count, lease and timeout differ (swarm_util.Swarm.init); the outside reference only adds
        # to what releases report, and this run cuts none after the start
        swarm.init("--no-outside-reference")
        swarm.start_coordinator("--no-outside-reference")  # no --release-every: the start release stays the parent throughout
        peers = [swarm.start_peer(name, "--wait-for-peers", "2", "--max-samples", str(samples_per_peer)) for name in ("p", "q")]
        for peer in peers:
            assert peer.popen.wait(timeout=1200) == 0, peer.tail()
        start = swarm.coordinator_dir / "releases" / "0.1.0"
        summaries = {name: swarm.summary(name) for name in ("p", "q")}
        assert all(s["averaging"] == "diloco" and s["compat_parent"] == "0.1.0" for s in summaries.values()), summaries
        # the swarm reads the whole corpus, as the single process does: a peer that finished a pass over its shard moves
        # on to the least-read free one (two peers on four shards once read half the corpus, each its own half of it)
        assert all(s["shards_completed"] >= 1 and len(s["shards_read"]) >= 2 for s in summaries.values()), summaries
        assert set().union(*(s["shards_read"] for s in summaries.values())) == {0, 1, 2, 3}, summaries
        # both took part in outer rounds that went through, and the shared state is the second round's
        assert all(s["rounds"].get("success", 0) >= 1 for s in summaries.values()), summaries
        last = max(summaries, key=lambda name: summaries[name]["final_epoch"])
        rounds = summaries[last]["final_epoch"]
        assert rounds == 2, summaries
        swarm_state = swarm.peer_dir(last) / "state"

    # equal samples: what the shared state was trained on, two rounds' worth (the samples peers trained after the second
    # round closed never reached it); equal batch: DiLoCo's inner step is one update per batch, so is the trainer's
    samples = rounds * round_samples
    corpus = load_corpus(corpus_spec)
    heldout, batch = corpus.heldout[:1024], 128
    release = load_bundle(start, device="cpu")

    def heldout_loss(directory: Path) -> float:
        model = load_encoder(directory)
        task = TrainingTask(model, release.tokenizer, release.landmarks, reference_texts(corpus, config.reference_size), config)
        return task.eval_loss(heldout, batch_size=batch)

    baseline_dir = tmp_path / "baseline"
    train(
        corpus_spec,
        baseline_dir,
        config,
        max_samples=samples,
        accumulate=1,
        evaluate=False,
        show_progress=False,
        compat_with=start,
        compat_weight=COMPAT_WEIGHT,
    )
    start_loss, swarm_loss, baseline = heldout_loss(start), heldout_loss(swarm_state), heldout_loss(baseline_dir)
    # both learned from the start release. WordNet's held-out batches hold a lemma's senses side by side, so the
    # start's loss sits above chance (measured 9.59 against ln 128 = 4.85) and a collapsed encoder would score chance,
    # "better" than the start: the training loss says it did not collapse (chance there: ln of the batch of 1,024)
    assert baseline < start_loss - 0.5 and swarm_loss < start_loss - 0.5, (start_loss, swarm_loss, baseline)
    assert all(not s["collapsed"] and s["last_loss"] < 0.5 * math.log(config.batch_size) for s in summaries.values()), summaries
    # within 5 % of the single process (DiLoCo's claim; measured below it on shaped links, docs/benchmarks.md section
    # 10); far below it would mean the swarm's state saw more samples than counted here, or collapsed to chance
    assert 0.9 * baseline <= swarm_loss <= 1.05 * baseline, (swarm_loss, baseline, start_loss)


@pytest.mark.timeout(1200)
def test_cairn_swarm_runs_the_whole_network_learns_and_stops_cleanly(tmp_path: Path):
    """The README's main job at its defaults: `cairn swarm --peers 2` trains with both peers contributing, its loss
    falls well below chance, its releases beat the start release on held-out retrieval and sit far above chance on
    every suite task, and it stops everything it started (SIGTERM: the same path as Ctrl+C's clean shutdown)."""
    import sqlite3

    workdir = tmp_path / "swarm"
    # exactly the README's command (the embedded WordNet, 5 minutes), with more frequent releases
    process = subprocess.Popen(
        cairn("swarm", "--peers", "2", "--minutes", "5", "--workdir", str(workdir), "--release-every", "15"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=900)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
    assert process.returncode == 0, output[-3000:]
    assert "coordinator" in output and "peer-1" in output and "stopped" in output
    assert process_group_members(process.pid) == []
    db = sqlite3.connect(f"file:{workdir / 'coordinator' / 'ledger.sqlite'}?mode=ro", uri=True)
    rows = dict(db.execute("SELECT display_name, credited_samples FROM peers").fetchall())
    assert rows.get("peer-1", 0) > 0 and rows.get("peer-2", 0) > 0, rows
    losses = [loss for (loss,) in db.execute("SELECT mean_loss FROM swarm WHERE mean_loss IS NOT NULL ORDER BY at")]
    chance = math.log(1024)  # the default batch: InfoNCE over 1,024 in-batch candidates
    early, late = np.mean(losses[: max(1, len(losses) // 5)]), np.mean(losses[-max(1, len(losses) // 5) :])
    assert late < 0.6 * chance and late < early - 1.0, (early, late, chance)  # a falling loss, far from ln(batch)

    releases = sorted((workdir / "coordinator" / "releases").glob("0.*.0"), key=lambda p: int(p.name.split(".")[1]))
    assert len(releases) >= 2, releases  # the start release and at least one trained release
    start, latest = (json.loads((r / "manifest.json").read_text())["metrics"]["relational"]["full"] for r in (releases[0], releases[-1]))
    # far above chance on every task (chance: R@10 ~0.01 over the quick suite's ~860 lemmas, BBC 0.2, rank correlations 0)
    assert latest["gloss_lemma_r10"] > 0.2 and latest["bbc_probe_acc"] > 0.6, latest
    assert latest["simlex_spearman"] > 0.2 and latest["wordsim_spearman"] > 0.3, latest
    assert latest["gloss_lemma_r10"] > start["gloss_lemma_r10"] + 0.05, (start, latest)  # it learned beyond its start
    # and the manifest says, against the TF-IDF+SVD yardstick in the same (quick) suite mode, that it beats it where the
    # README promises (issue 11): held-out retrieval and the topic probe
    yardstick = json.loads((releases[-1] / "manifest.json").read_text())["metrics"]["yardstick"]
    assert yardstick["mode"] == "quick" and yardstick["beats"]["gloss_lemma_r10"] and yardstick["beats"]["bbc_probe_acc"], (
        latest,
        yardstick,
    )
    # and what a user gets from it works: the release loads through the public API (files checked against the manifest)
    # and its 64-coordinate Matryoshka prefix matches short definitions to their words: measured on three README-job
    # releases, 7-8 of 8 found first, matched cosine 0.51-0.54 against 0.05 for the others (one pair alone is too noisy).
    # On 2026-12-02 two runs' last three releases gave 8, 8, 8 (matched 0.57 -> 0.50) and 7, 6, 5 (0.54 -> 0.44, others
    # 0.015): these everyday pairs drift as the run trains on WordNet glosses, while held-out R@10 rose 0.26 -> 0.56.
    # Hence 5 of 8 (chance: 1) with the cosine gap, and the drift reported as a finding
    from cairn.releases import load_release

    definitions = [
        "a young dog",
        "a large body of salt water",
        "a portable computer",
        "a building where people live",
        "the money a person earns for work",
        "a feeling of great happiness",
        "a vehicle that flies through the air",
        "a doctor who operates on patients",
    ]
    words = ["puppy", "ocean", "laptop", "house", "salary", "joy", "airplane", "surgeon"]
    release = load_release(releases[-1], device="cpu")
    similarity = release.embed(definitions, dims=64) @ release.embed(words, dims=64).T
    assert similarity.shape == (8, 8), similarity.shape
    found_first = int((similarity.argmax(axis=1) == np.arange(8)).sum())
    matched, others = float(np.diag(similarity).mean()), float(similarity[~np.eye(8, dtype=bool)].mean())
    assert found_first >= 5 and matched > others + 0.25, (found_first, matched, others)


@pytest.mark.timeout(900)
def test_diloco_peers_share_the_outer_state_through_a_leave_and_a_join(tmp_path: Path, corpus_spec: str):
    """`--averaging diloco`: peers train their own copies between outer rounds, every outer round leaves them all on
    one shared state that has learned; a peer that leaves does not stop the others, and a newcomer starts from the
    shared (outer) state of the round it joins at, not from a fresh model."""
    with swarm_in(tmp_path, corpus_spec) as swarm:
        # an outer round every 8 x 256 samples: 32 inner steps of 32 per peer with two peers (a round much shorter than
        # hivemind's matchmaking would measure matchmaking, not DiLoCo)
        swarm.init(
            "--averaging",
            "diloco",
            "--outer-every",
            "8",
            "--target-batch-size",
            "256",
            "--batch-size",
            "32",
            "--landmarks",
            "64",
            "--shards",
            "3",
            "--compat-weight",
            "0",
            "--no-outside-reference",
        )
        # a release every outer round: the coordinator must be able to load the outer state an overlapped run shares
        swarm.start_coordinator("--release-every", "1", "--no-outside-reference")
        releases_at_start = len(swarm.ledger("SELECT version FROM releases"))  # the start release, when the init cut one
        peers = {name: swarm.start_peer(name, "--wait-for-peers", "2") for name in ("ann", "ben")}
        wait_for(lambda: swarm.global_step() >= 2 and {"ann", "ben"} <= set(_records(swarm)), 300, 2, "two outer rounds")

        # one leaves (SIGTERM, like Ctrl+C), one joins: the survivor keeps making outer rounds meanwhile
        peers["ben"].popen.send_signal(15)
        assert peers["ben"].popen.wait(timeout=90) == 0, peers["ben"].tail()
        step_at_join = swarm.global_step()
        late = swarm.start_peer("cat", "--wait-for-peers", "1")
        wait_for(lambda: _records(swarm).get("cat", (0,))[0] > 0, 240, 2, "the newcomer's first trained samples")
        step_with_cat = swarm.global_step()
        wait_for(lambda: swarm.global_step() >= step_with_cat + 2, 240, 2, "outer rounds with the newcomer")

        # the coordinator loaded the swarm's outer state and cut a release from it (in overlapped runs it could not:
        # hivemind's handler names differed, tests/test_diloco.py::test_the_overlapped_averagers_speak_hivemind_s_protocol)
        wait_for(lambda: len(swarm.ledger("SELECT version FROM releases")) > releases_at_start, 240, 3, "a release from the outer state")
        # the coordinator spot-checked the peers' probes against that state, and honest peers pass: the overlapped
        # peers' probes are taken on the outer parameters (before: on their inner ones, and both failed at epoch 3).
        # Waited for, not read once: a check needs a probe and the coordinator's load of the same step
        checks_sql = "SELECT public_id, epoch, claimed_loss, recomputed_loss, passed FROM spot_checks"
        checks = wait_for(lambda: swarm.ledger(checks_sql), 120, 3, "a spot check of a peer's probe")
        assert all(passed for *_, passed in checks), checks
        for peer in (peers["ann"], late):  # together, so neither steps on alone
            peer.popen.send_signal(15)
        for peer in (peers["ann"], late):
            assert peer.popen.wait(timeout=90) == 0, peer.tail()
        summaries = {name: swarm.summary(name) for name in ("ann", "ben", "cat")}
        assert all(s["averaging"] == "diloco" for s in summaries.values()), summaries
        # the newcomer took the outer state of the round it joined at (the donor may be one round behind)
        assert summaries["cat"]["start_epoch"] >= max(step_at_join - 1, 1), (step_at_join, summaries["cat"])
        # outer rounds were all-reduces of pseudo-gradients with the others (one may fail as a peer leaves mid-round)
        assert summaries["ann"]["rounds"]["success"] >= 2 and summaries["cat"]["rounds"]["success"] >= 1, summaries
        # no honest peer took another's honest answer for garbage: before the floor (cairn/peer/diloco.py
        # outer_round_scale), the newcomer's small first pseudo-gradient made it judge an honest reducer's average
        # "104x larger than ours", keep its own values for that slice and fail its spot check (CI, 2026-12-03)
        for process in (peers["ann"], peers["ben"], late):
            assert "larger than ours" not in process.log.read_text(errors="replace"), process.tail()
        # what the two last peers keep shares most of the training: far from where they started, and closer to each
        # other than to their start. Measured disagreement (mean |ann - cat| / mean distance moved), bimodal before the
        # floor: 0.05, 0.11 and 0.006 in three runs, 0.42 and 0.49 in two others (2026-12-02), where the two differed in
        # about a third of the coordinates (one reducer's slice of three: the newcomer had kept its own values there).
        # With the floor: 0.0051, 0.0049 and 0.0048 in three runs (2026-12-03). The bound, 10x that, fails on the old
        # bug's larger cases and on peers that do not share a state at all (they differ by about the distance moved)
        # A peer whose last round failed as the other left applied its own update and says so (`state_diverged`,
        # cairn/peer/state_sync.py): seen once with DiLoCo's 5 s matchmaking window (0.25 apart, the others' 0.005).
        # So does one whose round came back partly as its own values, or whose round in flight did not land before it
        # left. With the 5 s window a groupmate triggered 0.1 s earlier got BAD_GROUP_ID (the next round's matchmaking
        # overlapped the previous all-reduce: cairn/peer/deadlines.py LateGroupRegistration) and both peers
        # "succeeded" 0.061 and 0.165 apart (CI and a local run, 2026-12-04); with the wait: 0.0043, 0.0060, 0.0044
        ended_shared = not (summaries["ann"]["state_diverged"] or summaries["cat"]["state_diverged"])
        if ended_shared and summaries["ann"]["final_epoch"] == summaries["cat"]["final_epoch"]:
            ann, cat = (_parameters(swarm.peer_dir(name) / "state") for name in ("ann", "cat"))
            moved = np.abs(ann - _initial_parameters(swarm)).mean()
            assert moved > 0 and np.abs(ann - cat).mean() < 0.05 * moved, (np.abs(ann - cat).mean(), moved)
        # and it learned: the peers' losses fell from their start
        assert summaries["ann"]["last_loss"] < summaries["ann"]["first_loss"] - 0.3, summaries["ann"]
