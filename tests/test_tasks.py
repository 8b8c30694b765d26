"""Task models: train on a release's relational embedding, save safely, reuse on compatible releases, refuse others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cairn.corpora import load_corpus
from cairn.protocol.embedder import calibrate, load_bundle
from cairn.protocol.errors import CairnError, CorpusError, LandmarkError
from cairn.protocol.landmarks import LandmarkSet
from cairn.releases.files import file_sha256
from cairn.releases.layout import REQUIRED_FILES
from cairn.releases.manifest import parse_manifest, write_manifest
from cairn.tasks import (
    evaluate_task_model,
    fit_head,
    load_task_model,
    open_release,
    read_labelled,
    train_task_model,
)
from cairn.tasks.model import META_FILE, WEIGHTS_FILE, TaskModel
from cairn.training.trainer import train
from cairn.protocol.run_config import TrainingConfig
from cairn.training.task import reference_texts

REPO = Path(__file__).resolve().parent.parent
CONFIG = TrainingConfig(
    landmarks=32,
    reference_size=64,
    batch_size=16,
    anchor_refresh_every=5,
    objective=replace(TrainingConfig().objective, prefix_dims=(8, 16, 32)),
)
GROUPS = {
    "animal": ["fox", "dog", "cat", "horse", "owl", "wolf", "mouse", "goat"],
    "place": ["river", "mountain", "castle", "garden", "forest", "island", "harbor", "meadow"],
    "machine": ["engine", "rocket", "tractor", "robot", "drill", "pump", "crane", "turbine"],
}
ADJECTIVES = ["red", "blue", "green", "old", "tiny", "giant", "quiet", "bright"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: one torch thread on the shared 2-core boxes


def labelled_rows() -> list[dict]:
    rows = []
    for label, nouns in GROUPS.items():
        for i, noun in enumerate(nouns):
            for j, adjective in enumerate(ADJECTIVES[:4]):
                rows.append({"text": f"the {adjective} {noun} {'is here' if (i + j) % 2 else 'stands there'}", "topic": label})
    return rows


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A tiny trained bundle (32 landmarks) on pairs built from the same words as the labelled data."""
    root = tmp_path_factory.mktemp("task-bundle")
    corpus = root / "pairs.jsonl"
    lines = []
    for label, nouns in GROUPS.items():
        for noun in nouns:
            for adjective in ADJECTIVES:
                lines.append({"a": f"{adjective} {noun}", "b": f"a {noun} that is {adjective}, a kind of {label}"})
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = root / "bundle"
    train(f"jsonl:{corpus}", out, CONFIG, max_samples=320, device="cpu", evaluate=False, show_progress=False)
    return out


@pytest.fixture(scope="module")
def data_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("task-data")
    rows = labelled_rows()
    jsonl = root / "topics.jsonl"
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))
    csv_path = root / "topics.csv"
    csv_path.write_text("text,topic\n" + "".join(f'"{row["text"]}",{row["topic"]}\n' for row in rows))
    return {"jsonl": jsonl, "csv": csv_path}


def extended_copy(bundle: Path, target: Path, new_anchors: list[str] | None = None, reorder: bool = False) -> Path:
    """A copy of `bundle` whose landmark set is v2 = v1 + new anchors (append-only) or v1 reordered (incompatible)."""
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("checkpoint.pt", "run", "run.json", "eval.json"))
    embedder = load_bundle(bundle, "cpu")
    landmarks = LandmarkSet(1, list(embedder.landmarks.anchors))
    if reorder:
        landmarks = LandmarkSet(2, landmarks.anchors[1:] + landmarks.anchors[:1])
    else:
        landmarks = landmarks.extend(new_anchors or [])
    # the trainer's reference sample: the shared anchors keep exactly their standardisation stats
    reference = reference_texts(load_corpus(f"jsonl:{bundle.parent / 'pairs.jsonl'}"), CONFIG.reference_size, CONFIG.seed)
    calibrated = calibrate(embedder.model, embedder.tokenizer, landmarks, reference)
    calibrated.save(target / "landmarks.json")
    return target


def make_release(bundle: Path, target: Path, version: str) -> Path:
    target.mkdir(parents=True)
    files = {}
    for name in REQUIRED_FILES:
        shutil.copy(bundle / name, target / name)
        sha256, length = file_sha256(target / name)
        files[name] = {"sha256": sha256, "length": length}
    landmarks = json.loads((target / "landmarks.json").read_text())
    document = {
        "version": version,
        "parent_version": None,
        "run_id": "task-test",
        "global_step": 20,
        "landmarks_version": landmarks["version"],
        "landmarks_digest": landmarks["digest"],
        "files": files,
    }
    write_manifest(parse_manifest(json.dumps(document).encode()), target / "manifest.json")
    return target


# ---- Python API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_train_save_load_predict_round_trip(bundle, data_files, tmp_path, kind):
    release = open_release(bundle, "cpu")
    data = read_labelled(data_files["jsonl"], "text", "topic")
    model = train_task_model(release, data.texts, data.labels, dims=16, kind=kind)
    assert model.dims == 16 and sorted(model.labels) == sorted(GROUPS)
    assert model.anchors == tuple(release.landmarks.anchors[:16])
    assert model.landmarks_digest == release.landmarks.digest and model.release["version"] is None
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == sorted([WEIGHTS_FILE, META_FILE])
    loaded = load_task_model(tmp_path / "model", release.landmarks)
    assert loaded.to_json() == model.to_json()
    assert loaded.predict(release.embedder, data.texts) == model.predict(release.embedder, data.texts)
    report = evaluate_task_model(loaded, release, data.texts, data.labels)
    assert report["accuracy"] > 0.45, report  # 3 balanced classes: chance is 1/3 (the encoder saw 320 pairs)
    assert 0 <= report["macro_f1"] <= 1 and report["examples"] == len(data) and report["same_encoder"] is True


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
@pytest.mark.parametrize("classes", [2, 4])
def test_numpy_forward_matches_sklearn(kind, classes):
    """Prediction from the stored arrays is sklearn's prediction (binary: one logit; multiclass: softmax)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(classes)
    centres = rng.normal(size=(classes, 8))
    y = rng.integers(0, classes, 300)
    x = (centres[y] + rng.normal(scale=1.5, size=(300, 8))).astype(np.float32)
    labels, weights = fit_head(x, [f"c{v}" for v in y], kind=kind)
    model = TaskModel(kind, 8, labels, weights, tuple(f"anchor {i}" for i in range(8)), 1, "0" * 64)
    if kind == "logreg":
        reference = LogisticRegression(max_iter=2000, random_state=0).fit(x.astype(np.float64), [f"c{v}" for v in y])
    else:
        reference = MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, early_stopping=True, random_state=0).fit(
            x.astype(np.float64), [f"c{v}" for v in y]
        )
    assert model.predict_features(x) == list(reference.predict(x.astype(np.float64)))
    np.testing.assert_allclose(model.scores(x), reference.predict_proba(x.astype(np.float64)), atol=1e-4)


def test_csv_and_jsonl_give_the_same_examples(data_files):
    a, b = read_labelled(data_files["csv"], "text", "topic"), read_labelled(data_files["jsonl"], "text", "topic")
    assert (a.texts, a.labels) == (b.texts, b.labels) and len(a) == 96


def test_integer_labels_match_between_formats(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"t": "x", "y": 1}\n{"t": "z", "y": "2"}\n')
    (tmp_path / "a.csv").write_text("t,y\nx,1\nz,2\n")
    assert read_labelled(tmp_path / "a.jsonl", "t", "y").labels == read_labelled(tmp_path / "a.csv", "t", "y").labels == ("1", "2")


def test_model_transfers_to_an_append_only_successor(bundle, data_files, tmp_path):
    """Landmark set v2 = v1 + new anchors: the model loads and predicts exactly as on v1 (same encoder)."""
    data = read_labelled(data_files["jsonl"], "text", "topic")
    base = open_release(bundle, "cpu")
    model = train_task_model(base, data.texts, data.labels, dims=32)
    successor = open_release(extended_copy(bundle, tmp_path / "v2", new_anchors=["a brand new anchor", "another new anchor"]), "cpu")
    assert successor.landmarks.version == 2 and successor.landmarks.size == 34
    model.save(tmp_path / "model")
    loaded = load_task_model(tmp_path / "model", successor.landmarks)
    before = evaluate_task_model(model, base, data.texts, data.labels)
    after = evaluate_task_model(loaded, successor, data.texts, data.labels)
    assert after["accuracy"] == pytest.approx(before["accuracy"], abs=1e-9)
    np.testing.assert_allclose(
        successor.embedder.relational(data.texts)[:, :32], base.embedder.relational(data.texts), rtol=1e-4, atol=1e-4
    )
    assert after["landmarks"].startswith("v2") and after["trained_on_landmarks"].startswith("v1")


def test_model_refuses_an_incompatible_landmark_set(bundle, data_files, tmp_path):
    data = read_labelled(data_files["jsonl"], "text", "topic")
    model = train_task_model(open_release(bundle, "cpu"), data.texts, data.labels, dims=8)
    model.save(tmp_path / "model")
    reordered = open_release(extended_copy(bundle, tmp_path / "reordered", reorder=True), "cpu")
    with pytest.raises(LandmarkError) as raised:
        load_task_model(tmp_path / "model", reordered.landmarks)
    message = str(raised.value)
    assert "\n" not in message and "differs at anchor 1" in message and "retrain" in message
    with pytest.raises(LandmarkError):
        evaluate_task_model(model, reordered, data.texts, data.labels)
    with pytest.raises(LandmarkError):
        model.predict(reordered.embedder, ["the red fox"])
    # a landmark set shorter than the model's dims
    wide = train_task_model(open_release(bundle, "cpu"), data.texts, data.labels, dims=32)
    short = LandmarkSet(1, list(model.anchors))
    with pytest.raises(LandmarkError, match="has only 8 anchors"):
        wide.check_compatible(short)
    # but a model using only the first 8 coordinates is fine with those 8 anchors
    model.check_compatible(short)


def test_release_directory_records_its_version(bundle, data_files, tmp_path):
    release = open_release(make_release(bundle, tmp_path / "release", "1.2.0"), "cpu")
    data = read_labelled(data_files["jsonl"], "text", "topic")
    model = train_task_model(release, data.texts, data.labels, dims=8)
    assert model.release["version"] == "1.2.0" and len(model.release["encoder_sha256"]) == 64
    (tmp_path / "release" / "config.json").write_text("{}")  # tampered: the manifest check refuses it
    with pytest.raises(CairnError, match="does not match the manifest"):
        open_release(tmp_path / "release", "cpu")


def test_load_refuses_malformed_model_directories(bundle, data_files, tmp_path):
    data = read_labelled(data_files["jsonl"], "text", "topic")
    model = train_task_model(open_release(bundle, "cpu"), data.texts, data.labels, dims=8)
    directory = model.save(tmp_path / "model")
    meta = json.loads((directory / META_FILE).read_text())

    def broken(change) -> str:
        target = tmp_path / f"broken{len(list(tmp_path.iterdir()))}"
        shutil.copytree(directory, target)
        change(target)
        with pytest.raises(CairnError) as raised:
            load_task_model(target)
        assert "\n" not in str(raised.value)
        return str(raised.value)

    assert "not a task model directory" in str(pytest.raises(CairnError, load_task_model, tmp_path / "absent").value)
    assert "missing" in broken(lambda t: (t / WEIGHTS_FILE).unlink())
    assert "not a valid safetensors" in broken(lambda t: (t / WEIGHTS_FILE).write_bytes(b"\x80\x04 pickle?"))
    assert "not valid JSON" in broken(lambda t: (t / META_FILE).write_text("{"))
    assert "not UTF-8" in broken(lambda t: (t / META_FILE).write_bytes(b"\xff\xfe"))
    assert "unknown format" in broken(lambda t: (t / META_FILE).write_text(json.dumps({**meta, "format": "pickle"})))
    assert "anchors_digest" in broken(
        lambda t: (t / META_FILE).write_text(
            json.dumps({**meta, "landmarks": {**meta["landmarks"], "anchors": ["x"] + meta["landmarks"]["anchors"][1:]}})
        )
    )
    assert "do not fit" in broken(
        lambda t: (t / META_FILE).write_text(
            json.dumps({**meta, "dims": 9, "landmarks": {**meta["landmarks"], "anchors": meta["landmarks"]["anchors"] + ["y"]}})
        )
    )
    assert "kind" in broken(lambda t: (t / META_FILE).write_text(json.dumps({**meta, "kind": "__import__('os')"})))


def test_bad_training_input(bundle):
    release = open_release(bundle, "cpu")
    with pytest.raises(CairnError, match="at least 2"):
        train_task_model(release, ["a", "b"], ["x", "x"])
    with pytest.raises(CairnError, match="dims must be between 1 and 32"):
        train_task_model(release, ["a", "b"], ["x", "y"], dims=33)
    with pytest.raises(CairnError, match="unknown task model kind"):
        train_task_model(release, ["a", "b"], ["x", "y"], kind="forest")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "no such file"),
        ("bad.jsonl", b'{"text": "a", "topic": "x"}\n{"text": "b"}\n', "bad.jsonl:2: missing column(s) 'topic' (found 'text')"),
        ("bad.csv", b"text,label\na,x\n", "missing column(s) 'topic' in the header (found 'text', 'label')"),
        ("latin1.csv", "text,topic\ncaf\xe9,x\n".encode("latin-1"), "not UTF-8 (invalid byte at offset 14)"),
        ("latin1.jsonl", b'{"text": "caf\xe9", "topic": "x"}\n', "not UTF-8"),
        ("empty.jsonl", b"\n", "no rows"),
        ("notjson.jsonl", b'{"text": \n', "notjson.jsonl:1: not valid JSON"),
        ("ragged.csv", b"text,topic\na,x,extra\n", "ragged.csv:2: 3 fields, the header has 2"),
        ("data.xlsx", b"PK", "unknown data format '.xlsx'"),
        ("nulllabel.jsonl", b'{"text": "a", "topic": null}\n', "must be a string or an integer"),
        ("emptytext.jsonl", b'{"text": " ", "topic": "x"}\n', "must be a non-empty string"),
    ],
)
def test_read_labelled_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CorpusError) as raised:
        read_labelled(path, "text", "topic")
    assert message in str(raised.value) and "\n" not in str(raised.value)


# ---- CLI ----------------------------------------------------------------------------------------


def cairn(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cairn.cli", "task", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_train_then_eval_on_another_release(bundle, data_files, tmp_path):
    successor = extended_copy(bundle, tmp_path / "v2", new_anchors=["yet another anchor"])
    trained = cairn(
        "train",
        "--release",
        str(bundle),
        "--data",
        str(data_files["csv"]),
        "--text-column",
        "text",
        "--label-column",
        "topic",
        "--dims",
        "16",
        "--kind",
        "logreg",
        "--out",
        str(tmp_path / "model"),
        "--device",
        "cpu",
    )
    assert trained.returncode == 0, trained.stderr
    assert "logreg task model on 16 dims, 3 labels, 96 examples" in trained.stdout
    evaluated = cairn(
        "eval", "--release", str(successor), "--model", str(tmp_path / "model"), "--data", str(data_files["jsonl"]), "--device", "cpu"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads(evaluated.stdout)
    assert report["examples"] == 96 and report["accuracy"] > 0.45 and report["landmarks"].startswith("v2")
    predicted = cairn("predict", "--release", str(bundle), "--model", str(tmp_path / "model"), "--device", "cpu", "the red fox is here")
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout)["label"] in GROUPS


def test_cli_errors_are_one_line(bundle, data_files, tmp_path):
    (tmp_path / "latin1.csv").write_bytes("text,topic\ncaf\xe9,x\n".encode("latin-1"))
    cases = [
        (["train", "--release", str(bundle), "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "m")], "no such file"),
        (
            [
                "train",
                "--release",
                str(bundle),
                "--data",
                str(data_files["jsonl"]),
                "--label-column",
                "category",
                "--out",
                str(tmp_path / "m"),
            ],
            "missing column(s) 'category'",
        ),
        (
            [
                "train",
                "--release",
                str(bundle),
                "--data",
                str(tmp_path / "latin1.csv"),
                "--label-column",
                "topic",
                "--out",
                str(tmp_path / "m"),
            ],
            "not UTF-8",
        ),
        (
            [
                "train",
                "--release",
                str(tmp_path / "no-release"),
                "--data",
                str(data_files["jsonl"]),
                "--label-column",
                "topic",
                "--out",
                str(tmp_path / "m"),
            ],
            "not a release or bundle directory",
        ),
        (
            ["eval", "--release", str(bundle), "--model", str(tmp_path / "no-model"), "--data", str(data_files["jsonl"])],
            "not a task model directory",
        ),
    ]
    for args, message in cases:
        result = cairn(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_cli_refuses_incompatible_release(bundle, data_files, tmp_path):
    data = read_labelled(data_files["jsonl"], "text", "topic")
    train_task_model(
        open_release(bundle, "cpu"), data.texts, data.labels, dims=8, training_info={"text_column": "text", "label_column": "topic"}
    ).save(tmp_path / "model")
    reordered = extended_copy(bundle, tmp_path / "reordered", reorder=True)
    result = cairn(
        "eval", "--release", str(reordered), "--model", str(tmp_path / "model"), "--data", str(data_files["jsonl"]), "--device", "cpu"
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "differs at anchor 1" in lines[0], result.stderr
