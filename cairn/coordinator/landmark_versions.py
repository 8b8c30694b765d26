"""Append-only landmark-set versions: v(n+1) keeps every anchor of v(n), in order, and adds new ones.

The run's training uses v1 (its digest is in the run configuration); releases use the newest
version, so coordinates 1..K_n of every later release mean what they meant in release n and task
heads trained on a prefix keep working. Each version is published as its own signed TUF target.
"""

from __future__ import annotations

from pathlib import Path

from cairn.corpora import PairCorpus
from cairn.protocol.errors import LandmarkError
from cairn.protocol.landmarks import LANDMARKS_FILE, LandmarkSet, select_landmarks

from cairn.protocol.workdir import Workdir


def version_path(workdir: Workdir, version: int) -> Path:
    return workdir.run_dir / (LANDMARKS_FILE if version == 1 else f"landmarks-v{version}.json")


def latest_landmarks(workdir: Workdir) -> LandmarkSet:
    """The newest landmark-set version in the workdir, each checked to extend the one before."""
    current = LandmarkSet.load(version_path(workdir, 1))
    while version_path(workdir, current.version + 1).exists():
        newer = LandmarkSet.load(version_path(workdir, current.version + 1))
        current.check_successor(newer)
        current = newer
    return current


def extend_landmarks(workdir: Workdir, corpus: PairCorpus, count: int, seed: int = 0) -> LandmarkSet:
    """Write v(n+1): v(n)'s anchors followed by `count` new ones chosen by the same ordering method."""
    if count < 1:
        raise LandmarkError("--count must be at least 1")
    current = latest_landmarks(workdir)
    candidates = corpus.landmark_candidates(limit=4096 + 4 * (current.size + count), seed=seed)
    ordered = select_landmarks(candidates, min(len(set(candidates)), current.size + 4 * count), "farthest", seed).anchors
    existing = set(current.anchors)
    extra = [anchor for anchor in ordered if anchor not in existing][:count]
    if len(extra) < count:
        raise LandmarkError(f"only {len(extra)} new distinct anchors found in the corpus, {count} asked")
    newer = current.extend(extra)
    current.check_successor(newer)
    newer.save(version_path(workdir, newer.version))
    return newer
