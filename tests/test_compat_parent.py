"""A peer's compatibility parent follows the coordinator's latest release: switch on a new version, keep the
current one on errors, clean up the old download. The coordinator RPC and the TUF pull are faked here (the
two-peer end-to-end test in test_swarm.py runs them for real)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cairn.peer import compat_parent, run_setup
from cairn.peer.compat_parent import ParentTracker
from cairn.protocol.embedder import load_bundle
from cairn.training.trainer import train
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import TrainingTask, reference_texts

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = TrainingConfig(
    landmarks=16,
    reference_size=32,
    batch_size=8,
    anchor_refresh_every=5,
    objective=replace(TrainingConfig().objective, prefix_dims=(8, 16), compat_weight=1.0),
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("bundle")
    rows = [{"a": f"word{i}", "b": f"a sentence about word{i} and word{i + 1}"} for i in range(80)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = f"jsonl:{root / 'pairs.jsonl'}"
    train(corpus, root / "run", CONFIG, max_samples=16, device="cpu", evaluate=False, show_progress=False)
    return root / "run", corpus


def make_task(bundle_dir: Path, corpus: str) -> TrainingTask:
    from cairn.corpora import load_corpus

    embedder = load_bundle(bundle_dir, "cpu")
    return TrainingTask(
        embedder.model, embedder.tokenizer, embedder.landmarks, reference_texts(load_corpus(corpus), CONFIG.reference_size), CONFIG
    )


def test_the_parent_follows_new_releases_and_survives_errors(bundle, tmp_path, monkeypatch):
    bundle_dir, corpus = bundle
    task = make_task(bundle_dir, corpus)
    announced = {"version": "", "fail": False}
    pulls: list[str] = []

    def latest(dht, coordinator):
        if announced["fail"]:
            raise ConnectionError("coordinator restarting")
        return announced["version"], "http://127.0.0.1:1"

    def pull(url, version, destination, workdir):
        pulls.append(version)
        shutil.copytree(bundle_dir, destination)
        return destination

    monkeypatch.setattr(run_setup, "latest_release", latest)
    monkeypatch.setattr(run_setup, "pull_release", pull)
    tracker = ParentTracker(None, "coordinator", tmp_path, torch.device("cpu"), task, check_every_s=0.0)  # as run_peer passes it

    assert not tracker.maybe_refresh(wait=True) and task.parent is None  # no release yet: the term stays off
    announced["version"] = "0.1.0"
    assert tracker.maybe_refresh(wait=True) and tracker.version == "0.1.0" and task.parent is not None
    first = task.parent
    assert not tracker.maybe_refresh(wait=True) and pulls == ["0.1.0"]  # the same version is not pulled again
    announced["fail"] = True
    assert not tracker.maybe_refresh(wait=True) and task.parent is first  # errors keep the current parent
    announced.update(version="0.2.0", fail=False)
    assert tracker.maybe_refresh(wait=True) and task.parent is not first and pulls == ["0.1.0", "0.2.0"]
    assert not (tmp_path / compat_parent.PARENTS_DIR / "0.1.0").exists() and (tmp_path / compat_parent.PARENTS_DIR / "0.2.0").is_dir()

    loss, parts = task.loss(task_pairs(corpus))
    assert "compat" in parts and parts["compat"] >= 0.0


def test_checks_are_throttled(bundle, tmp_path, monkeypatch):
    bundle_dir, corpus = bundle
    calls: list[int] = []
    monkeypatch.setattr(run_setup, "latest_release", lambda dht, coordinator: calls.append(1) or ("", ""))
    tracker = ParentTracker(None, "coordinator", tmp_path, "cpu", make_task(bundle_dir, corpus), check_every_s=3600.0)
    tracker.maybe_refresh(wait=True)
    tracker.maybe_refresh(wait=True)
    assert calls == [1]


def test_a_slow_coordinator_does_not_stall_the_training_loop(bundle, tmp_path, monkeypatch):
    """The check runs in a thread: maybe_refresh returns at once while the coordinator takes its time."""
    import threading
    import time

    bundle_dir, corpus = bundle
    release = threading.Event()

    def slow(dht, coordinator):
        release.wait(10)
        return "0.1.0", "http://127.0.0.1:1"

    monkeypatch.setattr(run_setup, "latest_release", slow)
    monkeypatch.setattr(run_setup, "pull_release", lambda url, version, destination, workdir: shutil.copytree(bundle_dir, destination))
    task = make_task(bundle_dir, corpus)
    tracker = ParentTracker(None, "coordinator", tmp_path, "cpu", task, check_every_s=0.0)
    started = time.monotonic()
    assert not tracker.maybe_refresh() and time.monotonic() - started < 1.0 and task.parent is None
    release.set()
    tracker._worker.join(10)
    assert tracker.maybe_refresh() and tracker.version == "0.1.0" and task.parent is not None


def test_a_zero_compat_weight_never_holds_a_parent(bundle):
    bundle_dir, corpus = bundle
    embedder = load_bundle(bundle_dir, "cpu")
    off = replace(CONFIG, objective=replace(CONFIG.objective, compat_weight=0.0))
    from cairn.training.task import ParentRelease

    task = TrainingTask(embedder.model, embedder.tokenizer, embedder.landmarks, ["x"], off, ParentRelease(embedder))
    assert task.parent is None
    assert "compat" not in task.loss(task_pairs(corpus))[1]


def task_pairs(corpus: str):
    from cairn.corpora import load_corpus

    return load_corpus(corpus).train[:8]
