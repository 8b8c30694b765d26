"""Releases and landmark sets as the dashboard shows them: signed repository first, ledger second.

A release listed in the signed targets metadata is shown with its signed files (downloadable) and
the manifest stored beside them (checked against its signed hash). A release that the ledger knows
but the repository does not (yet) list is shown from the ledger's manifest copy, marked unsigned.
Manifest metrics and compatibility reports are free-form JSON objects, so they are flattened to
"a/b/c" -> value here and charted generically; Matryoshka curves are the metrics whose path holds
an integer (the prefix width, as in cairn.evaluation.suite's report).
"""

from __future__ import annotations

import json
import math
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cairn.dashboard.promises import promise_rows
from cairn.dashboard.repository import SignedRepository
from cairn.protocol.errors import CairnError
from cairn.protocol.landmarks import LandmarkSet
from cairn.releases.layout import LANDMARKS_FILE, MANIFEST_FILE
from cairn.releases.manifest import (
    MAX_LANDMARKS_BYTES,
    MAX_MANIFEST_BYTES,
    Manifest,
    parse_manifest,
)
from cairn.releases.version import ReleaseVersion

_INTEGER = re.compile(r"0|[1-9][0-9]{0,8}")
_MAX_DEPTH = 6
_MAX_LEAVES = 512


class ParsedCache:
    """A small LRU of parsed immutable files (content-addressed), so landmark sets are parsed once."""

    def __init__(self, size: int = 64):
        self.size = size
        self._entries: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, load):
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = load()
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


def flatten(document: Any, *, numbers_only: bool) -> dict[str, Any]:
    """Leaves of nested objects as {"a/b/c": value}; the suite's "meta" block is skipped.

    With `numbers_only`, only finite numbers are kept (metrics); otherwise numbers, booleans and
    short strings (compatibility reports). Depth and leaf count are capped.
    """
    leaves: dict[str, Any] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if len(leaves) >= _MAX_LEAVES:
            return
        if isinstance(node, dict):
            if len(path) >= _MAX_DEPTH:
                return
            for key, value in node.items():
                if not path and key == "meta":
                    continue
                walk(value, (*path, str(key)))
        elif isinstance(node, bool):
            if not numbers_only:
                leaves["/".join(path)] = node
        elif isinstance(node, (int, float)):
            if math.isfinite(node):
                leaves["/".join(path)] = node
        elif isinstance(node, str) and not numbers_only:
            leaves["/".join(path)] = node[:200]

    walk(document, ())
    return leaves


def split_metrics(flat: dict[str, float]) -> tuple[dict[str, float], dict[str, dict[int, float]]]:
    """(scalar metrics, Matryoshka curves): a key with an integer component is a point of a curve.

    "relational/64/simlex_spearman" becomes curve "relational/simlex_spearman" at dims 64.
    """
    scalars: dict[str, float] = {}
    curves: dict[str, dict[int, float]] = {}
    for key, value in flat.items():
        parts = key.split("/")
        dims = [i for i, part in enumerate(parts) if _INTEGER.fullmatch(part)]
        if dims:
            i = dims[-1]
            curves.setdefault("/".join(parts[:i] + parts[i + 1 :]) or "score", {})[int(parts[i])] = value
        else:
            scalars[key] = value
    return scalars, {name: points for name, points in curves.items() if len(points) >= 2}


def pull_commands(repository_url: str | None, version: str) -> dict[str, str]:
    url = repository_url or "REPOSITORY_URL"
    target = f"./cairn-{version}"
    return {
        "pull": f"cairn release pull {url} --version {version} --to {target}",
        "verify": f"cairn release verify {target}",
    }


def release_list(
    repository: SignedRepository, ledger_rows: list[dict[str, Any]], repository_url: str | None, cache: ParsedCache
) -> dict[str, Any]:
    """Every known release, newest first, with manifest, metrics, files, signing state and commands."""
    state = repository.state()
    rows = {row["version"]: row for row in ledger_rows}
    versions: dict[ReleaseVersion, None] = dict.fromkeys(state.releases)
    for text in rows:
        try:
            versions.setdefault(ReleaseVersion.parse(text), None)
        except CairnError:
            continue
    releases = []
    for version in sorted(versions, reverse=True):
        signed = state.releases.get(version)
        row = rows.get(str(version))
        manifest, problem = None, None
        if signed is not None:
            manifest, problem = _signed_manifest(repository, version, cache)
        if manifest is None and row is not None:
            try:
                manifest = parse_manifest(row["manifest_json"].encode("utf-8"))
            except (CairnError, AttributeError) as error:
                problem = problem or f"ledger manifest unreadable: {error}"
        releases.append(_release_entry(version, signed, row, manifest, problem, repository_url))
    return {"signing": state.summary(), "repository_url": repository_url, "releases": releases}


def _signed_manifest(repository: SignedRepository, version: ReleaseVersion, cache: ParsedCache) -> tuple[Manifest | None, str | None]:
    found = repository.release_file(version, MANIFEST_FILE)
    if found is None:
        return None, "signed manifest.json is missing or does not match its signed hash"
    path, target = found

    def load() -> tuple[Manifest | None, str | None]:
        data = repository.read_small(path, MAX_MANIFEST_BYTES)
        if data is None:
            return None, "signed manifest.json is unreadable"
        try:
            return parse_manifest(data), None
        except CairnError as error:
            return None, f"signed manifest.json is invalid: {error}"

    return cache.get(("manifest", target.hashes.get("sha256")), load)


def _release_entry(version, signed, row, manifest: Manifest | None, problem, repository_url) -> dict[str, Any]:
    text = str(version)
    if signed is not None:
        files = [
            {"name": name, "length": target.length, "sha256": target.hashes.get("sha256"), "url": f"/releases/{text}/files/{name}"}
            for name, target in sorted(signed.files.items())
        ]
    elif manifest is not None:
        files = [{"name": name, "length": e.length, "sha256": e.sha256, "url": None} for name, e in sorted(manifest.files.items())]
    else:
        files = []
    metrics = flatten(manifest.metrics, numbers_only=True) if manifest is not None else {}
    extra = flatten(manifest.extra, numbers_only=False) if manifest is not None else {}
    row = row or {}
    scalars, curves = split_metrics(metrics)
    return {
        "version": text,
        "signed": signed is not None,
        "problem": problem,
        "parent_version": str(manifest.parent_version) if manifest and manifest.parent_version else row.get("parent_version"),
        "global_step": manifest.global_step if manifest else row.get("global_step"),
        "samples_seen": row.get("samples_seen", extra.get("samples_seen")),
        "created_at": row.get("created_at", extra.get("created_at") or None),
        "run_id": manifest.run_id if manifest else None,
        "landmarks_version": manifest.landmarks_version if manifest else (signed.landmarks.version if signed else None),
        "landmarks_digest": manifest.landmarks_digest if manifest else (signed.landmarks.digest if signed else None),
        "files": files,
        "total_bytes": sum(f["length"] for f in files),
        "metrics": scalars,
        "matryoshka": {name: sorted(points.items()) for name, points in curves.items()},
        "compatibility": flatten(manifest.compatibility, numbers_only=False) if manifest else {},
        "promises": promise_rows(manifest),
        "facts": {key: value for key, value in extra.items() if key not in ("samples_seen", "created_at")},
        "manifest": manifest.to_json() if manifest else None,
        "commands": pull_commands(repository_url, text),
    }


def landmark_sets(
    repository: SignedRepository, run_landmarks: Path, release_entries: list[dict[str, Any]], cache: ParsedCache
) -> dict[str, Any]:
    """Every distinct landmark set, oldest version first, each marked with what it appended.

    Sources: standalone signed sets (landmarks/vN), each signed release's landmarks.json, and the
    run's own DIR/run/landmarks.json. Sets are deduplicated by digest (which covers version and order).
    """
    found: dict[str, dict[str, Any]] = {}
    problems: list[str] = []

    def add(path: Path | None, source: str) -> None:
        if path is None:
            return
        try:
            key = (path, path.stat().st_mtime_ns)
        except OSError:
            return
        landmarks = cache.get(("landmarks", key), lambda: _load_landmarks(path))
        if isinstance(landmarks, str):
            problems.append(f"{source}: {landmarks}")
            return
        entry = found.setdefault(landmarks.digest, {"set": landmarks, "sources": []})
        if source not in entry["sources"]:
            entry["sources"].append(source)

    state = repository.state()
    for number in sorted(state.landmark_targets):
        add(repository.landmarks_file(number), f"signed landmark set v{number}")
    for release in sorted(state.releases):
        located = repository.release_file(release, LANDMARKS_FILE)
        add(located[0] if located else None, f"release {release}")
    if run_landmarks.is_file() and not run_landmarks.is_symlink():
        add(run_landmarks, "run configuration")

    sets = []
    previous: LandmarkSet | None = None
    for entry in sorted(found.values(), key=lambda e: (e["set"].version, e["set"].digest)):
        landmarks: LandmarkSet = entry["set"]
        extends = previous is not None and previous.version < landmarks.version and landmarks.anchors[: previous.size] == previous.anchors
        first_new = previous.size if extends and previous is not None else 0
        sets.append(
            {
                "version": landmarks.version,
                "digest": landmarks.digest,
                "size": landmarks.size,
                "sources": entry["sources"],
                "extends": previous.version if extends and previous is not None else None,
                "breaks_prefix": previous is not None and not extends,
                "first_new": first_new,
                "appended": landmarks.size - first_new,
                "anchors": landmarks.anchors,
                "releases": [r["version"] for r in release_entries if r["landmarks_digest"] == landmarks.digest],
            }
        )
        previous = landmarks
    return {"sets": sets, "problems": problems}


def _load_landmarks(path: Path) -> LandmarkSet | str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LANDMARKS_BYTES + 1)
        if len(data) > MAX_LANDMARKS_BYTES:
            return "larger than the landmark size limit"
        return LandmarkSet.from_json(json.loads(data.decode("utf-8")), source=path.name)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"unreadable ({error.__class__.__name__})"
    except CairnError as error:
        return str(error)
