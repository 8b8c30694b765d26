"""Cut a release: calibrate, evaluate and compare the averaged state, then sign and publish it.

The steps, in order, each checkable on its own:
1. calibrate the landmark statistics of this encoder on the run's reference sample;
2. write the bundle (weights, config, tokenizer, landmarks) into a staging directory;
3. evaluate it (quick suite) and compute the compatibility report against the parent release;
4. write the manifest (hashes of every file), move the directory into place, publish it to TUF.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass

from protocol.compatibility import compatibility_report
from protocol.corpora import PairCorpus
from protocol.embedder import Embedder, calibrate, load_bundle, save_bundle
from protocol.encoder import Encoder
from protocol.landmarks import LandmarkSet
from protocol.releases.files import file_sha256
from protocol.releases.manifest import FileEntry, Manifest, write_manifest
from protocol.releases.version import ReleaseVersion
from protocol.run_config import RunConfig
from protocol.tokenizer import TextTokenizer

from coordinator.ledger import Ledger
from coordinator.workdir import Workdir


@dataclass
class ReleaseInputs:
    config: RunConfig
    corpus: PairCorpus
    tokenizer: TextTokenizer
    landmarks: LandmarkSet
    reference: list[str]


def next_version(latest: ReleaseVersion | None) -> ReleaseVersion:
    """0.1.0, then a minor bump per release of the run (same landmark prefix: compatible upgrades)."""
    return ReleaseVersion(0, 1, 0) if latest is None else ReleaseVersion(latest.major, latest.minor + 1, 0)


def cut_release(workdir: Workdir, inputs: ReleaseInputs, model: Encoder, global_step: int, ledger: Ledger,
                quick_eval: bool = True) -> Manifest:
    from coordinator.publishing.repository import ReleaseRepository
    from protocol.trainer import evaluate_bundle

    repository = ReleaseRepository(workdir.root)
    parent = repository.latest_version()
    version = next_version(parent)
    model.eval()
    calibrated = calibrate(model, inputs.tokenizer, inputs.landmarks, inputs.reference)
    embedder = Embedder(model, inputs.tokenizer, calibrated)
    staging = workdir.releases / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    save_bundle(staging, model, inputs.tokenizer, calibrated)
    metrics = evaluate_bundle(embedder, inputs.corpus, quick=quick_eval)
    compatibility = _compatibility(workdir, parent, embedder)
    files = {}
    for path in sorted(staging.iterdir()):
        digest, length = file_sha256(path)
        files[path.name] = FileEntry(digest, length)
    summary = ledger.spot_check_summary()
    manifest = Manifest(
        version=version, parent_version=parent, run_id=inputs.config.run_id, global_step=global_step,
        landmarks_version=calibrated.version, landmarks_digest=calibrated.digest, files=files,
        metrics=metrics, compatibility=compatibility,
        extra={"samples_seen": ledger.total_credited(), "contributors": ledger.contributor_count(), "created_at": time.time(),
               "spot_checks": summary, "encoder": {"model": inputs.config.training.model, "parameters": model.num_parameters()}},
    )
    write_manifest(manifest, staging / "manifest.json")
    final = workdir.releases / str(version)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    repository.publish_release(final)
    ledger.record_release(str(version), None if parent is None else str(parent), global_step, ledger.total_credited(), manifest.to_json())
    return manifest


def _compatibility(workdir: Workdir, parent: ReleaseVersion | None, embedder: Embedder) -> dict:
    """Compare with the parent release on a fixed probe set (BBC subsample); {} for the first release."""
    if parent is None or not (workdir.releases / str(parent)).is_dir():
        return {}
    from protocol.evaluation.data import load_bbc
    from protocol.evaluation.suite import subsample_articles

    old = load_bundle(workdir.releases / str(parent), device="cpu")
    articles = subsample_articles(load_bbc(), per_label=60)
    report = compatibility_report({"relational": old.relational, "absolute": old.absolute},
                                  {"relational": embedder.relational, "absolute": embedder.absolute},
                                  list(articles.texts), list(articles.labels))
    return {"parent": str(parent), "probe": "bbc-news 5 topics, 60 per topic", **report}
