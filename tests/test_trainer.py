"""The single-process trainer: outputs, resume from a checkpoint, refusing a changed run, and learning at all."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from protocol.corpora import load_corpus
from protocol.embedder import load_bundle
from protocol.errors import CairnError
from protocol.landmarks import LandmarkSet
from protocol.trainer import CHECKPOINT_FILE, RUN_FILE, train
from protocol.training import TrainingConfig, TrainingTask, batches, prepare_run, reference_texts

ADJECTIVES = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver", "golden", "tiny", "giant"]
NOUNS = ["fox", "dog", "cat", "horse", "river", "mountain", "castle", "garden", "engine", "violin", "forest", "island",
         "rocket", "teapot", "lantern", "harbor", "meadow", "bridge", "tower", "canyon"]
VERBS = ["sleeps", "runs", "sings", "glows", "waits", "drifts"]

CONFIG = TrainingConfig(landmarks=32, reference_size=64, batch_size=16, anchor_refresh_every=5,
                        objective=replace(TrainingConfig().objective, prefix_dims=(8, 16, 32)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The test machines are shared 2-core boxes: two torch threads contending with other jobs run ~20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> Path:
    """240 pairs ("red fox" <-> "the fox that is red sleeps near the castle"): learnable in ~100 steps of 16."""
    path = tmp_path_factory.mktemp("corpus") / "pairs.jsonl"
    rows = []
    for i, (adjective, noun) in enumerate((a, n) for a in ADJECTIVES for n in NOUNS):
        place = NOUNS[(i * 7 + 3) % len(NOUNS)]
        rows.append({"a": f"{adjective} {noun}", "b": f"the {noun} that is {adjective} {VERBS[i % len(VERBS)]} near the {place}"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def first_run(corpus_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = train(f"jsonl:{corpus_path}", out, CONFIG, max_samples=160, device="cpu", evaluate=False, show_progress=False)
    return out, result


def count_steps(monkeypatch) -> list[float]:
    """Spy on TrainingTask.loss: one entry (the loss) per training batch the trainer computes."""
    losses: list[float] = []
    original = TrainingTask.loss

    def spy(self, pairs):
        loss, parts = original(self, pairs)
        if self.model.training:
            losses.append(float(loss.detach()))
        return loss, parts

    monkeypatch.setattr(TrainingTask, "loss", spy)
    return losses


def test_first_run_writes_a_complete_bundle(first_run):
    out, result = first_run
    assert (result.steps, result.samples) == (10, 160)
    assert np.isfinite(result.final_loss) and result.seconds > 0
    for name in ("model.safetensors", "config.json", "tokenizer.json", "landmarks.json", "eval.json", CHECKPOINT_FILE, RUN_FILE):
        assert (out / name).exists(), name
    landmarks = LandmarkSet.load(out / "landmarks.json")
    assert landmarks.size == 32 and landmarks.stats is not None
    assert landmarks.digest == LandmarkSet.load(out / "run" / "landmarks.json").digest  # the run's own set, now calibrated
    assert json.loads((out / "eval.json").read_text())["training"]["steps"] == 10
    embedder = load_bundle(out, device="cpu")
    vectors = embedder.embed(["red fox", "the fox that is red"], dims=8)
    assert vectors.shape == (2, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_resume_continues_from_the_checkpoint(first_run, corpus_path, tmp_path, monkeypatch):
    """Resuming runs only the missing steps and ends exactly where one uninterrupted run ends."""
    out, _ = first_run
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    for path in out.rglob("*"):  # resume a copy, so other tests keep the 10-step run
        if path.is_file():
            (resumed_dir / path.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
            (resumed_dir / path.relative_to(out)).write_bytes(path.read_bytes())
    losses = count_steps(monkeypatch)
    resumed = train(f"jsonl:{corpus_path}", resumed_dir, CONFIG, max_samples=320, device="cpu", evaluate=False, show_progress=False)
    assert (resumed.steps, resumed.samples) == (20, 320)
    assert len(losses) == 10  # only the missing steps ran: it continued, it did not restart
    assert json.loads((resumed_dir / "eval.json").read_text())["training"]["samples"] == 320

    straight_dir = tmp_path / "straight"
    straight = train(f"jsonl:{corpus_path}", straight_dir, CONFIG, max_samples=320, device="cpu", evaluate=False, show_progress=False)
    assert (straight.steps, straight.samples) == (20, 320)
    resumed_weights, straight_weights = load_file(str(resumed_dir / "model.safetensors")), load_file(str(straight_dir / "model.safetensors"))
    assert resumed_weights.keys() == straight_weights.keys()
    for name in straight_weights:  # same data order, optimizer state and dropout RNG -> identical weights
        np.testing.assert_array_equal(resumed_weights[name], straight_weights[name], err_msg=name)

    # a finished run asked for no more samples does no more steps
    losses.clear()
    again = train(f"jsonl:{corpus_path}", resumed_dir, CONFIG, max_samples=320, device="cpu", evaluate=False, show_progress=False)
    assert (again.steps, again.samples, len(losses)) == (20, 320, 0)


@pytest.mark.parametrize("change", [{"lr": 5e-4}, {"landmarks": 24}, {"batch_size": 8}, {"seed": 1}])
def test_resume_with_a_changed_config_is_refused(first_run, corpus_path, change):
    out, _ = first_run
    before = (out / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CairnError, match="different corpus or configuration"):
        train(f"jsonl:{corpus_path}", out, replace(CONFIG, **change), max_samples=320, device="cpu", evaluate=False, show_progress=False)
    assert (out / CHECKPOINT_FILE).read_bytes() == before


def test_resume_with_a_changed_corpus_is_refused(first_run, corpus_path, tmp_path):
    out, _ = first_run
    other = tmp_path / "other.jsonl"
    other.write_text(corpus_path.read_text().replace("castle", "palace"))
    with pytest.raises(CairnError, match="different corpus"):
        train(f"jsonl:{other}", out, CONFIG, max_samples=320, device="cpu", evaluate=False, show_progress=False)


def test_a_stopping_rule_is_required(corpus_path, tmp_path):
    with pytest.raises(CairnError, match="max-samples"):
        train(f"jsonl:{corpus_path}", tmp_path, CONFIG, device="cpu", evaluate=False, show_progress=False)


def test_unreadable_checkpoint_is_a_clear_error(first_run, corpus_path, tmp_path):
    out, _ = first_run
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run").mkdir()
    for name in (RUN_FILE, "run/tokenizer.json", "run/landmarks.json"):
        (broken / name).write_bytes((out / name).read_bytes())
    (broken / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CairnError, match="checkpoint"):
        train(f"jsonl:{corpus_path}", broken, CONFIG, max_samples=320, device="cpu", evaluate=False, show_progress=False)


def test_loss_decreases_over_100_steps(corpus_path, tmp_path, monkeypatch):
    losses = count_steps(monkeypatch)
    result = train(f"jsonl:{corpus_path}", tmp_path, CONFIG, max_samples=1600, device="cpu", evaluate=False, show_progress=False)
    assert result.steps == 100 and len(losses) == 100
    first, last = np.mean(losses[:10]), np.mean(losses[-10:])
    assert last < 0.5 * first, (first, last)
    # it learned the pairing, not the batches: held-out pairs (never trained on) find their partner
    heldout = load_corpus(f"jsonl:{corpus_path}").heldout
    embedder = load_bundle(tmp_path, device="cpu")
    left, right = embedder.embed([p.a for p in heldout]), embedder.embed([p.b for p in heldout])
    top1 = np.mean(np.argmax(left @ right.T, axis=1) == np.arange(len(heldout)))
    assert len(heldout) >= 16 and top1 >= 0.5, top1  # chance is 1/len(heldout)


def test_prepare_run_is_deterministic(corpus_path):
    """Every peer derives the coordinator's tokenizer and landmark set from the corpus alone."""
    corpus = load_corpus(f"jsonl:{corpus_path}")
    (tokenizer_a, landmarks_a), (tokenizer_b, landmarks_b) = prepare_run(corpus, CONFIG), prepare_run(corpus, CONFIG)
    assert tokenizer_a.digest() == tokenizer_b.digest()
    assert landmarks_a.digest == landmarks_b.digest and landmarks_a.size == 32
    assert reference_texts(corpus, 64) == reference_texts(corpus, 64) and len(reference_texts(corpus, 64)) == 64


def test_batches_wrap_around_and_resume_from_an_offset():
    pairs = list(range(10))
    stream = batches(pairs, 4)
    assert [next(stream) for _ in range(3)] == [(4, [0, 1, 2, 3]), (8, [4, 5, 6, 7]), (2, [8, 9, 0, 1])]
    assert next(batches(pairs, 4, start=8)) == (2, [8, 9, 0, 1])
