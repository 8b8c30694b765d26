"""Train and evaluate task models on a release (or a trained bundle) directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cairn.protocol.errors import CairnError
from cairn.tasks.model import TaskModel, accuracy_and_macro_f1, fit_head


@dataclass
class Release:
    """An embedder plus what a task model records about where its vectors came from."""

    embedder: Any  # cairn.protocol.embedder.Embedder
    info: dict[str, Any]  # version (None for a bundle without manifest), encoder_sha256, path

    @property
    def landmarks(self):
        return self.embedder.landmarks


def open_release(directory: Path | str, device: str = "auto") -> Release:
    """Load an installed release (checked against its manifest) or a bundle written by `cairn train`."""
    from cairn.protocol.embedder import load_bundle

    directory = Path(directory)
    if not directory.is_dir():
        raise CairnError(f"{directory}: not a release or bundle directory")
    if (directory / "manifest.json").exists():
        from cairn.releases.manifest import check_release_dir

        manifest = check_release_dir(directory)  # hashes every file, the weights included, against the manifest
        embedder = load_bundle(directory, device)
        version = str(manifest.version)
        encoder_sha256 = manifest.files["model.safetensors"].sha256
    else:
        from cairn.releases.files import file_sha256

        embedder = load_bundle(directory, device)
        version = None
        encoder_sha256, _ = file_sha256(directory / "model.safetensors")
    return Release(embedder, {"version": version, "encoder_sha256": encoder_sha256, "path": str(directory)})


def _as_release(release: Release | Any) -> Release:
    """Accept a Release or a bare Embedder (then the release is unnamed)."""
    if isinstance(release, Release):
        return release
    return Release(release, {"version": None, "encoder_sha256": None, "path": None})


def train_task_model(
    release: Release | Any,
    texts: Sequence[str],
    labels: Sequence[str],
    dims: int | None = None,
    kind: str = "logreg",
    seed: int = 0,
    training_info: dict[str, Any] | None = None,
) -> TaskModel:
    """Fit a task model on the first `dims` relational coordinates (all K if None) of `release`'s embeddings."""
    release = _as_release(release)
    landmarks = release.landmarks
    dims = landmarks.size if dims is None else dims
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= landmarks.size:
        raise CairnError(f"dims must be between 1 and {landmarks.size} (the release's landmark count), got {dims}")
    if len(texts) != len(labels):
        raise CairnError(f"{len(texts)} texts but {len(labels)} labels")
    labels = [str(label) for label in labels]
    features = _features(release, texts, dims)
    names, weights = fit_head(features, labels, kind=kind, seed=seed)
    model = TaskModel(
        kind=kind,
        dims=dims,
        labels=names,
        weights=weights,
        anchors=tuple(landmarks.anchors[:dims]),
        landmarks_version=landmarks.version,
        landmarks_digest=landmarks.digest,
        release=dict(release.info),
        training={"examples": len(texts), "seed": seed, **(training_info or {})},
    )
    accuracy, macro_f1 = accuracy_and_macro_f1(labels, model.predict_features(features))
    model.training.update(train_accuracy=round(accuracy, 6), train_macro_f1=round(macro_f1, 6))
    return model


def evaluate_task_model(model: TaskModel, release: Release | Any, texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy and macro-F1 of `model` on texts embedded by `release` (refused if its landmarks are incompatible)."""
    release = _as_release(release)
    model.check_compatible(release.landmarks)
    if len(texts) != len(labels):
        raise CairnError(f"{len(texts)} texts but {len(labels)} labels")
    truth = [str(label) for label in labels]
    predicted = model.predict_features(_features(release, texts, model.dims))
    accuracy, macro_f1 = accuracy_and_macro_f1(truth, predicted)
    known = set(model.labels)
    trained_sha, now_sha = model.release.get("encoder_sha256"), release.info.get("encoder_sha256")
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "examples": len(truth),
        "unknown_labels": sum(label not in known for label in truth),
        "dims": model.dims,
        "kind": model.kind,
        "release": release.info.get("version"),
        "trained_on_release": model.release.get("version"),
        "same_encoder": None if trained_sha is None or now_sha is None else trained_sha == now_sha,
        "landmarks": f"v{release.landmarks.version} {release.landmarks.digest[:12]}",
        "trained_on_landmarks": f"v{model.landmarks_version} {model.landmarks_digest[:12]}",
    }


def _features(release: Release, texts: Sequence[str], dims: int):
    from cairn.protocol.landmarks import prefix

    if not texts:
        raise CairnError("no texts to embed")
    return prefix(release.embedder.relational(list(texts)), dims)
