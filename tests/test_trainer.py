"""The single-process trainer: outputs, resume from a checkpoint, refusing a changed run, learning at all, and the
cross-run stability options (init seed, data seed, shard, landmark override) that keep one tokenizer and landmark set."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file

from cairn.cli import cli

from cairn.corpora import load_corpus
from cairn.protocol.embedder import load_bundle
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import LandmarkSet
from cairn.training.trainer import CHECKPOINT_FILE, RUN_FILE, train, training_pairs
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import TrainingTask, batches, prepare_run, reference_texts

ADJECTIVES = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white", "silver", "golden", "tiny", "giant"]
NOUNS = [
    "fox",
    "dog",
    "cat",
    "horse",
    "river",
    "mountain",
    "castle",
    "garden",
    "engine",
    "violin",
    "forest",
    "island",
    "rocket",
    "teapot",
    "lantern",
    "harbor",
    "meadow",
    "bridge",
    "tower",
    "canyon",
]
VERBS = ["sleeps", "runs", "sings", "glows", "waits", "drifts"]

CONFIG = TrainingConfig(
    landmarks=32,
    reference_size=64,
    batch_size=16,
    anchor_refresh_every=5,
    objective=replace(TrainingConfig().objective, prefix_dims=(8, 16, 32)),
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread on the shared 2-core boxes


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

    def spy(self, pairs, **options):
        loss, parts = original(self, pairs, **options)
        if self.model.training:
            losses.append(float(loss.detach()))
        return loss, parts

    monkeypatch.setattr(TrainingTask, "loss", spy)
    return losses


def test_first_run_writes_a_complete_bundle(first_run):
    out, result = first_run
    assert (result.steps, result.samples) == (10, 160)
    assert np.isfinite(result.final_loss) and result.seconds > 0
    assert len(result.recent_losses) == 10 and result.recent_losses[-1] == result.final_loss
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
    resumed_weights, straight_weights = (
        load_file(str(resumed_dir / "model.safetensors")),
        load_file(str(straight_dir / "model.safetensors")),
    )
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


# ---- cross-run stability: --init-seed, --data-seed, --shard, a landmark override ----------------


def run(corpus_path: Path, out: Path, max_samples: int, **options):
    return train(f"jsonl:{corpus_path}", out, CONFIG, max_samples=max_samples, device="cpu", evaluate=False, show_progress=False, **options)


def weights(out: Path) -> dict[str, np.ndarray]:
    return load_file(str(out / "model.safetensors"))


def identical(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)


def record_batches(monkeypatch) -> list[list[tuple[str, str]]]:
    """Spy on TrainingTask.loss: the (a, b) texts of every training batch, in order."""
    seen: list[list[tuple[str, str]]] = []
    original = TrainingTask.loss

    def spy(self, pairs):
        if self.model.training:
            seen.append([(p.a, p.b) for p in pairs])
        return original(self, pairs)

    monkeypatch.setattr(TrainingTask, "loss", spy)
    return seen


def test_init_seed_changes_the_weights_but_not_the_tokenizer_landmarks_or_reference(first_run, corpus_path, tmp_path, monkeypatch):
    out0, _ = first_run  # init seed = config.seed = 0
    references: list[list[str]] = []
    original_init = TrainingTask.__init__

    def spy_init(self, model, tokenizer, landmarks, reference, config, *rest):
        references.append(list(reference))
        original_init(self, model, tokenizer, landmarks, reference, config, *rest)

    monkeypatch.setattr(TrainingTask, "__init__", spy_init)
    out1 = tmp_path / "seed1"
    result = run(corpus_path, out1, 160, init_seed=1)
    assert (result.steps, result.samples) == (10, 160)
    # the run's tokenizer, landmark set and reference texts are those of config.seed
    assert (out1 / "tokenizer.json").read_bytes() == (out0 / "tokenizer.json").read_bytes()
    assert (out1 / "run" / "landmarks.json").read_bytes() == (out0 / "run" / "landmarks.json").read_bytes()
    assert LandmarkSet.load(out1 / "landmarks.json").digest == LandmarkSet.load(out0 / "landmarks.json").digest
    assert references == [reference_texts(load_corpus(f"jsonl:{corpus_path}"), CONFIG.reference_size, CONFIG.seed)]
    # ... but not the weights, initial or final
    assert not identical(weights(out1), weights(out0))
    start0, start1 = tmp_path / "start0", tmp_path / "start1"
    assert run(corpus_path, start0, 0).steps == 0 and run(corpus_path, start1, 0, init_seed=1).steps == 0
    initial0, initial1 = weights(start0), weights(start1)
    drawn = [name for name in initial0 if np.ptp(initial0[name]) > 0]  # random tensors (biases and norms start constant)
    assert drawn and all(not np.array_equal(initial0[name], initial1[name]) for name in drawn), "init seed ignored"
    # recorded where a reader of the run looks
    assert json.loads((out1 / RUN_FILE).read_text())["init_seed"] == 1
    training = json.loads((out1 / "eval.json").read_text())["training"]
    assert (training["init_seed"], training["data_seed"], training["shard"]) == (1, None, None)
    assert json.loads((out0 / "eval.json").read_text())["training"]["init_seed"] == CONFIG.seed


def test_shards_train_on_disjoint_pairs(corpus_path, tmp_path, monkeypatch):
    corpus = load_corpus(f"jsonl:{corpus_path}")
    seen = record_batches(monkeypatch)
    texts: list[set] = []
    for index in (0, 1):
        shard = {(p.a, p.b) for p in corpus.shard(index, 2)}
        seen.clear()
        result = run(corpus_path, tmp_path / f"shard{index}", -(-len(shard) // 16) * 16, shard=(index, 2))  # one pass, wrapping
        texts.append({pair for batch in seen for pair in batch})
        assert texts[-1] == shard and result.samples >= len(shard)
        assert json.loads((tmp_path / f"shard{index}" / "eval.json").read_text())["training"]["shard"] == [index, 2]
    assert not texts[0] & texts[1]
    assert texts[0] | texts[1] == {(p.a, p.b) for p in corpus.train}
    # every shard still uses the whole corpus's tokenizer and landmark set
    assert (tmp_path / "shard0" / "run" / "landmarks.json").read_bytes() == (tmp_path / "shard1" / "run" / "landmarks.json").read_bytes()
    assert (tmp_path / "shard0" / "tokenizer.json").read_bytes() == (tmp_path / "shard1" / "tokenizer.json").read_bytes()


def test_data_seed_shuffles_the_pairs_before_batching(corpus_path, tmp_path, monkeypatch):
    corpus = load_corpus(f"jsonl:{corpus_path}")
    shuffled = training_pairs(corpus, data_seed=3)
    assert shuffled == training_pairs(corpus, data_seed=3) and sorted(map(repr, shuffled)) == sorted(map(repr, corpus.train))
    assert shuffled != corpus.train and training_pairs(corpus) == corpus.train  # no data seed: the corpus order
    assert training_pairs(corpus, 3, (1, 2)) != corpus.shard(1, 2) and sorted(map(repr, training_pairs(corpus, 3, (1, 2)))) == sorted(
        map(repr, corpus.shard(1, 2))
    )
    seen = record_batches(monkeypatch)
    run(corpus_path, tmp_path, 32, data_seed=3)
    assert seen == [[(p.a, p.b) for p in shuffled[:16]], [(p.a, p.b) for p in shuffled[16:32]]]


def test_same_seeds_give_identical_weights_and_a_resume_continues_the_same_pair_list(corpus_path, tmp_path, monkeypatch):
    options = {"init_seed": 1, "data_seed": 2, "shard": (1, 2)}
    first, second = run(corpus_path, tmp_path / "a", 160, **options), run(corpus_path, tmp_path / "b", 160, **options)
    assert (first.steps, second.steps) == (10, 10)  # 160 samples > the shard's 110 pairs: the pair list wraps around
    assert identical(weights(tmp_path / "a"), weights(tmp_path / "b"))
    run(corpus_path, tmp_path / "c", 160, **{**options, "data_seed": 3})
    assert not identical(weights(tmp_path / "a"), weights(tmp_path / "c"))  # another pair order, other weights
    # stopped halfway and resumed: the offset indexes the same shuffled shard, so it ends where the straight run ends
    losses = count_steps(monkeypatch)
    run(corpus_path, tmp_path / "resumed", 80, **options)
    resumed = run(corpus_path, tmp_path / "resumed", 160, **options)
    assert (resumed.steps, resumed.samples, len(losses)) == (10, 160, 10)
    assert identical(weights(tmp_path / "resumed"), weights(tmp_path / "a"))


@pytest.mark.parametrize("value", ["2/2", "0/0", "-1/2", "3/-1", "1", "a/b", "1/2/3", ""])
def test_a_bad_shard_is_a_one_line_usage_error(corpus_path, tmp_path, value):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--corpus",
            f"jsonl:{corpus_path}",
            "--out",
            str(out),
            "--max-samples",
            "16",
            "--device",
            "cpu",
            "--no-eval",
            "--shard",
            value,
        ],
    )
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--shard" in errors[0], result.output
    assert not out.exists()  # refused before anything was prepared


@pytest.mark.parametrize("shard", [(2, 2), (0, 0), (-1, 2)])
def test_a_bad_shard_is_refused_by_the_api_too(corpus_path, tmp_path, shard):
    with pytest.raises(CairnError, match="shard"):
        run(corpus_path, tmp_path / "out", 16, shard=shard)
    assert not (tmp_path / "out").exists()


def test_cli_passes_the_seeds_and_shard(corpus_path, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--corpus",
            f"jsonl:{corpus_path}",
            "--out",
            str(out),
            "--max-samples",
            "32",
            "--batch-size",
            "16",
            "--landmarks",
            "32",
            "--device",
            "cpu",
            "--no-eval",
            "--init-seed",
            "3",
            "--data-seed",
            "4",
            "--shard",
            "1/2",
        ],
    )
    assert result.exit_code == 0, result.output
    training = json.loads((out / "eval.json").read_text())["training"]
    assert (training["samples"], training["init_seed"], training["data_seed"], training["shard"]) == (32, 3, 4, [1, 2])
    recorded = json.loads((out / RUN_FILE).read_text())
    assert (recorded["init_seed"], recorded["data_seed"], recorded["shard"], recorded["config"]["seed"]) == (3, 4, [1, 2], 0)


def other_landmarks(corpus_path: Path) -> LandmarkSet:
    return prepare_run(load_corpus(f"jsonl:{corpus_path}"), replace(CONFIG, seed=5))[1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"init_seed": 1}, "init_seed: 0 -> 1"),
        ({"data_seed": 0}, "data_seed: null -> 0"),
        ({"shard": (0, 2)}, "shard: null -> [0, 2]"),
        ({"landmarks": "other"}, "landmarks_override"),
    ],
)
def test_resume_with_other_seeds_shard_or_landmarks_is_refused(first_run, corpus_path, change, message):
    out, _ = first_run
    if "landmarks" in change:
        change = {"landmarks": other_landmarks(corpus_path)}
    before = (out / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(CairnError, match="different corpus or configuration") as refused:
        run(corpus_path, out, 320, **change)
    assert message in str(refused.value) and "use a new --out directory" in str(refused.value)
    assert (out / CHECKPOINT_FILE).read_bytes() == before


def test_resume_with_the_same_seeds_spelled_out_or_from_an_older_run_json(first_run, corpus_path, tmp_path, monkeypatch):
    """--init-seed equal to --seed is the default; a run.json written before the seeds were recorded resumes as before."""
    out, _ = first_run
    old = tmp_path / "old"
    for path in out.rglob("*"):
        if path.is_file():
            (old / path.relative_to(out)).parent.mkdir(parents=True, exist_ok=True)
            (old / path.relative_to(out)).write_bytes(path.read_bytes())
    recorded = json.loads((old / RUN_FILE).read_text())
    (old / RUN_FILE).write_text(json.dumps({key: recorded[key] for key in ("corpus", "corpus_digest", "config")}))
    losses = count_steps(monkeypatch)
    assert run(corpus_path, old, 160, init_seed=CONFIG.seed).steps == 10 and not losses  # nothing left to do, and not refused
    with pytest.raises(CairnError, match="data_seed"):
        run(corpus_path, old, 160, data_seed=1)


def test_a_landmark_override_replaces_the_run_set_and_is_recorded(first_run, corpus_path, tmp_path):
    landmarks = other_landmarks(corpus_path)
    out0, _ = first_run
    assert landmarks.digest != LandmarkSet.load(out0 / "run" / "landmarks.json").digest
    run(corpus_path, tmp_path, 32, landmarks=landmarks)
    assert LandmarkSet.load(tmp_path / "run" / "landmarks.json").digest == landmarks.digest
    assert LandmarkSet.load(tmp_path / "landmarks.json").digest == landmarks.digest  # the bundle is calibrated on it
    assert json.loads((tmp_path / RUN_FILE).read_text())["landmarks_override"] == landmarks.digest
    assert (tmp_path / "tokenizer.json").read_bytes() == (out0 / "tokenizer.json").read_bytes()
    assert run(corpus_path, tmp_path, 32, landmarks=landmarks).steps == 2  # resumes with the same override
    with pytest.raises(CairnError, match="landmarks_override"):
        run(corpus_path, tmp_path, 32)  # ... but not without it


def copy_run(source: Path, target: Path) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            (target / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
            (target / path.relative_to(source)).write_bytes(path.read_bytes())
    return target


def test_compat_with_the_previous_release_keeps_its_relational_vectors(first_run, corpus_path, tmp_path, monkeypatch):
    """Resuming a run to its next release with --compat-with its previous bundle stays closer to that bundle's vectors."""
    from cairn.tasks.measures import row_cosine

    out, _ = first_run
    parent = copy_run(out, tmp_path / "parent")  # "release N": the 160-sample bundle
    texts = [row["b"] for row in map(json.loads, corpus_path.read_text().splitlines())][:120]
    before = load_bundle(parent, "cpu").relational(texts)
    plain = train(
        f"jsonl:{corpus_path}",
        copy_run(out, tmp_path / "plain"),
        CONFIG,
        max_samples=800,
        device="cpu",
        evaluate=False,
        show_progress=False,
    )
    drifts: list[float] = []
    original = TrainingTask.loss

    def spy(self, pairs, **options):
        loss, parts = original(self, pairs, **options)
        drifts.append(parts.get("compat", float("nan")))
        return loss, parts

    monkeypatch.setattr(TrainingTask, "loss", spy)
    kept = train(
        f"jsonl:{corpus_path}",
        copy_run(out, tmp_path / "kept"),
        CONFIG,
        max_samples=800,
        device="cpu",
        evaluate=False,
        show_progress=False,
        compat_with=parent,
        compat_weight=10.0,
    )
    assert plain.samples == kept.samples == 800 and len(drifts) == 40 and all(np.isfinite(drifts))
    plain_cos = row_cosine(before, load_bundle(tmp_path / "plain", "cpu").relational(texts))
    kept_cos = row_cosine(before, load_bundle(tmp_path / "kept", "cpu").relational(texts))
    assert kept_cos > plain_cos + 0.03, (kept_cos, plain_cos)  # measured here: 0.43 vs 0.35
    training = json.loads((tmp_path / "kept" / "eval.json").read_text())["training"]
    assert training["compat_with"] == str(parent) and training["compat_weight"] == 10.0


def test_compat_with_a_missing_directory_is_a_usage_error(corpus_path, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--corpus",
            f"jsonl:{corpus_path}",
            "--out",
            str(tmp_path / "run"),
            "--max-samples",
            "16",
            "--compat-with",
            str(tmp_path / "nowhere"),
        ],
    )
    assert result.exit_code == 2 and "--compat-with" in result.output and "Traceback" not in result.output
