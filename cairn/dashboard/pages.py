"""HTML rendering: Jinja2 templates with autoescaping on, formatting filters, and each page's charts.

Autoescape is on for every template and undefined names are errors, so a peer's display name can
only ever reach the page as text. Charts are built here from the same dicts the JSON API returns.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from cairn.dashboard.charts import Series, line_chart

HERE = Path(__file__).parent
FULL, HALF = 1080, 520  # chart viewBox widths for a full-width card and a half-width one
STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def load_static() -> dict[str, tuple[bytes, str, str]]:
    """The shipped assets, read once: name -> (bytes, content type, short content hash for cache busting)."""
    assets = {}
    for path in sorted((HERE / "static").iterdir()):
        if path.suffix in STATIC_TYPES and path.is_file():
            data = path.read_bytes()
            assets[path.name] = (data, STATIC_TYPES[path.suffix], hashlib.sha256(data).hexdigest()[:12])
    return assets


def make_environment(static: dict[str, tuple[bytes, str, str]]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=fmt_number, duration=fmt_duration, utc=fmt_utc, size=fmt_bytes, pct=fmt_percent, metric=fmt_metric)
    env.globals["asset"] = lambda name: f"/static/{name}?v={static[name][2]}"
    return env


# ---- formatting --------------------------------------------------------------------------------


def fmt_number(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,.{digits}f}"


# metric names (last part of a key) whose values are shares of 1: shown as percentages
FRACTION_SUFFIXES = ("acc", "_r1", "_r10", "ratio", "agreement", "share", "knn10", "score_old", "score_new")


def fmt_metric(value: Any, key: str | None = None) -> str:
    """A metric as a person reads it: counts without decimals (k95 8, not 8.0000), shares of 1 as percentages."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isfinite(value):
        if key is not None and is_fraction(key) and -1.0 <= value <= 1.0:
            return fmt_percent(value)
        if value.is_integer() and abs(value) < 1e15:
            return fmt_number(int(value))
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    return fmt_number(value) if isinstance(value, int) else str(value)


def is_fraction(key: str) -> bool:
    return key.rpartition("/")[2].endswith(FRACTION_SUFFIXES)


def fmt_duration(seconds: Any) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h"


def fmt_utc(timestamp: Any) -> str:
    if timestamp is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def fmt_bytes(length: Any) -> str:
    if length is None:
        return "—"
    value = float(length)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def fmt_percent(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


# ---- charts per page ---------------------------------------------------------------------------


def chance_lines(data: dict[str, Any]) -> list[tuple[str, float]]:
    """The loss charts' floor: absolute InfoNCE at chance is ln(batch size) of the batch it was computed on."""
    chance = data.get("chance")
    if not chance:
        return []
    return [(f"chance: ln {chance['batch_size']} = {chance['loss']:.2f}", chance["loss"])]


def _score_range(groups) -> tuple[float, float] | None:
    """0..1 for charts of scores that live there, so a few noisy releases are not drawn as a trend."""
    values = [y for points in groups for _, y in points]
    return (0.0, 1.0) if values and all(0.0 <= y <= 1.0 for y in values) else None


def swarm_charts(data: dict[str, Any]) -> dict[str, Markup]:
    history = data["history"]
    return {
        "speed": line_chart(
            [Series("swarm samples/s", [(p["at"], p["samples_per_second"]) for p in history])],
            title="Swarm speed, last hour",
            x_label="time (UTC)",
            y_label="samples/s",
            x_kind="time",
            width=HALF,
            height=250,
        ),
        "loss": line_chart(
            [Series("mean loss", [(p["at"], p["mean_loss"]) for p in history if p["mean_loss"] is not None])],
            title="Mean training loss, last hour",
            x_label="time (UTC)",
            y_label="loss",
            x_kind="time",
            width=HALF,
            height=250,
            references=chance_lines(data),
        ),
    }


def contributor_charts(data: dict[str, Any]) -> dict[str, Markup]:
    history = data["history"]
    return {
        "samples": line_chart(
            [
                Series("credited by the ledger", [(p["at"], p["credited_samples"]) for p in history]),
                Series("claimed by the peer", [(p["at"], p["claimed_samples"]) for p in history]),
            ],
            title="Samples over time",
            x_label="time (UTC)",
            y_label="samples",
            x_kind="time",
            width=FULL,
            height=300,
        ),
        "loss": line_chart(
            [Series("reported loss", [(p["at"], p["loss"]) for p in history])],
            title="Training loss reported",
            x_label="time (UTC)",
            y_label="loss",
            x_kind="time",
            width=HALF,
            height=250,
            references=chance_lines(data),
        ),
        "speed": line_chart(
            [Series("samples/s", [(p["at"], p["samples_per_second"]) for p in history])],
            title="Speed",
            x_label="time (UTC)",
            y_label="samples/s",
            x_kind="time",
            width=HALF,
            height=250,
        ),
    }


def convergence_charts(data: dict[str, Any]) -> dict[str, Any]:
    releases = data["releases"]
    versions = [r["version"] for r in releases]
    charts: dict[str, Any] = {
        "by_step": line_chart(
            [Series("swarm mean loss", [(p["global_step"], p["mean_loss"]) for p in data["loss_by_step"]])],
            title="Training loss vs global step",
            x_label="global step",
            y_label="loss",
            width=FULL,
            height=320,
            references=chance_lines(data),
        ),
        "by_time": line_chart(
            [Series("swarm mean", [(p["at"], p["mean_loss"]) for p in data["swarm"] if p["mean_loss"] is not None])]
            + [Series(s["display_name"], [(p["at"], p["loss"]) for p in s["points"]]) for s in data["peer_loss"]],
            title="Training loss vs wall time (swarm mean and top contributors)",
            x_label="time (UTC)",
            y_label="loss",
            x_kind="time",
            width=FULL,
            height=320,
            references=chance_lines(data),
        ),
    }
    metric_groups: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for index, release in enumerate(releases):
        for key, value in release["metrics"].items():
            head, _, metric = key.rpartition("/")
            metric_groups.setdefault(metric, {}).setdefault(head or metric, []).append((index, value))
    charts["metrics"] = [
        line_chart(
            [Series(name, points) for name, points in sorted(group.items())],
            title=f"{metric} by release",
            x_label="release",
            y_label=metric,
            x_kind="category",
            categories=versions,
            width=HALF,
            height=250,
            y_range=_score_range(group.values()),
        )
        for metric, group in sorted(metric_groups.items())
    ]
    curves: dict[str, list[Series]] = {}
    for release in releases:
        for name, points in release["matryoshka"].items():
            curves.setdefault(name, []).append(Series(release["version"], points))
    charts["matryoshka"] = [
        line_chart(
            series,
            title=_matryoshka_title(name),
            x_label="dimensions (prefix of the relational vector)",
            y_label=name.rpartition("/")[2],
            x_kind="log2",
            width=HALF,
            height=250,
            y_range=_score_range(s.points for s in series),
        )
        for name, series in sorted(curves.items())
    ]
    compat: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for index, release in enumerate(releases):
        for key, value in release["compatibility"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                head, _, name = key.rpartition("/")
                compat.setdefault(head, {}).setdefault(name, []).append((index, value))
    charts["compatibility"] = [
        line_chart(
            [Series(name, points) for name, points in sorted(group.items())],
            title=_compatibility_title(head),
            x_label="release",
            y_label="score",
            x_kind="category",
            categories=versions,
            width=HALF,
            height=250,
            y_range=_score_range(group.values()),
        )
        for head, group in sorted(compat.items(), key=lambda item: (item[0].startswith("grandparent"), item[0] != "relational", item[0]))
    ]
    return charts


def _compatibility_title(head: str) -> str:
    """ "relational" -> previous release, relational vectors; "grandparent/absolute" -> the release before it."""
    scope, _, view = head.rpartition("/")
    against = "the release before the previous one" if scope == "grandparent" else "the previous release"
    return f"Compatibility with {against}{f' ({view} vectors)' if view else ''}"


def _matryoshka_title(name: str) -> str:
    """Suite curves read "relational/<metric>"; the release's probe curves "matryoshka/<ordering>"."""
    group, _, curve = name.partition("/")
    if group == "matryoshka":
        return f"Matryoshka, BBC probe accuracy: {curve.replace('_', ' ')} vs dims"
    return f"Matryoshka: {name} vs dims"
