"""The embedding's promises as measured for one release, next to their goals (from issue 6).

The coordinator writes the measurements into the signed manifest (cairn.evaluation.promises and
cairn.evaluation.compatibility); this turns them into table rows. A manifest comes from the network, so every
value is looked up defensively: a missing or non-numeric value is shown as not measured, never guessed.
"""

from __future__ import annotations

import math
from typing import Any

from cairn.releases.manifest import Manifest

HEAD_RATIO_GOAL = 0.97  # a task head keeps >= 97 % of its score on the next releases
INDEX_UPGRADE_GOAL = 0.90  # an index kept from the previous release keeps >= 90 % of a re-embedded one's precision (issue 14)


def _number(document: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    if isinstance(document, bool) or not isinstance(document, (int, float)) or not math.isfinite(document):
        return None
    return float(document)


def _row(promise: str, measured: float | None, goal: str, met: bool | None, detail: str = "") -> dict[str, Any]:
    return {"promise": promise, "measured": measured, "goal": goal, "met": None if measured is None else met, "detail": detail}


def promise_rows(manifest: Manifest | None) -> list[dict[str, Any]]:
    """One row per promise; `met` is True/False against the goal, None where there is no goal or no value."""
    if manifest is None:
        return []
    rows = []
    matryoshka = manifest.metrics.get("matryoshka", {})
    k95, goal_k = _number(matryoshka, "relational_prefix", "k95"), _number(matryoshka, "goal", "k95")
    if goal_k is not None:
        random_k = _number(matryoshka, "random_order", "k95")
        rows.append(_row("Matryoshka: smallest prefix with 95 % of the full probe score", k95, f"≤ {goal_k:g} (K/8)",
                         k95 is not None and k95 <= goal_k,
                         "" if random_k is None else f"random landmark order: {random_k:g}"))
    compatibility = manifest.compatibility
    for scope, label in ((compatibility, "previous release"), (compatibility.get("grandparent"), "release before that")):
        ratio = _number(scope, "relational", "head_ratio")
        if ratio is None and not (isinstance(scope, dict) and scope):
            continue
        contrast = _number(scope, "absolute", "head_ratio")
        rows.append(_row(f"Compatibility with the {label}: task-head score kept (relational)", ratio, f"≥ {HEAD_RATIO_GOAL:.0%}",
                         ratio is not None and ratio >= HEAD_RATIO_GOAL,
                         "" if contrast is None else f"absolute vectors: {contrast:.3f}"))
    kept = _number(compatibility, "relational", "index_upgrade_ratio")
    if kept is not None:
        contrast = _number(compatibility, "absolute", "index_upgrade_ratio")
        rows.append(_row("Search without re-embedding: an index of the previous release queried with this one (relational)", kept,
                         f"≥ {INDEX_UPGRADE_GOAL:.0%} of a re-embedded index", kept >= INDEX_UPGRADE_GOAL,
                         "same-topic precision@10 as a share" + ("" if contrast is None else f"; absolute vectors: {contrast:.3f}")))
    outside = manifest.metrics.get("outside", {})
    alignment = _number(outside, "relational", "mutual_knn10")
    if alignment is not None:
        chance = _number(outside, "chance", "mutual_knn10")
        rows.append(_row("Alignment with all-MiniLM-L6-v2: mutual kNN@10 (relational)", alignment, "reported (no goal)", None,
                         "" if chance is None else f"chance: {chance:.3f}"))
    return rows
