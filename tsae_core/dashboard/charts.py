"""Small inline SVG charts for the dashboard pages (no script, no network: a page stays readable
offline and in any browser).

`chart(x, series)` draws bars and lines over shared axes: each series is
`Series(label, values, kind="bar" | "line" | "dashed", colour)`; the y axis spans the data (0
included), with ticks at its ends and at 0; the x axis labels its first, middle and last values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 360, 170
LEFT, RIGHT, TOP, BOTTOM = 46, 8, 34, 30
COLOURS = {"data": "#1f6fb2", "control": "#9a9a9a", "strict": "#d9822b", "truth": "#2f9e44"}


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float | None]
    kind: str = "line"
    colour: str = COLOURS["data"]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.2f}".rstrip("0").rstrip(".")


def _y_range(series: Sequence[Series], log_y: bool) -> tuple[float, float]:
    """The y axis's ends (log10 units when `log_y`): the finite values' span, 0 included on a linear axis."""
    finite = [float(v) for s in series for v in s.values if v is not None and math.isfinite(float(v))]
    if log_y:
        finite = [math.log10(v) for v in finite if v > 0]
    lo, hi = (min(finite + [0.0]), max(finite + [0.0])) if not log_y else (min(finite or [0.0]), max(finite or [1.0]))
    if hi - lo < 1e-12:
        hi = lo + 1.0
    return lo, hi


@dataclass(frozen=True)
class _Frame:
    """A chart's plot area: its size, the y range, and the maps from data to pixel coordinates."""

    width: int
    height: int
    n: int
    lo: float
    hi: float
    log_y: bool

    @property
    def plot_width(self) -> int:
        """The plot area's width in pixels."""
        return self.width - LEFT - RIGHT

    @property
    def plot_height(self) -> int:
        """The plot area's height in pixels."""
        return self.height - TOP - BOTTOM

    @property
    def step(self) -> float:
        """The width of one x slot."""
        return self.plot_width / max(self.n, 1)

    @property
    def zero(self) -> float:
        """The y pixel of the x axis: y = 0 on a linear axis, the bottom on a log one."""
        return TOP + self.plot_height if self.log_y else self.py(0.0)

    def px(self, i: float) -> float:
        """The x pixel of the centre of slot i."""
        return LEFT + (i + 0.5) * self.step

    def py(self, v: float) -> float:
        """The y pixel of the value v (a data value, not log10 units, on a log axis)."""
        v = math.log10(v) if self.log_y else v
        return TOP + self.plot_height * (1 - (v - self.lo) / (self.hi - self.lo))


def _axes_svg(frame: _Frame, x: Sequence[float | int | str], title: str, xlabel: str, ylabel: str) -> list[str]:
    """The opening <svg> tag, the title, both axes with their ticks and labels."""
    lo, hi, pw, ph, width, height = frame.lo, frame.hi, frame.plot_width, frame.plot_height, frame.width, frame.height
    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    parts.append(f'<text x="{LEFT}" y="12" class="ct">{escape(title)}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" class="ax"/>')
    parts.append(f'<line x1="{LEFT}" y1="{frame.zero:.1f}" x2="{LEFT + pw}" y2="{frame.zero:.1f}" class="ax"/>')
    ticks = {lo, hi} | ({0.0} if lo < 0 < hi and not frame.log_y else set())
    for v in sorted(ticks):
        label = _fmt(10 ** v) if frame.log_y else _fmt(v)
        y = TOP + ph * (1 - (v - lo) / (hi - lo))
        parts.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" class="tk" text-anchor="end">{label}</text>')
    for i in sorted({0, frame.n // 2, frame.n - 1} if frame.n else set()):
        parts.append(f'<text x="{frame.px(i):.1f}" y="{TOP + ph + 12}" class="tk" text-anchor="middle">{escape(str(x[i]))}</text>')
    if xlabel:
        parts.append(f'<text x="{LEFT + pw / 2:.1f}" y="{height - 3}" class="tk" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        parts.append(f'<text x="10" y="{TOP + ph / 2:.1f}" class="tk" text-anchor="middle" '
                     f'transform="rotate(-90 10 {TOP + ph / 2:.1f})">{escape(ylabel)}</text>')
    return parts


def _bars_svg(frame: _Frame, x: Sequence[float | int | str], series: Sequence[Series]) -> list[str]:
    """The bar series side by side within each x slot, each bar from the x axis to its value."""
    parts = []
    bars = [s for s in series if s.kind == "bar"]
    for j, s in enumerate(bars):
        bw = frame.step * 0.8 / len(bars)
        for i, v in enumerate(s.values):
            if v is None or not math.isfinite(float(v)) or (frame.log_y and v <= 0):
                continue
            y0, y1 = sorted((frame.py(float(v)), frame.zero))
            parts.append(f'<rect x="{LEFT + i * frame.step + frame.step * 0.1 + j * bw:.1f}" y="{y0:.1f}" width="{bw:.1f}" '
                         f'height="{max(y1 - y0, 0.5):.1f}" fill="{s.colour}"><title>{escape(str(x[i]))}: {_fmt(float(v))}</title></rect>')
    return parts


def _lines_svg(frame: _Frame, series: Sequence[Series]) -> list[str]:
    """The line and dashed series: a polyline per run of drawable values, a dot for a lone one."""
    parts = []
    for s in series:
        if s.kind == "bar":
            continue
        dash = ' stroke-dasharray="4 3"' if s.kind == "dashed" else ""
        segment: list[str] = []
        for i, v in enumerate(list(s.values) + [None]):
            ok = v is not None and math.isfinite(float(v)) and not (frame.log_y and v <= 0)
            if ok:
                segment.append(f"{frame.px(i):.1f},{frame.py(float(v)):.1f}")
            if (not ok or i == len(s.values)) and segment:
                if len(segment) == 1:
                    x0, y0 = segment[0].split(",")
                    parts.append(f'<circle cx="{x0}" cy="{y0}" r="2" fill="{s.colour}"/>')
                else:
                    parts.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="{s.colour}" stroke-width="1.6"{dash}/>')
                segment = []
    return parts


def _legend_svg(series: Sequence[Series]) -> list[str]:
    """The legend, one row under the title; none for a single series."""
    if len(series) < 2:
        return []
    parts = []
    x_legend = LEFT
    for s in series:
        parts.append(f'<rect x="{x_legend}" y="19" width="8" height="8" fill="{s.colour}"/>'
                     f'<text x="{x_legend + 11}" y="26" class="tk">{escape(s.label)}</text>')
        x_legend += 18 + 5.5 * len(s.label)
    return parts


def chart(x: Sequence[float | int | str], series: Sequence[Series], title: str = "", xlabel: str = "", ylabel: str = "",
          width: int = WIDTH, height: int = HEIGHT, log_y: bool = False) -> str:
    """An <svg> element (a string) with the series drawn against x; None values leave gaps."""
    lo, hi = _y_range(series, log_y)
    frame = _Frame(width, height, len(x), lo, hi, log_y)
    parts = _axes_svg(frame, x, title, xlabel, ylabel)
    parts += _bars_svg(frame, x, series)
    parts += _lines_svg(frame, series)
    parts += _legend_svg(series)
    parts.append("</svg>")
    return "".join(parts)
