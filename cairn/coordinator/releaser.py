"""Cut a release: calibrate, evaluate and compare the averaged state, then sign and publish it.

The steps, in order, each checkable on its own:
1. calibrate the landmark statistics of this encoder on the run's reference sample;
2. write the bundle (weights, config, tokenizer, landmarks) into a staging directory;
3. evaluate it: the quick suite; the compatibility report against the parent release and the one
   before it; Matryoshka prefixes against a random landmark order and PCA-k of the absolute vector;
   mutual kNN with the outside reference encoder (cairn.evaluation.promises);
4. write the manifest (hashes of every file), move the directory into place, publish it to TUF.
Before any of it, the state must pass the release gate (issue 12: any peer can serve the state the
coordinator loads): finite parameters, and a held-out loss no worse than the last release's beyond
GATE_TOLERANCE. The manifest records the gate it passed.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass

import numpy as np
import torch

from cairn.evaluation.compatibility import EmbedFn, compatibility_report
from cairn.corpora import PairCorpus
from cairn.protocol.embedder import Embedder, calibrate, load_bundle, save_bundle
from cairn.protocol.encoder import TextEncoder
from cairn.protocol.errors import CairnError, LandmarkError
from cairn.evaluation.promises import ALIGNMENT_K, alignment_texts, matryoshka_report, outside_report
from cairn.evaluation.data import Articles
from cairn.protocol.landmarks import LandmarkSet, relational
from cairn.releases.files import file_sha256
from cairn.releases.manifest import FileEntry, Manifest, read_manifest, write_manifest
from cairn.releases.version import ReleaseVersion
from cairn.protocol.run_config import RunConfig
from cairn.protocol.tokenizer import TextTokenizer

from cairn.coordinator.ledger import Ledger
from cairn.coordinator.outside_reference import reference_vectors
from cairn.network.state_gate import GATE_PAIRS
from cairn.evaluation.yardstick import against_yardstick, yardstick_scores
from cairn.protocol.workdir import Workdir

PROBE_PER_TOPIC = 60  # BBC articles per topic for compatibility and Matryoshka (300 in all)
# relative rise of the held-out loss (on GATE_PAIRS pairs) over the last release's that still passes (noise, a run's drift)
GATE_TOLERANCE = 0.10


class ReleaseRefused(CairnError):
    """The averaged state failed the release gate: nothing is signed, the coordinator keeps serving."""


def state_is_finite(model: TextEncoder) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in model.state_dict().values() if tensor.is_floating_point())


def release_gate(loss: float, previous: float | None, tolerance: float = GATE_TOLERANCE) -> dict:
    """The gate record for the manifest, or ReleaseRefused: a non-finite held-out loss, or one worse than the last
    release's by more than `tolerance` (relative)."""
    if not math.isfinite(loss):
        raise ReleaseRefused(f"the held-out loss is {loss}: the averaged state is broken")
    if previous is not None and loss > previous + tolerance * abs(previous):
        raise ReleaseRefused(f"the held-out loss {loss:.4f} is worse than the last release's {previous:.4f} by more than {tolerance:.0%}")
    return {"held_out_loss": loss, "previous_loss": previous, "tolerance": tolerance, "pairs": GATE_PAIRS}


@dataclass
class ReleaseInputs:
    config: RunConfig
    corpus: PairCorpus
    tokenizer: TextTokenizer
    landmarks: LandmarkSet
    reference: list[str]
    outside_reference: bool = True  # compare each release with all-MiniLM-L6-v2 (mutual kNN) and the TF-IDF+SVD yardstick


def next_version(latest: ReleaseVersion | None) -> ReleaseVersion:
    """0.1.0, then a minor bump per release of the run (same landmark prefix: compatible upgrades)."""
    return ReleaseVersion(0, 1, 0) if latest is None else ReleaseVersion(latest.major, latest.minor + 1, 0)


def cut_release(
    workdir: Workdir,
    inputs: ReleaseInputs,
    model: TextEncoder,
    global_step: int,
    ledger: Ledger,
    quick_eval: bool = True,
    gate: dict | None = None,
    passphrase: bytes | None = None,
) -> Manifest:
    """Build, evaluate and sign the next release from `model`; `passphrase` opens encrypted targets keys.

    With a k-of-n targets role whose keys are not all in the workdir the release is built into
    `releases/<version>/` and signing is refused (ReleaseError); `cairn coordinator keys sign-release` signs it
    with the other holders' keys.
    """
    from cairn.coordinator.publishing.repository import ReleaseRepository
    from cairn.training.trainer import evaluate_bundle

    repository = ReleaseRepository(workdir.root, passphrase=passphrase)
    parent = repository.latest_version()
    version = next_version(parent)
    if not state_is_finite(model):
        raise ReleaseRefused("the averaged state has non-finite parameters")
    model.eval()
    try:
        calibrated = calibrate(model, inputs.tokenizer, inputs.landmarks, inputs.reference)
    except LandmarkError as error:  # non-finite or degenerate statistics: the coordinator died here (issue 12, attack 3)
        raise ReleaseRefused(f"the landmark calibration of the averaged state failed: {error}") from None
    embedder = Embedder(model, inputs.tokenizer, calibrated)
    staging = workdir.releases / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    save_bundle(staging, model, inputs.tokenizer, calibrated)
    metrics = evaluate_bundle(embedder, inputs.corpus, quick=quick_eval)
    articles = _probe_articles()
    texts, labels = list(articles.texts), list(articles.labels)
    views = _views(embedder, texts)
    compatibility = _compatibility(workdir, parent, views, texts, labels)
    metrics["matryoshka"] = matryoshka_report(views["relational"], views["absolute"], labels)
    if inputs.outside_reference:
        metrics.update(_outside(workdir, inputs.corpus, embedder))
        # the bag-of-words yardstick in the same suite mode: the manifest says, task by task, whether this release beats it
        metrics["yardstick"] = against_yardstick(metrics["relational"]["full"], yardstick_scores(quick_eval), quick_eval)
    files = {}
    for path in sorted(staging.iterdir()):
        digest, length = file_sha256(path)
        files[path.name] = FileEntry(digest, length)
    summary = ledger.spot_check_summary()
    manifest = Manifest(
        version=version,
        parent_version=parent,
        run_id=inputs.config.run_id,
        global_step=global_step,
        landmarks_version=calibrated.version,
        landmarks_digest=calibrated.digest,
        files=files,
        metrics=metrics,
        compatibility=compatibility,
        extra={
            "samples_seen": ledger.total_credited(),
            "contributors": ledger.contributor_count(),
            "created_at": time.time(),
            "spot_checks": summary,
            "gate": gate,
            "encoder": {"model": inputs.config.training.model, "parameters": model.num_parameters()},
        },
    )
    write_manifest(manifest, staging / "manifest.json")
    final = workdir.releases / str(version)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    repository.publish_release(final)
    ledger.record_release(str(version), None if parent is None else str(parent), global_step, ledger.total_credited(), manifest.to_json())
    return manifest


def _probe_articles() -> Articles:
    """The fixed probe for compatibility and Matryoshka: a balanced, hash-ordered BBC subsample."""
    from cairn.evaluation.data import load_bbc
    from cairn.evaluation.suite import subsample_articles

    return subsample_articles(load_bbc(), per_label=PROBE_PER_TOPIC)


def _views(embedder: Embedder, texts: list[str]) -> dict[str, np.ndarray]:
    """Relational and absolute vectors of `texts`, encoding them once."""
    absolute = embedder.absolute(texts)
    return {"relational": relational(absolute, embedder.anchor_vectors, embedder.landmarks.stats), "absolute": absolute}


def _compatibility(
    workdir: Workdir, parent: ReleaseVersion | None, views: dict[str, np.ndarray], texts: list[str], labels: list[int]
) -> dict:
    """Compare with the parent release, and with the release before it ("grandparent"); {} for the first release."""
    if parent is None or not (workdir.releases / str(parent)).is_dir():
        return {}

    def computed(vectors: np.ndarray) -> EmbedFn:  # the vectors of `texts`, encoded already
        return lambda _texts: vectors

    new = {name: computed(vectors) for name, vectors in views.items()}

    def against(version: ReleaseVersion) -> dict:
        old = load_bundle(workdir.releases / str(version), device="cpu")
        return compatibility_report({"relational": old.relational, "absolute": old.absolute}, new, texts, labels)

    report = {"parent": str(parent), "probe": f"bbc-news 5 topics, {PROBE_PER_TOPIC} per topic", **against(parent)}
    grandparent = read_manifest(workdir.releases / str(parent)).parent_version
    if grandparent is not None and (workdir.releases / str(grandparent)).is_dir():
        report["grandparent"] = {"version": str(grandparent), **against(grandparent)}
    return report


def _outside(workdir: Workdir, corpus: PairCorpus, embedder: Embedder) -> dict:
    """{"outside": mutual kNN with the reference encoder} or {} where it is not installed."""
    from cairn.evaluation.reference import MINILM_NAME

    texts = alignment_texts(corpus)
    if len(texts) <= ALIGNMENT_K:
        return {}
    reference = reference_vectors(workdir, texts)
    if reference is None:
        return {}
    return {"outside": outside_report(_views(embedder, texts), reference, MINILM_NAME)}
