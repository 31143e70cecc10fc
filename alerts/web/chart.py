"""The incident chart: cumulative outflow and remaining balance over time, drawn as inline SVG.

Drawn on the server, so the page needs no JavaScript. Amounts stay exact everywhere else; they
become floats here only to be turned into pixel positions and short axis labels.

>>> from datetime import UTC, datetime, timedelta
>>> from alerts.incidents import FlowPoint, FlowSeries, Marker
>>> t = datetime(2018, 1, 25, 15, 2, tzinfo=UTC)
>>> s = FlowSeries("nem", "HOT", "XEM", 0, (FlowPoint(t, 0, 1000),
...     FlowPoint(t + timedelta(minutes=2), 190, 810)), "chain")
>>> svg = render_chart(s, [Marker(t + timedelta(minutes=2), "alert", "A1 critical")])
>>> 'data-series="outflow"' in svg and 'data-series="balance"' in svg and 'data-kind="alert"' in svg
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Final

from alerts.incidents import FlowPoint, FlowSeries, Marker

__all__ = ["ChartBox", "compact_number", "nice_step", "render_chart", "time_ticks"]


@dataclass(frozen=True, slots=True)
class ChartBox:
    """The drawing area inside the SVG's view box."""

    width: int = 640
    height: int = 300
    left: int = 70
    right: int = 18
    top: int = 64
    bottom: int = 34

    @property
    def plot_w(self) -> int:
        """Width of the plot area."""
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        """Height of the plot area."""
        return self.height - self.top - self.bottom


_TIME_STEPS: Final = tuple(
    timedelta(seconds=s)
    for s in (
        1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
        86400, 172800, 604800,
    )
)  # fmt: skip
_LABEL_ROWS: Final = 3
_CHAR_W: Final = 6.6
"""Rough width of one character of an 11 px label, to keep labels from overlapping."""


def nice_step(span: float, ticks: int = 4) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about ``ticks`` intervals.

    >>> nice_step(523_000_000), nice_step(42), nice_step(0)
    (200000000.0, 20.0, 1.0)
    """
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)


def compact_number(value: float) -> str:
    """An axis label: ``523M``, ``1.5k``, ``0.25``.

    >>> compact_number(523_000_000), compact_number(1500), compact_number(0.25), compact_number(0)
    ('523M', '1.5k', '0.25', '0')
    """
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}"


def time_ticks(start: datetime, end: datetime, most: int = 6) -> list[datetime]:
    """Round times between ``start`` and ``end``, at most ``most`` of them.

    >>> t = datetime(2018, 1, 25, 15, 0, 40, tzinfo=UTC)
    >>> [f"{x:%H:%M}" for x in time_ticks(t, t + timedelta(minutes=5))]
    ['15:01', '15:02', '15:03', '15:04', '15:05']
    """
    span = end - start
    step = next((s for s in _TIME_STEPS if span / s <= most), _TIME_STEPS[-1])
    seconds = step.total_seconds()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = math.ceil((start - epoch).total_seconds() / seconds) * seconds
    ticks: list[datetime] = []
    moment = epoch + timedelta(seconds=first)
    while moment <= end:
        ticks.append(moment)
        moment += step
    return ticks


def _tick_label(moment: datetime, span: timedelta, step: timedelta | None) -> str:
    moment = moment.astimezone(UTC)
    if span > timedelta(days=1):
        return moment.strftime("%m-%d %H:%M")
    if step is not None and step < timedelta(minutes=1):
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%H:%M")


def _state_at(points: Sequence[FlowPoint], moment: datetime) -> FlowPoint:
    """The last point at or before ``moment`` (the first point if none is)."""
    current = points[0]
    for point in points:
        if point.time <= moment:
            current = point
        else:
            break
    return current


def _range(series: FlowSeries, markers: Sequence[Marker]) -> tuple[datetime, datetime]:
    """Focus on the incident: from a little before the first alert to just after the end.

    The lead-in is as long as the incident itself (at least 2 min) so that the chart shows the
    drain's shape, not hours of ordinary traffic squeezed to the left edge. Before the first
    point the series holds its opening state, so the range may start earlier than the data.
    """
    times = [p.time for p in series.points] + [m.time for m in markers]
    end = max(times)
    alerts = [m.time for m in markers if m.kind == "alert"]
    anchor = min(alerts) if alerts else min(times)
    lead = max(end - anchor, timedelta(minutes=2))
    start = anchor - lead
    pad = max((end - start) * 0.04, lead * 0.2)
    return start, end + pad


@dataclass(frozen=True, slots=True)
class _Scale:
    """Maps times and amounts (asset units, as floats) to pixels."""

    box: ChartBox
    start: datetime
    end: datetime
    y_max: float
    y_step: float

    def x(self, moment: datetime) -> float:
        span_s = max((self.end - self.start).total_seconds(), 1.0)
        return self.box.left + (moment - self.start).total_seconds() / span_s * self.box.plot_w

    def y(self, value: float) -> float:
        return self.box.top + self.box.plot_h - value / self.y_max * self.box.plot_h


_GRID: Final = "#26313d"
_AXIS_TEXT: Final = "#8b98a5"
_MARKER_COLOURS: Final = {
    "alert": "#ffb020",
    "freeze": "#37d67a",
    "freeze_failed": "#ff4dd2",
    "unfreeze": "#b197fc",
}


def _axes(sc: _Scale, asset: str) -> list[str]:
    box = sc.box
    parts: list[str] = []
    tick = 0.0
    while tick <= sc.y_max + sc.y_step / 2:
        ty = sc.y(tick)
        parts.append(
            f'<line class="grid" x1="{box.left}" x2="{box.left + box.plot_w}" y1="{ty:.1f}" '
            f'y2="{ty:.1f}" stroke="{_GRID}"/>'
            f'<text class="axis-label" x="{box.left - 8}" y="{ty + 4:.1f}" text-anchor="end" '
            f'fill="{_AXIS_TEXT}">{escape(compact_number(tick))}</text>'
        )
        tick += sc.y_step
    ticks = time_ticks(sc.start, sc.end)
    tick_step = ticks[1] - ticks[0] if len(ticks) > 1 else None
    for moment in ticks:
        tx = sc.x(moment)
        parts.append(
            f'<line class="grid grid-x" x1="{tx:.1f}" x2="{tx:.1f}" y1="{box.top}" '
            f'y2="{box.top + box.plot_h}" stroke="#1d2630"/>'
            f'<text class="axis-label" x="{tx:.1f}" y="{box.height - 12}" text-anchor="middle" '
            f'fill="{_AXIS_TEXT}">{_tick_label(moment, sc.end - sc.start, tick_step)}</text>'
        )
    parts.append(
        f'<text class="axis-unit" x="{box.left - 8}" y="{box.top - 14}" text-anchor="end" '
        f'fill="{_AXIS_TEXT}">{escape(asset)}</text>'
        f'<text class="axis-unit" x="{box.left + box.plot_w}" y="{box.height - 1}" '
        f'text-anchor="end" fill="{_AXIS_TEXT}">time (UTC)</text>'
    )
    return parts


def _step_path(
    sc: _Scale, state0: FlowPoint, visible: Sequence[FlowPoint], scale: float, pick: str
) -> str | None:
    """A step line: a value holds until the next transfer changes it. None if unknown."""
    first = getattr(state0, pick)
    if first is None:
        return None
    d = [f"M{sc.box.left:.1f},{sc.y(first / scale):.1f}"]
    for point in visible:
        value = getattr(point, pick)
        if value is None:
            return None
        d.append(f"H{sc.x(point.time):.1f}V{sc.y(value / scale):.1f}")
    d.append(f"H{sc.box.left + sc.box.plot_w:.1f}")
    return "".join(d)


def _markers(sc: _Scale, markers: Sequence[Marker]) -> list[str]:
    """Dashed verticals with labels above the plot, stacked in rows so close moments stay
    readable."""
    box = sc.box
    parts: list[str] = []
    row_ends = [-1e9] * _LABEL_ROWS
    for marker in markers:
        if not sc.start <= marker.time <= sc.end:
            continue
        mx = sc.x(marker.time)
        width = len(marker.label) * _CHAR_W + 12
        anchor_end = mx + width > box.width - 4
        left_edge = mx - width if anchor_end else mx
        row = next((i for i, e in enumerate(row_ends) if e < left_edge - 4), None)
        if row is None:
            row = min(range(_LABEL_ROWS), key=lambda i: row_ends[i])
        row_ends[row] = left_edge + width
        ly = 16 + row * 16
        colour = _MARKER_COLOURS.get(marker.kind, _AXIS_TEXT)
        text_x = mx - 7 if anchor_end else mx + 7
        kind = escape(marker.kind)
        parts.append(
            f'<g class="marker marker-{kind}" data-kind="{kind}" '
            f'data-time="{marker.time.isoformat()}">'
            f"<title>{escape(marker.label)} at {marker.time.astimezone(UTC):%H:%M:%S} UTC</title>"
            f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{ly - 4}" y2="{box.top + box.plot_h}" '
            f'stroke="{colour}" stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<circle cx="{mx:.1f}" cy="{ly - 4}" r="3.5" fill="{colour}"/>'
            f'<text class="marker-label" x="{text_x:.1f}" y="{ly}" '
            f'text-anchor="{"end" if anchor_end else "start"}" fill="{colour}">'
            f"{escape(marker.label)}</text></g>"
        )
    return parts


def render_chart(
    series: FlowSeries,
    markers: Sequence[Marker],
    box: ChartBox = ChartBox(),
    *,
    title: str = "",
) -> str:
    """One series with its markers as an ``<svg>`` element (styled by incidents.css)."""
    start, end = _range(series, markers)
    scale = 10.0**series.decimals
    visible = [p for p in series.points if start <= p.time <= end]
    state0 = _state_at(series.points, start)
    values = [
        v / scale for p in (state0, *visible) for v in (p.outflow, p.balance) if v is not None
    ]
    top_value = max([*values, 0.0]) or 1.0
    step = nice_step(top_value)
    sc = _Scale(box, start, end, step * math.ceil(top_value * 1.05 / step), step)

    parts: list[str] = [
        f'<svg class="chart" role="img" viewBox="0 0 {box.width} {box.height}" '
        f'xmlns="http://www.w3.org/2000/svg" data-wallet="{escape(series.key)}" '
        f'data-asset="{escape(series.asset)}">',
        f"<title>{escape(title or f'Outflow and balance of {series.key} in {series.asset}')}"
        "</title>",
        f'<rect class="plot-bg" x="{box.left}" y="{box.top}" width="{box.plot_w}" '
        f'height="{box.plot_h}" fill="#0f151c"/>',
        *_axes(sc, series.asset),
    ]
    for pick, colour in (("balance", "#4dabf7"), ("outflow", "#ff6b6b")):
        d = _step_path(sc, state0, visible, scale, pick)
        if d is not None:
            parts.append(
                f'<path class="series series-{pick}" data-series="{pick}" d="{d}" '
                f'fill="none" stroke="{colour}" stroke-width="2.5" stroke-linejoin="round"/>'
            )
    parts += _markers(sc, markers)
    parts.append("</svg>")
    return "".join(parts)
