"""Charts drawn on the server as SVG: nothing to download, nothing run in the browser.

A chart is a sequence of (label, value) points drawn as bars with a labelled axis; the SVG
carries a title and a description for screen readers, and every page that shows one also
lists the figures in a table.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 640
HEIGHT = 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 12, 16, 36
BAR_FILL = "#0b5cad"  # 6.6:1 against white, like the link colour
AXIS = "#4a4a4a"


@dataclass(frozen=True)
class Series:
    """One chart's points: labels (oldest first) and their values."""

    title: str
    labels: list[str]
    values: list[int]
    value_text: Callable[[int], str]

    @property
    def total(self) -> int:
        return sum(self.values)


def daily(
    points: Iterable[tuple[dt.datetime, int]], tz: zoneinfo.ZoneInfo, days: int, today: dt.date
) -> tuple[list[dt.date], list[int]]:
    """Hourly (UTC) points summed into the last ``days`` days of the viewer's zone."""
    first = today - dt.timedelta(days=days - 1)
    dates = [first + dt.timedelta(days=i) for i in range(days)]
    totals = dict.fromkeys(dates, 0)
    for at, value in points:
        day = at.astimezone(tz).date()
        if day in totals:
            totals[day] += value
    return dates, [totals[d] for d in dates]


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^k at or above ``value`` (so the axis reads well)."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def bar_chart(series: Series, *, label_every: int = 7) -> Markup:
    """The series as an accessible SVG bar chart (scales with its container)."""
    count = max(1, len(series.values))
    top = _nice_ceiling(max(series.values, default=0))
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot = plot_w / count
    bar_w = max(1.0, slot * 0.7)
    parts: list[str] = []
    for i, value in enumerate(series.values):
        h = 0 if top == 0 else plot_h * value / top
        x = _LEFT + i * slot + (slot - bar_w) / 2
        y = _TOP + plot_h - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
            f'fill="{BAR_FILL}"><title>{escape(series.labels[i])}: '
            f"{escape(series.value_text(value))}</title></rect>"
        )
    # The middle line is labelled only when it falls on a whole unit (no "0, 0, 1" axis).
    fractions = (0, 0.5, 1) if top % 2 == 0 else (0, 1)
    for fraction in fractions:
        y = _TOP + plot_h * (1 - fraction)
        parts.append(
            f'<line x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#d0d0d0" stroke-width="1"/>'
            f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{AXIS}">{escape(series.value_text(int(top * fraction)))}</text>'
        )
    last = count - 1
    for i, label in enumerate(series.labels):
        # Every label_every-th day and the last, unless the last would crowd its neighbour.
        if (i % label_every == 0 and last - i >= label_every // 2) or i == last:
            x = _LEFT + i * slot + slot / 2
            parts.append(
                f'<text x="{x:.1f}" y="{HEIGHT - _BOTTOM + 16}" text-anchor="middle" '
                f'font-size="11" fill="{AXIS}">{escape(label)}</text>'
            )
    description = f"{series.title}: {series.value_text(series.total)}"
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(description)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(description)}</title>"
        f'<line x1="{_LEFT}" x2="{_LEFT}" y1="{_TOP}" y2="{_TOP + plot_h}" stroke="{AXIS}"/>'
        + "".join(parts)
        + "</svg>"
    )


def short_dates(dates: Sequence[dt.date]) -> list[str]:
    return [d.strftime("%m-%d") for d in dates]
