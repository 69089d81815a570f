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


def chart(x: Sequence[float | int | str], series: Sequence[Series], title: str = "", xlabel: str = "", ylabel: str = "",
          width: int = WIDTH, height: int = HEIGHT, log_y: bool = False) -> str:
    """An <svg> element (a string) with the series drawn against x; None values leave gaps."""
    n = len(x)
    finite = [float(v) for s in series for v in s.values if v is not None and math.isfinite(float(v))]
    if log_y:
        finite = [math.log10(v) for v in finite if v > 0]
    lo, hi = (min(finite + [0.0]), max(finite + [0.0])) if not log_y else (min(finite or [0.0]), max(finite or [1.0]))
    if hi - lo < 1e-12:
        hi = lo + 1.0
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM
    step = pw / max(n, 1)

    def px(i: float) -> float:
        return LEFT + (i + 0.5) * step

    def py(v: float) -> float:
        v = math.log10(v) if log_y else v
        return TOP + ph * (1 - (v - lo) / (hi - lo))

    parts = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>']
    parts.append(f'<text x="{LEFT}" y="12" class="ct">{escape(title)}</text>')
    zero = py(10 ** lo if log_y else 0.0) if not log_y else TOP + ph
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" class="ax"/>')
    parts.append(f'<line x1="{LEFT}" y1="{zero:.1f}" x2="{LEFT + pw}" y2="{zero:.1f}" class="ax"/>')
    ticks = {lo, hi} | ({0.0} if lo < 0 < hi and not log_y else set())
    for v in sorted(ticks):
        label = _fmt(10 ** v) if log_y else _fmt(v)
        y = TOP + ph * (1 - (v - lo) / (hi - lo))
        parts.append(f'<text x="{LEFT - 4}" y="{y + 3:.1f}" class="tk" text-anchor="end">{label}</text>')
    for i in sorted({0, n // 2, n - 1} if n else set()):
        parts.append(f'<text x="{px(i):.1f}" y="{TOP + ph + 12}" class="tk" text-anchor="middle">{escape(str(x[i]))}</text>')
    if xlabel:
        parts.append(f'<text x="{LEFT + pw / 2:.1f}" y="{height - 3}" class="tk" text-anchor="middle">{escape(xlabel)}</text>')
    if ylabel:
        parts.append(f'<text x="10" y="{TOP + ph / 2:.1f}" class="tk" text-anchor="middle" '
                     f'transform="rotate(-90 10 {TOP + ph / 2:.1f})">{escape(ylabel)}</text>')
    bars = [s for s in series if s.kind == "bar"]
    for j, s in enumerate(bars):
        bw = step * 0.8 / len(bars)
        for i, v in enumerate(s.values):
            if v is None or not math.isfinite(float(v)) or (log_y and v <= 0):
                continue
            y0, y1 = sorted((py(float(v)), zero))
            parts.append(f'<rect x="{LEFT + i * step + step * 0.1 + j * bw:.1f}" y="{y0:.1f}" width="{bw:.1f}" '
                         f'height="{max(y1 - y0, 0.5):.1f}" fill="{s.colour}"><title>{escape(str(x[i]))}: {_fmt(float(v))}</title></rect>')
    for s in series:
        if s.kind == "bar":
            continue
        dash = ' stroke-dasharray="4 3"' if s.kind == "dashed" else ""
        segment: list[str] = []
        for i, v in enumerate(list(s.values) + [None]):
            ok = v is not None and math.isfinite(float(v)) and not (log_y and v <= 0)
            if ok:
                segment.append(f"{px(i):.1f},{py(float(v)):.1f}")
            if (not ok or i == len(s.values)) and segment:
                if len(segment) == 1:
                    x0, y0 = segment[0].split(",")
                    parts.append(f'<circle cx="{x0}" cy="{y0}" r="2" fill="{s.colour}"/>')
                else:
                    parts.append(f'<polyline points="{" ".join(segment)}" fill="none" stroke="{s.colour}" stroke-width="1.6"{dash}/>')
                segment = []
    x_legend = LEFT
    for s in series:  # legend: one row under the title
        if len(series) < 2:
            break
        parts.append(f'<rect x="{x_legend}" y="19" width="8" height="8" fill="{s.colour}"/>'
                     f'<text x="{x_legend + 11}" y="26" class="tk">{escape(s.label)}</text>')
        x_legend += 18 + 5.5 * len(s.label)
    parts.append("</svg>")
    return "".join(parts)
