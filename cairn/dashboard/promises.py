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
YARDSTICK_TASKS = (
    ("gloss_lemma_r10", "gloss→lemma R@10"),
    ("simlex_spearman", "SimLex-999 ρ"),
    ("wordsim_spearman", "WordSim-353 ρ"),
    ("bbc_probe_acc", "BBC topic probe"),
)
# The Matryoshka probe is BBC News' 5 balanced topics: chance accuracy 0.2. A prefix curve says something only once
# the full vector is well above that: an encoder at chance reaches "95 % of its full score" with any prefix at all.
PROBE_CHANCE = 0.2
PROBE_FLOOR = 2 * PROBE_CHANCE
INDEX_UPGRADE_GOAL = 0.90  # an index kept from the previous release keeps >= 90 % of a re-embedded one's precision (issue 14)


def _number(document: Any, *path: str) -> float | None:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    if isinstance(document, bool) or not isinstance(document, (int, float)) or not math.isfinite(document):
        return None
    return float(document)


def _row(promise: str, measured: float | None, goal: str, met: bool | None, detail: str = "", key: str = "") -> dict[str, Any]:
    """`key` names the kind of number for display (a share of 1 is shown as a percentage, a count without decimals)."""
    return {"promise": promise, "measured": measured, "goal": goal, "met": None if measured is None else met, "detail": detail, "key": key}


def _full_score(curve: Any) -> float | None:
    """The full vector's probe accuracy: the curve's point at its largest prefix size."""
    if not isinstance(curve, dict):
        return None
    sizes = [int(k) for k in curve if isinstance(k, str) and k.isdigit()]
    return _number(curve, str(max(sizes))) if sizes else None


def promise_rows(manifest: Manifest | None) -> list[dict[str, Any]]:
    """One row per promise; `met` is True/False against the goal, None where there is no goal or no value."""
    if manifest is None:
        return []
    rows = []
    matryoshka = manifest.metrics.get("matryoshka", {})
    k95, goal_k = _number(matryoshka, "relational_prefix", "k95"), _number(matryoshka, "goal", "k95")
    if goal_k is not None:
        random_k = _number(matryoshka, "random_order", "k95")
        full = _full_score(matryoshka.get("relational_prefix") if isinstance(matryoshka, dict) else None)
        meaningful = full is not None and full >= PROBE_FLOOR
        detail = "" if random_k is None else f"random landmark order: {random_k:g}"
        if not meaningful:
            detail = (
                f"full vector {'not measured' if full is None else f'at {full:.1%}'}, below the floor {PROBE_FLOOR:.0%} "
                f"(chance {PROBE_CHANCE:.0%}): no prefix claim yet"
            )
        rows.append(
            _row(
                "Matryoshka: smallest prefix with 95 % of the full probe score",
                k95,
                f"≤ {goal_k:g} (K/8)",
                (k95 is not None and k95 <= goal_k) if meaningful else None,
                detail,
                key="k95",
            )
        )
    compatibility = manifest.compatibility
    for scope, label in ((compatibility, "previous release"), (compatibility.get("grandparent"), "release before that")):
        ratio = _number(scope, "relational", "head_ratio")
        if ratio is None and not (isinstance(scope, dict) and scope):
            continue
        contrast = _number(scope, "absolute", "head_ratio")
        rows.append(
            _row(
                f"Compatibility with the {label}: task-head score kept (relational)",
                ratio,
                f"≥ {HEAD_RATIO_GOAL:.0%}",
                ratio is not None and ratio >= HEAD_RATIO_GOAL,
                "" if contrast is None else f"absolute vectors: {contrast:.1%}",
                key="head_ratio",
            )
        )
    yardstick = manifest.metrics.get("yardstick")
    mode = yardstick.get("mode") if isinstance(yardstick, dict) else None
    for metric, label in YARDSTICK_TASKS:
        mine, theirs = _number(manifest.metrics, "relational", "full", metric), _number(yardstick, "scores", metric)
        if theirs is not None:
            rows.append(
                _row(
                    f"Beats the TF-IDF+SVD yardstick: {label}",
                    mine,
                    f"> {theirs:.3f}",
                    mine is not None and mine > theirs,
                    f"same suite, {mode if mode in ('quick', 'full') else 'unknown'} mode",
                )
            )
    kept = _number(compatibility, "relational", "index_upgrade_ratio")
    if kept is not None:
        contrast = _number(compatibility, "absolute", "index_upgrade_ratio")
        rows.append(
            _row(
                "Search without re-embedding: an index of the previous release queried with this one (relational)",
                kept,
                f"≥ {INDEX_UPGRADE_GOAL:.0%} of a re-embedded index",
                kept >= INDEX_UPGRADE_GOAL,
                "same-topic precision@10 as a share" + ("" if contrast is None else f"; absolute vectors: {contrast:.1%}"),
                key="index_upgrade_ratio",
            )
        )
    outside = manifest.metrics.get("outside", {})
    alignment = _number(outside, "relational", "mutual_knn10")
    if alignment is not None:
        chance = _number(outside, "chance", "mutual_knn10")
        rows.append(
            _row(
                "Alignment with all-MiniLM-L6-v2: mutual kNN@10 (relational)",
                alignment,
                "reported (no goal)",
                None,
                "" if chance is None else f"chance: {chance:.1%}",
                key="mutual_knn10",
            )
        )
    return rows
