"""Landmark-set versions are append-only and signed: v2 keeps v1 as its prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from cairn.coordinator.landmark_versions import extend_landmarks, latest_landmarks, version_path
from cairn.protocol.workdir import Workdir
from cairn.corpora.base import Pair, PairCorpus
from cairn.protocol.errors import LandmarkError
from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet, select_landmarks


@pytest.fixture
def workdir(tmp_path: Path) -> tuple[Workdir, PairCorpus]:
    words = [f"term{i} of kind {i % 7} with detail {i % 13}" for i in range(600)]
    corpus = PairCorpus("synthetic", [Pair(f"w{i}", text) for i, text in enumerate(words)], [])
    wd = Workdir(tmp_path)
    select_landmarks(corpus.landmark_candidates(), 32).save(wd.run_dir / LANDMARKS_FILE)
    return wd, corpus


def test_extension_keeps_the_old_set_as_prefix_and_is_the_latest(workdir):
    wd, corpus = workdir
    v1 = LandmarkSet.load(wd.run_dir / LANDMARKS_FILE)
    v2 = extend_landmarks(wd, corpus, 8)
    assert v2.version == 2 and v2.anchors[:32] == v1.anchors and len(v2.anchors) == 40
    assert len(set(v2.anchors)) == 40 and v2.digest != v1.digest
    v3 = extend_landmarks(wd, corpus, 4)
    assert latest_landmarks(wd).anchors == v3.anchors and v3.anchors[:40] == v2.anchors


def test_a_tampered_later_version_is_refused(workdir):
    wd, corpus = workdir
    v2 = extend_landmarks(wd, corpus, 8)
    reordered = LandmarkSet(2, [v2.anchors[1], v2.anchors[0], *v2.anchors[2:]])
    reordered.save(version_path(wd, 2))
    with pytest.raises(LandmarkError, match="does not extend"):
        latest_landmarks(wd)


def test_versions_are_published_as_signed_targets(workdir):
    from cairn.coordinator.publishing.repository import ReleaseRepository
    from cairn.releases.signed import signed_landmarks
    from tuf.api.metadata import Metadata, Targets

    wd, corpus = workdir
    repository = ReleaseRepository(wd.root)
    repository.init()
    v2 = extend_landmarks(wd, corpus, 8)
    for version in (1, 2):
        repository.publish_landmarks(version_path(wd, version), version)
    latest_targets = max(wd.repository.glob("metadata/*.targets.json"), key=lambda p: int(p.name.split(".")[0]))
    targets: Targets = Metadata[Targets].from_file(str(latest_targets)).signed
    assert signed_landmarks(targets, 1) is not None and signed_landmarks(targets, 2) is not None
    assert v2.version == 2
