"""Shared style, palette and helpers of the figures: one colour per variant, bars with values,
figures saved atomically as PNG with the plotted numbers in JSON beside them."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from tsae_core.io import atomic_path, provenance, write_json

DPI = 150
GT_KINDS = ("overall", "fast", "slow", "positional", "rare_fast", "rare_slow")
# Known variants in display order (baselines first), each with a fixed colour-blind-safe colour; others take free ones.
KNOWN_VARIANTS = tuple(
    "topk batchtopk relu jumprelu consistency contrastive relational conv orthogonal predictive matryoshka".split()
)
_CB = sns.color_palette("colorblind", 10).as_hex() + ["#222222"]
_COLORS = [_CB[i] for i in (0, 1, 7, 5, 2, 3, 4, 6, 9, 10, 8)]  # slot per KNOWN_VARIANTS entry; grey = relu baseline
_OVERFLOW = sns.color_palette("dark", 10).as_hex()  # only once more than 11 variants share a figure
_RC = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 13}
_NOTE = {"ha": "center", "zorder": 5, "bbox": {"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5}}
_KIND_MARKERS = {"slow": "o", "fast": "^", "positional": "s", "unmatched": "."}
Evals = dict[str, dict[str, Any]]  # variant -> content of runs/<run>/eval/<variant>.json
Curves = dict[str, list[dict[str, Any]]]  # variant -> records of runs/<run>/train/<variant>.jsonl
Clusters = dict[str, dict[str, Any]]  # variant -> clustering output (embedding_2d, labels, latent_kind, contingency, ari, nmi)
Colors = dict[str, str] | None  # variant -> colour; None: from `variant_colors`
PathLike = str | Path

_HEAT = {"cmap": "crest", "vmin": 0, "vmax": 1, "cbar": False, "linewidths": 1, "linecolor": "white"}
_RQ = ("eval_result_metrics", "reconstruction_quality")
_SP = ("eval_result_metrics", "sparsity")
_SH = ("eval_result_metrics", "shrinkage")
_MB = ("eval_result_metrics", "model_behavior_preservation")
_MP = ("eval_result_metrics", "model_performance_preservation")


# ---------------------------------------------------------------- loading
def variant_order(names: Iterable[str]) -> list[str]:
    """Known variants in a fixed order (baselines first), then any others alphabetically."""
    names = set(names)
    return [n for n in KNOWN_VARIANTS if n in names] + sorted(names - set(KNOWN_VARIANTS))


def variant_colors(names: Iterable[str]) -> dict[str, str]:
    """variant -> hex colour: known variants their fixed slot, others the free slots in name order."""
    names = variant_order(names)
    colors = {n: _COLORS[KNOWN_VARIANTS.index(n)] for n in names if n in KNOWN_VARIANTS}
    free = [c for c in _COLORS + _OVERFLOW if c not in colors.values()]
    for i, n in enumerate(n for n in names if n not in KNOWN_VARIANTS):
        colors[n] = free[i % len(free)]
    return colors


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _num(v: Any) -> float | None:
    """A finite float, or None for None / NaN / inf / non-numbers."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _nan(v: Any) -> float:
    f = _num(v)
    return np.nan if f is None else f


def _styled(fn):
    """Draw and save inside a local style (the caller's rcParams stay untouched)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), matplotlib.rc_context(_RC):
            return fn(*args, **kwargs)

    return wrapper


def _figure(nrows: int, ncols: int, size: tuple[float, float], **kw) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _save(fig: Figure, out_dir: PathLike, name: str, data: dict[str, Any]) -> Path:
    """PNG and the JSON of plotted numbers, both written atomically; returns the PNG path."""
    png = Path(out_dir) / f"{name}.png"
    with atomic_path(png) as tmp:
        dpi = matplotlib.rcParams["savefig.dpi"]  # set by plot_all's `dpi`; "figure" when called alone
        fig.savefig(tmp, format="png", dpi=DPI if dpi == "figure" else dpi)
    write_json(png.with_suffix(".json"), {"figure": name, **data}, stamp=provenance())
    fig.clear()
    return png


def _fmt(v: float, style: str) -> str:
    return {"pct": f"{v:.1%}", "pct0": f"{v:.0%}", "sci": f"{v:.2e}", "g3": f"{v:.3g}", "int": f"{v:.1f}", "f2": f"{v:.2f}"}.get(style, f"{v:.3f}")


def _bar(ax, x, v: float | None, color, width, na_h, style: str | None = None, hatch: str | None = None,
         err: float | None = None, **text_kw) -> None:
    """One bar with its value (formatted by `style`) above it; None becomes an empty hatched bar marked n/a.

    `hatch` draws a faded, hatched bar (a control); `err` a ±1 std error bar across seeds (the note
    then says mean ± std); `text_kw` goes to the annotation."""
    text_kw = {"fontsize": 8, **text_kw}
    if v is None:
        ax.bar(x, na_h, width, color="none", edgecolor="0.6", hatch="xx", linewidth=0.5)
        v, note, text_kw = na_h, "n/a", {**text_kw, "color": "0.4"}
    else:
        ax.bar(x, v, width, color=color, edgecolor="0.2", linewidth=0.5, hatch=hatch, alpha=0.45 if hatch else 1.0)
        note = _fmt(v, style) if style else None
        if err is not None:
            ax.errorbar(x, v, yerr=err, color="0.1", capsize=3, lw=1.2, zorder=4)
            note = f"{note}\n±{_fmt(err, style)}" if note else None
            v = v + err if v >= 0 else v - err
    if note:
        ax.text(x, v, note, va="bottom" if v >= 0 else "top", **_NOTE, **text_kw)


def _seed_std(e: dict[str, Any], *path: str) -> float | None:
    """The across-seed standard deviation of the value at `path` (None for a single seed)."""
    return _num(_get(e.get("seed_std") or {}, *path))


def _ref_line(ax, y: float | None, label: str) -> None:
    """Dashed horizontal reference, labelled just outside the right edge of the panel."""
    if y is not None:
        ax.axhline(y, ls="--", color="0.15", lw=1.2, zorder=3)
        ax.text(1.01, y, label, transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=8)


UNHEALTHY_COLOR = "#c0392b"


def unhealthy(evals: Evals, names: Iterable[str]) -> list[str]:
    """The variants whose health verdict (in their eval JSON) is unhealthy: marked in every figure."""
    return [v for v in names if isinstance(h := evals[v].get("health"), dict) and h.get("healthy") is False]


def _label(name: str, sick: Iterable[str]) -> str:
    return f"{name} (unhealthy)" if name in sick else name


def _mark_unhealthy(labels: Iterable[Any], sick: list[str]) -> None:
    """Colour the tick labels of unhealthy variants (their text already says so)."""
    for t in labels:
        if t.get_text().endswith("(unhealthy)"):
            t.set_color(UNHEALTHY_COLOR)


def _variant_ticks(ax, labels: list[str], sick: list[str] = ()) -> None:
    shown = [_label(v, sick) for v in labels]
    rotate = len(shown) > 4 or max(map(len, shown), default=0) > 10
    ax.set_xticks(range(len(shown)), shown, rotation=30 if rotate else 0, ha="right" if rotate else "center")
    _mark_unhealthy(ax.get_xticklabels(), list(sick))
    ax.grid(axis="x", visible=False)


def _limits(ax, values: Iterable[float | None], ref: float | None = None, headroom: float = 0.15) -> float:
    """Set y-limits with room for annotations; returns the height used for n/a placeholders."""
    vals = [v for v in values if v is not None] + ([ref] if ref is not None else [])
    lo, hi = min(vals + [0.0]), max(vals + [0.0])
    span = (hi - lo) or 1.0
    ax.set_ylim(lo - (0.1 * span if lo < 0 else 0), hi + headroom * span)
    return 0.3 * hi if hi > 0 else 0.3 * span


class _Panel(NamedTuple):
    """One bar panel: the value `key` under `section` of each eval JSON."""

    key: str
    section: tuple[str, ...]
    title: str
    ylabel: str
    style: str = "f"  # annotation format, see _fmt; "pct" also formats the axis in %
    ref: float | None = None  # dashed reference line
    ref_label: str = ""
    marker: str | None = None  # a second key drawn as a diamond beside each bar


def _metric_bars(ax, p: _Panel, variants: list[str], evals: Evals, colors: dict[str, str]) -> dict[str, list]:
    """The shared panel: one bar per variant of one metric, values annotated; returns the numbers drawn."""
    vals = [_num(_get(evals[v], *p.section, p.key)) for v in variants]
    marks = [_num(_get(evals[v], *p.section, p.marker)) for v in variants] if p.marker else []
    widest = max((len(_fmt(v, p.style)) for v in vals if v is not None), default=3)
    upright = widest * len(variants) > 50  # horizontal annotations would touch
    na_height = _limits(ax, vals + marks, p.ref, headroom=0.4 if upright else 0.15)
    errs = [_seed_std(evals[v], *p.section, p.key) for v in variants]
    for i, (name, v, err) in enumerate(zip(variants, vals, errs)):
        _bar(ax, i, v, colors[name], 0.7, na_height, p.style, err=err, rotation=90 if upright else 0)
    for i, (name, m) in enumerate(zip(variants, marks)):
        if m is not None:
            ax.scatter(i + 0.35, m, marker="D", s=30, facecolor="white", edgecolor=colors[name], lw=1.5, zorder=4)
    _ref_line(ax, p.ref, p.ref_label)
    if p.style == "pct":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(title=p.title, ylabel=p.ylabel)
    _variant_ticks(ax, variants, unhealthy(evals, variants))
    return {p.key: vals, **({f"{p.key}_seed_std": errs} if any(e is not None for e in errs) else {}),
            **({p.marker: marks} if p.marker else {})}


def _metric_grid(
    evals: Evals, out_dir: PathLike, name: str, title: str, panels: list[_Panel], colors: Colors, **extra: Any
) -> Path | None:
    """A 2×2 figure of per-variant bar panels."""
    variants = variant_order(evals)
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    fig, axes = _figure(2, 2, (max(11, 0.9 * len(variants) + 2), 7.5))
    data: dict[str, Any] = {"variants": variants, "colors": colors, "unhealthy": unhealthy(evals, variants), **extra}
    for ax, panel in zip(axes.flat, panels):
        data.update(_metric_bars(ax, panel, variants, evals, colors))
    fig.suptitle(title + _unhealthy_note(data["unhealthy"]))
    return _save(fig, out_dir, name, data)


def _unhealthy_note(sick: list[str]) -> str:
    return f"\n(unhealthy, see their eval JSON's health: {', '.join(sick)})" if sick else ""


def _true_l0(evals: Evals) -> float | None:
    return next((v for e in evals.values() if (v := _num(_get(e, "ground_truth", "true_l0"))) is not None), None)


