"""Small, dependency-free SVG charts for the HTML reports (no network, no JavaScript).

Every function returns an ``<svg>`` string sized by ``viewBox`` (it scales to its container),
with ``<title>`` tooltips on marks and all text escaped.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from html import escape

__all__ = [
    "PALETTE",
    "bar_chart",
    "fmt_duration",
    "fmt_number",
    "hbar_chart",
    "histogram",
    "line_chart",
    "sparkline",
]

PALETTE = {
    "inserts": "#4f46e5",
    "updates": "#0ea5e9",
    "deletes": "#f43f5e",
    "other": "#a3a3a3",
    "snapshot": "#c7d2fe",
    "changes": "#6366f1",
    "line": "#4f46e5",
    "line2": "#f59e0b",
    "bar": "#6366f1",
    "good": "#10b981",
    "warn": "#f59e0b",
    "bad": "#ef4444",
    "grid": "#e5e7eb",
    "axis": "#6b7280",
}

_FONT = 'font-family="Inter, ui-sans-serif, system-ui, sans-serif" font-size="11"'


def fmt_number(value: float | int | None, digits: int = 1) -> str:
    """1234 → 1.2k, 0.5 → 0.5; None → –."""
    if value is None:
        return "–"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    v = float(value)
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.{digits}f}{unit}"
    if v == int(v):
        return f"{int(v)}"
    return f"{v:.{digits if abs(v) >= 1 else 3}f}".rstrip("0").rstrip(".")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = abs(seconds)
    if s < 1:
        return f"{seconds * 1000:.0f} ms"
    if s < 90:
        return f"{seconds:.1f} s"
    if s < 5400:
        return f"{seconds / 60:.1f} min"
    if s < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return float(step * exp)
    return float(10 * exp)


def _svg(width: int, height: int, body: str, label: str) -> str:
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg" {_FONT}>{body}</svg>'
    )


def int_axis(value: float) -> tuple[float, float]:
    """``(top, step)`` of a count axis: whole-number ticks, at most four intervals."""
    top = max(1.0, math.ceil(value))
    for step in (1, 2, 5):
        exp = 1
        while True:
            candidate = step * exp
            if math.ceil(top / candidate) <= 4:
                break
            exp *= 10
        if step == 1:
            best = candidate
        best = min(best, candidate)
    steps = max(1, math.ceil(top / best))
    return float(best * steps), float(best)


def _y_grid(
    left: int,
    right: int,
    top: int,
    bottom: int,
    vmax: float,
    fmt: str = "n",
    step: float | None = None,
) -> str:
    """Horizontal grid lines and their labels; ``step``: the tick interval (four otherwise)."""
    parts = []
    ticks = round(vmax / step) if step else 4
    for i in range(ticks + 1):
        value = vmax * i / ticks
        y = bottom - (bottom - top) * i / ticks
        label = fmt_duration(value) if fmt == "d" else fmt_number(value)
        if step and step >= 1:
            label = f"{round(value):,}"
        parts.append(
            f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{PALETTE["grid"]}" stroke-width="1"/>'
            f'<text x="{left - 6}" y="{y + 3.5:.1f}" text-anchor="end" class="tick" '
            f'fill="{PALETTE["axis"]}">{escape(label)}</text>'
        )
    return "".join(parts)


def _x_labels(labels: Sequence[str], xs: Sequence[float], y: float, max_labels: int = 6) -> str:
    if not labels:
        return ""
    step = max(1, math.ceil(len(labels) / max_labels))
    out = []
    for i, (label, x) in enumerate(zip(labels, xs, strict=True)):
        if i % step:
            continue
        anchor = "end" if i == len(labels) - 1 and len(labels) > 1 else "middle"
        out.append(
            f'<text x="{x:.1f}" y="{y}" text-anchor="{anchor}" fill="{PALETTE["axis"]}">'
            f"{escape(label)}</text>"
        )
    return "".join(out)


def _legend(names: Sequence[str], colors: Sequence[str], x: int, y: int) -> str:
    out = []
    for name, color in zip(names, colors, strict=True):
        out.append(
            f'<rect x="{x}" y="{y - 8}" width="10" height="10" rx="2" fill="{color}"/>'
            f'<text x="{x + 14}" y="{y + 1}" fill="#374151">{escape(name)}</text>'
        )
        x += 14 + 7 * len(name) + 16
    return "".join(out)


def bar_chart(
    labels: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    width: int = 640,
    height: int = 220,
    title: str = "",
) -> str:
    """Stacked bars: one bar per label, one colour per series."""
    left, right, top, bottom = 52, width - 12, 28, height - 28
    n = len(labels)
    if n == 0:
        return _empty(width, height, "no changes landed yet")
    totals = [sum(s[i] for s in series.values()) for i in range(n)]
    vmax, step = int_axis(max(totals) if totals else 1)  # counts: whole-number ticks
    slot = (right - left) / n
    bar_w = max(1.0, min(28.0, slot * 0.72))
    parts = [_y_grid(left, right, top, bottom, vmax, step=step)]
    xs = []
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar_w) / 2
        xs.append(x + bar_w / 2)
        y = float(bottom)
        for name, values in series.items():
            v = values[i]
            if v <= 0:
                continue
            h = (bottom - top) * v / vmax
            y -= h
            color = PALETTE.get(name, PALETTE["bar"])
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                f'rx="1.5" fill="{color}"><title>{escape(label)} · {escape(name)}: '
                f"{fmt_number(v)}</title></rect>"
            )
    parts.append(_x_labels(labels, xs, height - 10))
    parts.append(_legend(list(series), [PALETTE.get(s, PALETTE["bar"]) for s in series], left, 14))
    return _svg(width, height, "".join(parts), title or "bar chart")


def line_chart(
    labels: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    width: int = 640,
    height: int = 200,
    title: str = "",
    durations: bool = False,
    counts: bool = False,
    colors: Sequence[str] = (PALETTE["line"], PALETTE["line2"]),
) -> str:
    """Lines over labelled points (None breaks the line: no data is a gap, not a zero);
    ``counts``: whole-number ticks."""
    left, right, top, bottom = 56, width - 12, 28, height - 28
    values = [v for s in series.values() for v in s if v is not None]
    if not labels or not values:
        return _empty(width, height, "no data yet")
    step: float | None = None
    if counts:
        vmax, step = int_axis(max(values))
    else:
        vmax = _nice_max(max(values))
    n = len(labels)
    xs = [left + (right - left) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
    parts = [_y_grid(left, right, top, bottom, vmax, "d" if durations else "n", step=step)]
    for (name, points), color in zip(series.items(), colors, strict=False):
        path: list[str] = []
        dots = []
        for i, v in enumerate(points):
            if v is None:
                path.append("")
                continue
            y = bottom - (bottom - top) * v / vmax
            path.append(f"{xs[i]:.1f},{y:.1f}")
            shown = fmt_duration(v) if durations else fmt_number(v)
            dots.append(
                f'<circle cx="{xs[i]:.1f}" cy="{y:.1f}" r="2.6" fill="{color}">'
                f"<title>{escape(labels[i])} · {escape(name)}: {shown}</title></circle>"
            )
        for segment in " ".join(path).split("  "):
            if segment.strip():
                parts.append(
                    f'<polyline points="{segment.strip()}" fill="none" stroke="{color}" '
                    'stroke-width="2" stroke-linejoin="round" stroke-linecap="round"/>'
                )
        parts.extend(dots)
    parts.append(_x_labels(labels, xs, height - 10))
    parts.append(_legend(list(series), list(colors)[: len(series)], left, 14))
    return _svg(width, height, "".join(parts), title or "line chart")


def hbar_chart(
    items: Sequence[tuple[str, float]],
    *,
    threshold: float | None = None,
    width: int = 640,
    title: str = "",
) -> str:
    """Horizontal bars of ratios (0..1), e.g. null ratios per column."""
    if not items:
        return _empty(width, 80, "no columns")
    row_h = 20
    label_w = min(260, 12 + 6.6 * max(len(label) for label, _ in items))
    left, right = int(label_w), width - 56
    height = 16 + row_h * len(items)
    parts = []
    for i, (label, ratio) in enumerate(items):
        y = 8 + i * row_h
        w = max(0.0, min(1.0, ratio)) * (right - left)
        over = threshold is not None and ratio > threshold
        color = PALETTE["bad"] if over else (PALETTE["warn"] if ratio >= 0.5 else PALETTE["bar"])
        short = label if len(label) <= 38 else "…" + label[-37:]
        parts.append(
            f'<text x="{left - 8}" y="{y + 13}" text-anchor="end" fill="#374151">'
            f"<title>{escape(label)}</title>{escape(short)}</text>"
            f'<rect x="{left}" y="{y + 3}" width="{right - left}" height="{row_h - 7}" rx="3" '
            f'fill="#f3f4f6"/>'
            f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 7}" rx="3" '
            f'fill="{color}"><title>{escape(label)}: {ratio:.1%} null</title></rect>'
            f'<text x="{right + 6}" y="{y + 13}" fill="{PALETTE["axis"]}">{ratio:.0%}</text>'
        )
    if threshold is not None:
        x = left + threshold * (right - left)
        parts.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="4" y2="{height - 4}" stroke="{PALETTE["bad"]}" '
            'stroke-dasharray="4 3"><title>threshold</title></line>'
        )
    return _svg(width, height, "".join(parts), title or "ratios")


def histogram(
    buckets: Sequence[dict[str, float]],
    *,
    time_axis: bool = False,
    width: int = 300,
    height: int = 130,
    title: str = "",
) -> str:
    """A histogram from ``[{lo, hi, count}]`` buckets (lo/hi epoch seconds when ``time_axis``)."""
    if not buckets:
        return _empty(width, height, "no values")
    left, right, top, bottom = 8, width - 8, 10, height - 24
    vmax = max(b["count"] for b in buckets) or 1
    slot = (right - left) / len(buckets)
    parts = []

    def label(v: float) -> str:
        if time_axis:
            try:
                return dt.datetime.fromtimestamp(v, dt.UTC).strftime("%Y-%m-%d")
            except (OverflowError, OSError, ValueError):
                return fmt_number(v)
        return fmt_number(v)

    for i, b in enumerate(buckets):
        h = (bottom - top) * b["count"] / vmax
        parts.append(
            f'<rect x="{left + slot * i + 1:.1f}" y="{bottom - h:.1f}" width="{slot - 2:.1f}" '
            f'height="{h:.1f}" rx="1.5" fill="{PALETTE["bar"]}" opacity="0.85">'
            f"<title>{escape(label(b['lo']))} – {escape(label(b['hi']))}: "
            f"{fmt_number(b['count'])}</title></rect>"
        )
    parts.append(
        f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="{PALETTE["grid"]}"/>'
        f'<text x="{left}" y="{height - 8}" fill="{PALETTE["axis"]}">'
        f"{escape(label(buckets[0]['lo']))}</text>"
        f'<text x="{right}" y="{height - 8}" text-anchor="end" fill="{PALETTE["axis"]}">'
        f"{escape(label(buckets[-1]['hi']))}</text>"
    )
    return _svg(width, height, "".join(parts), title or "histogram")


def sparkline(values: Sequence[float], *, width: int = 120, height: int = 28) -> str:
    if len(values) < 2:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1
    pts = " ".join(
        f"{2 + (width - 4) * i / (len(values) - 1):.1f},"
        f"{height - 3 - (height - 6) * (v - lo) / span:.1f}"
        for i, v in enumerate(values)
    )
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'<polyline points="{pts}" fill="none" stroke="{PALETTE["line"]}" stroke-width="1.8"/>'
        "</svg>"
    )


def _empty(width: int, height: int, message: str) -> str:
    return _svg(
        width,
        height,
        f'<rect x="1" y="1" width="{width - 2}" height="{height - 2}" rx="8" fill="#f9fafb" '
        f'stroke="{PALETTE["grid"]}" stroke-dasharray="4 4"/>'
        f'<text x="{width / 2}" y="{height / 2 + 4}" text-anchor="middle" '
        f'fill="{PALETTE["axis"]}">{escape(message)}</text>',
        message,
    )
