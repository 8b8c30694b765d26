"""Line charts as inline SVG, rendered on the server: axes, nice ticks, labels, a legend, no JavaScript.

Colours come from CSS classes (`s0`..`s7`), never from inline styles, so the page's strict
Content-Security-Policy holds. Every text that reaches the SVG is escaped here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from markupsafe import Markup

XKind = Literal["number", "time", "log2", "category"]
PALETTE_SIZE = 8
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_kind: XKind = "number",
    categories: Sequence[str] = (),
    width: int = 720,
    height: int = 280,
    references: Sequence[tuple[str, float]] = (),
    y_range: tuple[float, float] | None = None,
) -> Markup:
    """A <figure> holding the SVG chart and its legend; "no data yet" if every series is empty.

    x_kind "time": x are unix seconds (UTC labels); "log2": x axis in log scale with a tick per x
    value (Matryoshka dims); "category": x are indexes into `categories` (release versions).
    `references`: labelled horizontal lines (a loss's chance level), always inside the y range.
    `y_range`: the least y range shown (a score's 0..1), so two noisy points do not fill the chart as a trend.
    On a time axis a line is broken where the data has a gap (the swarm was down between two runs):
    a line across it would show progress that never happened.
    """
    series = [Series(s.name, [(float(x), float(y)) for x, y in s.points if _finite(x) and _finite(y)]) for s in series]
    series = [s for s in series if s.points]
    if not series:
        return Markup('<figure class="chart empty"><figcaption>{}</figcaption><p>No data yet.</p></figure>').format(title)
    references = [(label, float(y)) for label, y in references if _finite(y)]

    left, right, top, bottom = 64, 16, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points] + [y for _, y in references] + list(y_range or ())
    x_map = (lambda v: math.log2(v) if v > 0 else 0.0) if x_kind == "log2" else (lambda v: v)
    x_lo, x_hi = _padded(min(map(x_map, xs)), max(map(x_map, xs)), pad=0.0 if x_kind != "category" else 0.5)
    y_ticks = nice_ticks(min(ys), max(ys))
    y_lo, y_hi = min(y_ticks[0], min(ys)), max(y_ticks[-1], max(ys))

    def px(x: float) -> float:
        return left + (x_map(x) - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return top + (1 - (y - y_lo) / (y_hi - y_lo)) * plot_h

    parts = [
        Markup('<svg class="chart-svg" viewBox="0 0 {w} {h}" role="img" aria-label="{t}" preserveAspectRatio="xMidYMid meet">').format(
            w=width, h=height, t=title
        ),
        Markup("<title>{}</title>").format(title),
    ]
    for y in y_ticks:
        parts.append(
            Markup(
                '<line class="grid" x1="{a}" x2="{b}" y1="{y:.1f}" y2="{y:.1f}"/><text class="tick" x="{t}" y="{ty:.1f}" text-anchor="end">{label}</text>'
            ).format(a=left, b=left + plot_w, y=py(y), t=left - 6, ty=py(y) + 4, label=format_number(y, _step(y_ticks)))
        )
    for x, label in _x_ticks(x_kind, xs, categories, x_lo, x_hi):
        parts.append(
            Markup(
                '<line class="tickmark" x1="{x:.1f}" x2="{x:.1f}" y1="{a}" y2="{b}"/><text class="tick" x="{x:.1f}" y="{ty}" text-anchor="middle">{label}</text>'
            ).format(x=px(x), a=top + plot_h, b=top + plot_h + 5, ty=top + plot_h + 18, label=label)
        )
    parts.append(Markup('<rect class="frame" x="{}" y="{}" width="{}" height="{}"/>').format(left, top, plot_w, plot_h))
    parts.append(
        Markup('<text class="axis-label" x="{x}" y="{y}" text-anchor="middle">{t}</text>').format(
            x=left + plot_w / 2, y=height - 6, t=x_label
        )
    )
    parts.append(
        Markup('<text class="axis-label" x="14" y="{y}" text-anchor="middle" transform="rotate(-90 14 {y})">{t}</text>').format(
            y=top + plot_h / 2, t=y_label
        )
    )
    for label, y in references:
        parts.append(
            Markup(
                '<line class="reference" x1="{a}" x2="{b}" y1="{y:.1f}" y2="{y:.1f}"><title>{t}</title></line>'
                '<text class="reference-label" x="{tx}" y="{ty:.1f}" text-anchor="end">{t}</text>'
            ).format(a=left, b=left + plot_w, y=py(y), tx=left + plot_w - 4, ty=py(y) - 4, t=label)
        )
    for index, s in enumerate(series):
        cls = f"s{index % PALETTE_SIZE}"
        for segment in split_at_gaps(s.points) if x_kind == "time" else [list(s.points)]:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in segment)
            parts.append(Markup('<polyline class="line {c}" points="{p}"><title>{n}</title></polyline>').format(c=cls, p=coords, n=s.name))
        if len(s.points) <= 40:
            for x, y in s.points:
                parts.append(
                    Markup('<circle class="dot {c}" cx="{x:.1f}" cy="{y:.1f}" r="3"><title>{n}: {v}</title></circle>').format(
                        c=cls, x=px(x), y=py(y), n=s.name, v=format_number(y, abs(y) / 1000 or 0.001)
                    )
                )
    parts.append(Markup("</svg>"))
    legend = Markup("").join(
        Markup('<li><span class="swatch s{}"></span>{}</li>').format(i % PALETTE_SIZE, s.name) for i, s in enumerate(series)
    )
    return Markup('<figure class="chart"><figcaption>{}</figcaption>{}<ul class="legend">{}</ul></figure>').format(
        title, Markup("").join(parts), legend
    )


GAP_FACTOR = 4.0  # a step this many times the usual spacing between points is a gap, not slow data
MIN_GAP_SECONDS = 90.0  # the coordinator polls every few seconds: below this, nothing went missing


def split_at_gaps(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """Points sorted by x, cut into runs wherever x jumps by more than GAP_FACTOR x the median step (and MIN_GAP_SECONDS)."""
    ordered = sorted(points)
    steps = sorted(b[0] - a[0] for a, b in zip(ordered, ordered[1:]))
    if not steps:
        return [ordered]
    limit = max(GAP_FACTOR * steps[len(steps) // 2], MIN_GAP_SECONDS)
    segments = [[ordered[0]]]
    for previous, point in zip(ordered, ordered[1:]):
        if point[0] - previous[0] > limit:
            segments.append([])
        segments[-1].append(point)
    return segments


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2, 5 x 10^k apart) covering [lo, hi]."""
    if lo == hi:
        spread = abs(lo) * 0.1 or 1.0
        lo, hi = lo - spread, hi + spread
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(lo / step) * step
    ticks: list[float] = []
    value = first
    while value <= hi + step * 0.5 and len(ticks) < 20:
        ticks.append(round(value, 12))
        value += step
        if ticks[-1] >= hi:
            break
    return ticks


def format_number(value: float, step: float) -> str:
    """A tick label: SI suffix for large values, as many decimals as the tick spacing needs."""
    magnitude = abs(value)
    for threshold, scale, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if magnitude >= threshold:
            decimals = max(0, min(3, -math.floor(math.log10(step / scale)))) if step > 0 else 1
            return f"{value / scale:.{decimals}f}{suffix}"
    decimals = max(0, min(6, -math.floor(math.log10(step)))) if step > 0 else 2
    return f"{value:.{decimals}f}"


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _padded(lo: float, hi: float, pad: float) -> tuple[float, float]:
    if lo == hi:
        return lo - (pad or 1.0), hi + (pad or 1.0)
    return lo - pad, hi + pad


def _step(ticks: list[float]) -> float:
    return ticks[1] - ticks[0] if len(ticks) > 1 else abs(ticks[0]) or 1.0


def _x_ticks(kind: XKind, xs: list[float], categories: Sequence[str], lo: float, hi: float) -> list[tuple[float, str]]:
    if kind == "category":
        indexes = sorted({int(x) for x in xs})
        stride = max(1, math.ceil(len(indexes) / 10))
        return [(i, categories[i] if 0 <= i < len(categories) else str(i)) for i in indexes[::stride]]
    if kind == "log2":
        values = sorted(set(xs))
        stride = max(1, math.ceil(len(values) / 10))
        return [(v, format_number(v, 1)) for v in values[::stride]]
    if kind == "time":
        span = hi - lo
        step = next((s for s in _TIME_STEPS if span / s <= 6), _TIME_STEPS[-1])
        first = math.ceil(lo / step) * step
        fmt = "%H:%M:%S" if step < 60 else "%H:%M" if span < 86400 else "%m-%d %H:%M" if step < 86400 else "%Y-%m-%d"
        return [(t, time.strftime(fmt, time.gmtime(t))) for t in _frange(first, hi, step)]
    ticks = nice_ticks(lo, hi)
    return [(t, format_number(t, _step(ticks))) for t in ticks if lo <= t <= hi]


def _frange(start: float, stop: float, step: float) -> list[float]:
    values: list[float] = []
    value = start
    while value <= stop and len(values) < 20:
        values.append(value)
        value += step
    return values
