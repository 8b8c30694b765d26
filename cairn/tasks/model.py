"""Task models: small classifiers on a release's relational embedding that survive release upgrades.

A task model is trained on the first `dims` relational coordinates (L2-normalised, as `embed(texts, dims)`
returns them) of one release, and can be applied to any release whose landmark set starts with the same
`dims` anchors: relational coordinate k always means "similarity to anchor k", whatever the encoder.

On disk a task model is a directory with two files, neither of which can run code when read:
  task.json           metadata: kind, dims, labels, the release and landmark set it was trained on
                      (version, digest, and the first `dims` anchor texts), training summary
  weights.safetensors the parameters as plain float32 arrays (layer{i}.weight, layer{i}.bias)
Prediction is a numpy forward pass over those arrays; sklearn is used only to fit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cairn.protocol.errors import CairnError, LandmarkError
from cairn.protocol.fsutil import atomic_write_bytes
from cairn.protocol.landmarks import LandmarkSet, l2_normalise

FORMAT = "cairn-task/1"
META_FILE = "task.json"
WEIGHTS_FILE = "weights.safetensors"
KINDS = ("logreg", "mlp")
MAX_META_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 256 << 20
_SHA256_HEX = frozenset("0123456789abcdef")


def anchors_digest(anchors: Sequence[str]) -> str:
    """SHA-256 over the canonical JSON of an ordered anchor list (the prefix a task model depends on)."""
    return hashlib.sha256(json.dumps(list(anchors), ensure_ascii=False, separators=(",", ":")).encode("utf-8")).hexdigest()


def check_prefix_compatible(
    landmarks: LandmarkSet, anchors: Sequence[str], version: int, digest: str, *, owner: str, made: str, remedy: str
) -> None:
    """The append-only rule, for anything built on the first len(anchors) coordinates of landmark set (version, digest).

    `landmarks` is accepted when it is that set, or starts with the same anchors in the same order (coordinate k
    still means "similarity to anchor k"); otherwise one LandmarkError line names the mismatch and the `remedy`.
    Task models (`owner="task model"`) and search indices (`cairn.index`) share it, so the rule cannot drift.
    """
    if landmarks.digest == digest:
        return
    dims = len(anchors)
    trained = f"landmark set v{version} ({digest[:12]}…)"
    offered = f"landmark set v{landmarks.version} ({landmarks.digest[:12]}…)"
    if landmarks.size < dims:
        raise LandmarkError(
            f"{owner} uses {dims} coordinates of {trained}, but this release's {offered} has only {landmarks.size} anchors; {remedy}"
        )
    if anchors_digest(landmarks.anchors[:dims]) != anchors_digest(anchors):
        first = next(i for i, (a, b) in enumerate(zip(landmarks.anchors, anchors)) if a != b)
        raise LandmarkError(
            f"{owner} was {made} on {trained}, and this release's {offered} differs at anchor {first + 1} "
            f"of the first {dims} (not an append-only successor); {remedy}"
        )


@dataclass
class TaskModel:
    """A fitted classifier over relational prefixes; `weights` alternate weight (in x out) and bias (out)."""

    kind: str
    dims: int
    labels: tuple[str, ...]
    weights: list[np.ndarray]
    anchors: tuple[str, ...]  # the first `dims` anchors of the landmark set it was trained on
    landmarks_version: int
    landmarks_digest: str
    release: dict[str, Any] = field(default_factory=dict)  # version (None for a bundle), encoder_sha256, path
    training: dict[str, Any] = field(default_factory=dict)  # examples, columns, source, train accuracy

    def __post_init__(self) -> None:
        self.labels = tuple(self.labels)
        self.anchors = tuple(self.anchors)
        self.weights = [np.asarray(w, dtype=np.float32) for w in self.weights]
        _check_structure(self)

    @property
    def anchors_digest(self) -> str:
        return anchors_digest(self.anchors)

    # ---- compatibility ------------------------------------------------------------------------

    def check_compatible(self, landmarks: LandmarkSet) -> None:
        """Raise a one-line LandmarkError unless `landmarks` starts with this model's `dims` anchors."""
        check_prefix_compatible(
            landmarks,
            self.anchors,
            self.landmarks_version,
            self.landmarks_digest,
            owner="task model",
            made="trained",
            remedy="retrain the task model on this release",
        )

    # ---- inference ----------------------------------------------------------------------------

    def features(self, relational_vectors: np.ndarray) -> np.ndarray:
        """The model's input from full relational vectors: first `dims` coordinates, rows L2-normalised."""
        vectors = np.asarray(relational_vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] < self.dims:
            raise CairnError(f"task model needs vectors with at least {self.dims} coordinates, got shape {vectors.shape}")
        return l2_normalise(vectors[:, : self.dims])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Class scores (n, len(labels)): softmax probabilities, from a numpy forward pass."""
        x = np.asarray(features, dtype=np.float32)
        layers = [(self.weights[i], self.weights[i + 1]) for i in range(0, len(self.weights), 2)]
        for weight, bias in layers[:-1]:
            x = np.maximum(x @ weight + bias, 0.0)  # MLP hidden layers: ReLU
        weight, bias = layers[-1]
        logits = x @ weight + bias
        if logits.shape[1] == 1:  # binary: one logit for labels[1]
            logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict_features(self, features: np.ndarray) -> list[str]:
        return [self.labels[i] for i in np.argmax(self.scores(features), axis=1)]

    def predict(self, embedder, texts: Sequence[str]) -> list[str]:
        """Labels for texts embedded by `embedder` (any release with a compatible landmark set)."""
        self.check_compatible(embedder.landmarks)
        return self.predict_features(self.features(embedder.relational(list(texts))))

    # ---- storage ------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "dims": self.dims,
            "labels": list(self.labels),
            "layers": len(self.weights) // 2,
            "landmarks": {
                "version": self.landmarks_version,
                "digest": self.landmarks_digest,
                "anchors": list(self.anchors),
                "anchors_digest": self.anchors_digest,
            },
            "release": self.release,
            "training": self.training,
        }

    def save(self, directory: Path | str) -> Path:
        from safetensors.numpy import save

        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise CairnError(f"{directory}: exists and is not a directory")
        tensors = {f"layer{i // 2}.{'weight' if i % 2 == 0 else 'bias'}": np.ascontiguousarray(w) for i, w in enumerate(self.weights)}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(tensors, metadata={"format": FORMAT}))
        atomic_write_bytes(directory / META_FILE, json.dumps(self.to_json(), indent=1, ensure_ascii=False, allow_nan=False).encode("utf-8"))
        return directory


def load_task_model(directory: Path | str, landmarks: LandmarkSet | None = None) -> TaskModel:
    """Read a saved task model; if `landmarks` is given, refuse (LandmarkError) an incompatible landmark set."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    directory = Path(directory)
    if not directory.is_dir():
        raise CairnError(f"{directory}: not a task model directory (expected {META_FILE} and {WEIGHTS_FILE})")
    document = _read_json(directory / META_FILE)
    raw = _read_bytes(directory / WEIGHTS_FILE, MAX_WEIGHTS_BYTES)
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, OSError) as error:
        raise CairnError(
            f"{directory / WEIGHTS_FILE}: not a valid safetensors file ({str(error).splitlines()[0] if str(error) else 'unreadable'})"
        ) from None
    where = str(directory / META_FILE)
    layers = _field(document, "layers", int, where)
    names = [f"layer{i}.{part}" for i in range(layers) for part in ("weight", "bias")]
    if set(tensors) != set(names):
        raise CairnError(f"{directory / WEIGHTS_FILE}: expected tensors {', '.join(names)}, found {', '.join(sorted(tensors)) or 'none'}")
    marks = _field(document, "landmarks", dict, where)
    try:
        model = TaskModel(
            kind=_field(document, "kind", str, where),
            dims=_field(document, "dims", int, where),
            labels=tuple(_strings(_field(document, "labels", list, where), f"{where}: labels")),
            weights=[tensors[name] for name in names],
            anchors=tuple(_strings(_field(marks, "anchors", list, f"{where}: landmarks"), f"{where}: landmarks.anchors")),
            landmarks_version=_field(marks, "version", int, f"{where}: landmarks"),
            landmarks_digest=_field(marks, "digest", str, f"{where}: landmarks"),
            release=_field(document, "release", dict, where),
            training=_field(document, "training", dict, where),
        )
    except CairnError as error:
        raise CairnError(f"{directory}: {error}") from None
    if marks.get("anchors_digest") != model.anchors_digest:
        raise CairnError(f"{where}: anchors_digest does not match its anchors (edited file)")
    if landmarks is not None:
        model.check_compatible(landmarks)
    return model


# ---- fitting --------------------------------------------------------------------------------


def fit_head(
    features: np.ndarray, labels: Sequence[str], kind: str = "logreg", seed: int = 0, hidden: int = 128, max_iter: int | None = None
) -> tuple[tuple[str, ...], list[np.ndarray]]:
    """Fit logistic regression (C=1, lbfgs) or a one-hidden-layer ReLU MLP; returns (labels, weights)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    if kind not in KINDS:
        raise CairnError(f"unknown task model kind {kind!r}; use {' or '.join(KINDS)}")
    y = np.asarray([str(label) for label in labels])
    classes = np.unique(y)
    if len(classes) < 2:
        raise CairnError(f"training data has {len(classes)} distinct label(s); a classifier needs at least 2")
    x = np.asarray(features, dtype=np.float64)
    # single-threaded BLAS: lbfgs does many tiny products that threads only slow down (see evaluation.metrics)
    with threadpool_limits(limits=1, user_api="blas"):
        if kind == "logreg":
            fitted = LogisticRegression(max_iter=max_iter or 2000, random_state=seed).fit(x, y)
            weights = [fitted.coef_.T, fitted.intercept_]
        else:
            fitted = MLPClassifier(
                hidden_layer_sizes=(hidden,), max_iter=max_iter or 500, early_stopping=len(y) >= 50, random_state=seed
            ).fit(x, y)
            weights = [w for pair in zip(fitted.coefs_, fitted.intercepts_) for w in pair]
    return tuple(str(c) for c in fitted.classes_), [np.asarray(w, dtype=np.float32) for w in weights]


# ---- checks ---------------------------------------------------------------------------------


def _check_structure(model: TaskModel) -> None:
    if model.kind not in KINDS:
        raise CairnError(f"unknown task model kind {model.kind!r}; expected {' or '.join(KINDS)}")
    if isinstance(model.dims, bool) or not isinstance(model.dims, int) or model.dims < 1:
        raise CairnError(f"dims must be a positive integer, got {model.dims!r}")
    if len(model.anchors) != model.dims:
        raise CairnError(f"{len(model.anchors)} anchors recorded for {model.dims} dims")
    if len(model.labels) < 2 or len(set(model.labels)) != len(model.labels):
        raise CairnError("labels must be at least 2 distinct strings")
    if isinstance(model.landmarks_version, bool) or not isinstance(model.landmarks_version, int) or model.landmarks_version < 1:
        raise CairnError(f"landmark set version must be a positive integer, got {model.landmarks_version!r}")
    if len(model.landmarks_digest) != 64 or not set(model.landmarks_digest) <= _SHA256_HEX:
        raise CairnError("landmark digest must be 64 lower-case hex digits")
    expected_layers = 1 if model.kind == "logreg" else 2
    if len(model.weights) != 2 * expected_layers:
        raise CairnError(f"a {model.kind} model has {expected_layers} layer(s), found {len(model.weights) // 2}")
    width = model.dims
    for i in range(0, len(model.weights), 2):
        weight, bias = model.weights[i], model.weights[i + 1]
        if weight.ndim != 2 or bias.ndim != 1 or weight.shape[0] != width or weight.shape[1] != bias.shape[0]:
            raise CairnError(f"layer {i // 2}: weight {weight.shape} and bias {bias.shape} do not fit an input of width {width}")
        if not (np.isfinite(weight).all() and np.isfinite(bias).all()):
            raise CairnError(f"layer {i // 2}: parameters must be finite")
        width = weight.shape[1]
    outputs = 1 if len(model.labels) == 2 else len(model.labels)
    if width != outputs:
        raise CairnError(f"the output layer has {width} units for {len(model.labels)} labels (expected {outputs})")


def _read_bytes(path: Path, limit: int) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise CairnError(f"{path}: larger than {limit >> 20} MiB")
        return path.read_bytes()
    except FileNotFoundError:
        raise CairnError(f"{path}: missing (not a task model directory?)") from None
    except IsADirectoryError:
        raise CairnError(f"{path}: is a directory") from None
    except PermissionError:
        raise CairnError(f"{path}: permission denied") from None


def _read_json(path: Path) -> dict:
    raw = _read_bytes(path, MAX_META_BYTES)

    def no_constants(name: str) -> float:
        raise ValueError(f"{name} is not allowed")

    try:
        document = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
    except UnicodeDecodeError as error:
        raise CairnError(f"{path}: not UTF-8 (invalid byte at offset {error.start})") from None
    except ValueError:
        raise CairnError(f"{path}: not valid JSON") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise CairnError(f"{path}: unknown format {found!r}, expected {FORMAT!r}")
    return document


def _field(document: dict, key: str, kind: type, where: str) -> Any:
    value = document.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CairnError(f"{where}: {key!r} must be {'an' if kind is int else 'a'} {kind.__name__}")
    return value


def _strings(values: list, where: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise CairnError(f"{where} must be strings")
    return values


def accuracy_and_macro_f1(truth: Sequence[str], predicted: Sequence[str]) -> tuple[float, float]:
    """Accuracy and macro-F1 over the labels present in either list (a label never predicted scores F1 0)."""
    from sklearn.metrics import f1_score

    truth, predicted = list(truth), list(predicted)
    if not truth:
        return math.nan, math.nan
    accuracy = float(np.mean([t == p for t, p in zip(truth, predicted)]))
    return accuracy, float(f1_score(truth, predicted, average="macro", zero_division=0))
