"""Bar charts as geometry for inline SVG: numbers in, rectangles and labels out.

No chart library and nothing fetched: a template draws the :class:`Chart` as ``<svg>`` with
``role="img"``, a title and a description, and the same numbers go into a table beside it for
screen readers and for anyone who would rather read than look. Styling is by CSS classes only
(the console's Content-Security-Policy allows no inline styles).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["Bar", "Chart", "Tick", "bar_chart"]

WIDTH = 360  # SVG user units
HEIGHT = 150
_LEFT = 34  # room for the y-axis labels
_BOTTOM = 22  # room for the x-axis labels
_TOP = 8
_RIGHT = 6


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str  # "3 shares, 27 Nov 09:00 UTC" (an SVG <title>)


@dataclass(frozen=True)
class Tick:
    x: float
    text: str
    anchor: str  # SVG text-anchor: the first label starts, the last ends, at its bar


@dataclass(frozen=True)
class Chart:
    name: str  # "shares"
    total: int
    peak: int  # the y-axis maximum
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = _LEFT
    top: int = _TOP
    bottom: float = HEIGHT - _BOTTOM  # y of the x axis


def _label(start: datetime, step: timedelta) -> str:
    if step >= timedelta(days=1):
        return start.strftime("%d %b")
    return start.strftime("%H:%M")


def _nice(peak: int) -> int:
    """A round axis maximum at or above ``peak``: 1, 2, 5, 10, 20, 50, 100, ..."""
    nice, i = 1, 0
    while nice < peak:
        nice = nice * 5 // 2 if i % 3 == 1 else nice * 2
        i += 1
    return nice


def bar_chart(name: str, values: list[int], starts: list[datetime], step: timedelta) -> Chart:
    """One bar per time bucket; the axis runs from 0 to a round number above the peak."""
    if len(values) != len(starts) or not values:
        raise ValueError("a chart needs one value per bucket")
    peak = _nice(max(values))
    plot_w = WIDTH - _LEFT - _RIGHT
    plot_h = HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(values)
    gap = min(2.0, slot * 0.2)
    unit = name[:-1] if name.endswith("s") else name
    bars = []
    for i, (value, start) in enumerate(zip(values, starts, strict=True)):
        h = plot_h * value / peak
        when = (
            start.strftime("%d %b %H:%M UTC")
            if step < timedelta(days=1)
            else start.strftime("%d %b %Y")
        )
        bars.append(
            Bar(
                x=round(_LEFT + i * slot + gap / 2, 2),
                y=round(_TOP + plot_h - h, 2),
                width=round(slot - gap, 2),
                height=round(h, 2),
                label=f"{value} {unit if value == 1 else name}, {when}",
            )
        )
    last = len(values) - 1
    ticks = []
    for i in sorted({0, last // 2, last}):
        if i == 0:  # the first label starts at the left edge of its bar
            x, anchor = _LEFT + i * slot, "start"
        elif i == last:  # and the last ends at the right edge of its bar
            x, anchor = _LEFT + (i + 1) * slot, "end"
        else:
            x, anchor = _LEFT + (i + 0.5) * slot, "middle"
        ticks.append(Tick(round(x, 2), _label(starts[i], step), anchor))
    return Chart(name=name, total=sum(values), peak=peak, bars=tuple(bars), ticks=tuple(ticks))
