"""Figures: one function per figure, each saving `<name>.png` and `<name>.json` (the numbers drawn).

Inputs are already-loaded results (see `load_evals`, `load_curves`). Any value may be None: bars are
then drawn hatched with 'n/a', lines break, heatmap cells stay blank; nothing raises. Each variant
keeps one colour (colour-blind palette) in every figure; `plot_all` fixes it over all inputs.
Figures are built on `matplotlib.figure.Figure` (Agg canvas), never through pyplot, so nothing is
shown and nothing stays open.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from tsae_core.io import atomic_path, provenance, read_json, write_json

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
def read_curves(path: PathLike) -> list[dict[str, Any]]:
    """Records of one training-curve JSONL file; a truncated last line (training still writing) is dropped."""
    lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
    records = [json.loads(ln) for ln in lines[:-1]]
    try:
        records += [json.loads(lines[-1])] if lines else []
    except json.JSONDecodeError:
        pass
    return records


def load_evals(eval_dir: PathLike) -> Evals:
    """variant -> eval JSON for every `<variant>.json` in `eval_dir` (sorted by name)."""
    return {p.stem: read_json(p) for p in sorted(Path(eval_dir).glob("*.json")) if not p.name.startswith(".")}


def load_curves(train_dir: PathLike) -> Curves:
    """variant -> training-curve records for every `<variant>.jsonl` in `train_dir` (sorted by name)."""
    return {p.stem: read_curves(p) for p in sorted(Path(train_dir).glob("*.jsonl")) if not p.name.startswith(".")}


# ---------------------------------------------------------------- shared helpers
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
    return {"pct": f"{v:.1%}", "pct0": f"{v:.0%}", "sci": f"{v:.2e}", "int": f"{v:.1f}", "f2": f"{v:.2f}"}.get(style, f"{v:.3f}")


def _bar(ax, x, v: float | None, color, width, na_h, style: str | None = None, hatch: str | None = None, **text_kw) -> None:
    """One bar with its value (formatted by `style`) above it; None becomes an empty hatched bar marked n/a.

    `hatch` draws a faded, hatched bar (a control); `text_kw` goes to the annotation."""
    text_kw = {"fontsize": 8, **text_kw}
    if v is None:
        ax.bar(x, na_h, width, color="none", edgecolor="0.6", hatch="xx", linewidth=0.5)
        v, note, text_kw = na_h, "n/a", {**text_kw, "color": "0.4"}
    else:
        ax.bar(x, v, width, color=color, edgecolor="0.2", linewidth=0.5, hatch=hatch, alpha=0.45 if hatch else 1.0)
        note = _fmt(v, style) if style else None
    if note:
        ax.text(x, v, note, va="bottom" if v >= 0 else "top", **_NOTE, **text_kw)


def _ref_line(ax, y: float | None, label: str) -> None:
    """Dashed horizontal reference, labelled just outside the right edge of the panel."""
    if y is not None:
        ax.axhline(y, ls="--", color="0.15", lw=1.2, zorder=3)
        ax.text(1.01, y, label, transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=8)


def _variant_ticks(ax, labels: list[str]) -> None:
    rotate = len(labels) > 4 or max(map(len, labels), default=0) > 10
    ax.set_xticks(range(len(labels)), labels, rotation=30 if rotate else 0, ha="right" if rotate else "center")
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
    for i, (name, v) in enumerate(zip(variants, vals)):
        _bar(ax, i, v, colors[name], 0.7, na_height, p.style, rotation=90 if upright else 0)
    for i, (name, m) in enumerate(zip(variants, marks)):
        if m is not None:
            ax.scatter(i + 0.35, m, marker="D", s=30, facecolor="white", edgecolor=colors[name], lw=1.5, zorder=4)
    _ref_line(ax, p.ref, p.ref_label)
    if p.style == "pct":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(title=p.title, ylabel=p.ylabel)
    _variant_ticks(ax, variants)
    return {p.key: vals, **({p.marker: marks} if p.marker else {})}


def _metric_grid(
    evals: Evals, out_dir: PathLike, name: str, title: str, panels: list[_Panel], colors: Colors, **extra: Any
) -> Path | None:
    """A 2×2 figure of per-variant bar panels."""
    variants = variant_order(evals)
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    fig, axes = _figure(2, 2, (max(11, 0.9 * len(variants) + 2), 7.5))
    data: dict[str, Any] = {"variants": variants, "colors": colors, **extra}
    for ax, panel in zip(axes.flat, panels):
        data.update(_metric_bars(ax, panel, variants, evals, colors))
    fig.suptitle(title)
    return _save(fig, out_dir, name, data)


def _true_l0(evals: Evals) -> float | None:
    return next((v for e in evals.values() if (v := _num(_get(e, "ground_truth", "true_l0"))) is not None), None)


# ---------------------------------------------------------------- figures
@_styled
def plot_reconstruction_metrics(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Explained variance (legacy as a diamond), cosine similarity, MSE and ‖x̂‖/‖x‖ per variant."""
    panels = [
        _Panel(
            "explained_variance", _RQ, "Explained variance (◇ legacy)", "explained variance", marker="explained_variance_legacy"
        ),
        _Panel("cossim", _RQ, "Cosine similarity cos(x, x̂)", "mean cosine similarity"),
        _Panel("mse", _RQ, "Mean squared error", "MSE per dimension (activation units²)", "sci"),
        _Panel("l2_ratio", _SH, "Shrinkage ‖x̂‖ / ‖x‖", "mean L2 ratio", ref=1.0, ref_label="no\nshrinkage"),
    ]
    title = "Reconstruction quality on held-out tokens, per variant"
    return _metric_grid(evals, out_dir, "reconstruction_metrics", title, panels, colors)


@_styled
def plot_sparsity_metrics(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """L0 (with the true L0 when known), dead fraction, dense fraction and L1 per variant."""
    true_l0 = _true_l0(evals)
    panels = [
        _Panel("l0", _SP, "L0: active latents per token", "mean L0 (latents / token)", "int", true_l0, f"true L0\n= {true_l0:.2f}" if true_l0 is not None else ""),
        _Panel("dead_fraction", _SP, "Dead latents (never fire on eval set)", "% of latents", "pct"),
        _Panel("dense_fraction", _SP, "Dense latents (fire on > 10% of tokens)", "% of latents", "pct"),
        _Panel("l1", _SP, "L1: summed activation per token", "mean L1 (latent activation units)", "int"),
    ]
    title = "Sparsity on held-out tokens, per variant"
    return _metric_grid(evals, out_dir, "sparsity_metrics", title, panels, colors, true_l0=true_l0)


@_styled
def plot_model_preservation(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """KL and CE scores (1 = as the clean model, 0 = as bad as zero-ablating the hook); KL and CE increase in nats.

    Only variants evaluated with a language model (`model_performance_preservation` in their eval) are
    drawn; None when there are none.
    """
    variants = [v for v in variant_order(evals) if isinstance(_get(evals[v], *_MP), dict)]
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    panels = [
        _Panel("kl_div_score", _MB, "KL-divergence score", "(KL_abl − KL_sae) / KL_abl", ref=1.0, ref_label="perfect"),
        _Panel("ce_loss_score", _MP, "Cross-entropy score", "(CE_abl − CE_sae) / (CE_abl − CE_clean)", ref=1.0, ref_label="perfect"),
        _Panel("kl_div_with_sae", _MB, "KL(clean ‖ SAE spliced in)", "KL divergence (nats / token)"),
        _Panel("ce_loss_increase", _MP, "CE increase with the SAE spliced in", "CE_sae − CE_clean (nats / token)"),
    ]
    fig, axes = _figure(2, 2, (max(11, 1.3 * len(variants) + 2), 7.5))
    data: dict[str, Any] = {"variants": variants, "colors": colors}
    for ax, panel in zip(axes.flat, panels):
        data.update(_metric_bars(ax, panel, variants, evals, colors))
    for ax in axes[0]:
        ax.axhline(0, color="0.15", lw=1.0, zorder=3)
        ax.text(1.01, 0, "as bad as\nzero-ablation", transform=ax.get_yaxis_transform(), va="center", ha="left", fontsize=8)
    for section, key in ((_MP, "ce_loss_without_sae"), (_MP, "ce_loss_with_ablation"), (_MB, "kl_div_with_ablation")):
        data[key] = [_num(_get(evals[v], *section, key)) for v in variants]
    clean = next((c for c in data["ce_loss_without_sae"] if c is not None), None)
    missing = [v for v in variant_order(evals) if v not in variants]
    title = "Model preservation with the SAE spliced in (non-special tokens)"
    title += f";  clean CE = {clean:.3f} nats / token" if clean is not None else ""
    fig.suptitle(title + (f"  (no model eval: {', '.join(missing)})" if missing else ""))
    return _save(fig, out_dir, "model_preservation", data)


_CURVES = [
    ("fvu", "Fraction of variance unexplained", "FVU = 1 − explained variance (log)"),
    ("l0", "L0: active latents per token", "L0 (latents / token)"),
    ("dead_fraction", "Dead latents", "% of latents"),
    ("lr", "Learning rate", "learning rate"),
]


@_styled
def plot_training_metrics(curves: Curves, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """FVU (log), L0, dead fraction and learning rate against training tokens, one line per variant."""
    variants = [v for v in variant_order(curves) if curves[v]]
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    max_tokens = max((_num(r.get("tokens")) or 0 for v in variants for r in curves[v]), default=0)
    scale, unit = (1e6, "M") if max_tokens >= 1e6 else (1e3, "K")
    fig, axes = _figure(2, 2, (11, 7.5), sharex=True)
    data: dict[str, Any] = {"variants": {}, "colors": colors}
    for i, v in enumerate(variants):
        data["variants"][v] = {key: [_nan(r.get(key)) for r in curves[v]] for key in ("tokens", *(c[0] for c in _CURVES))}
        x = np.array(data["variants"][v]["tokens"]) / scale
        lw = 1.5 + 1.5 * (len(variants) - 1 - i) / max(len(variants) - 1, 1)  # earlier lines wider: overlaps stay visible
        for ax, (key, _, _) in zip(axes.flat, _CURVES):
            y = np.array(data["variants"][v][key])
            ax.plot(x, np.where(y > 0, y, np.nan) if key == "fvu" else y, color=colors[v], lw=lw, label=v)
    for ax, (_, title, ylabel) in zip(axes.flat, _CURVES):
        ax.set(title=title, ylabel=ylabel, xlabel=f"training tokens ({unit})" if ax in axes[1] else "")
    axes[0, 0].set_yscale("log")
    for ax in (axes[0, 1], axes[1, 0], axes[1, 1]):  # counts, fractions and rates start at zero
        ax.set_ylim(bottom=0)
    axes[1, 0].set_ylim(top=max(0.05, axes[1, 0].get_ylim()[1]))
    axes[1, 0].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[1, 1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=min(len(variants), 6), title="variant")
    fig.suptitle("Training curves per variant")
    return _save(fig, out_dir, "training_metrics", data)


_TABLE = [
    ("explained\nvariance", (*_RQ, "explained_variance"), "f"),
    ("cosine\nsim.", (*_RQ, "cossim"), "f"),
    ("L0", (*_SP, "l0"), "int"),
    ("dead\nlatents", (*_SP, "dead_fraction"), "pct"),
    ("GT\nMMCS", ("ground_truth", "overall", "mmcs"), "f"),
    ("GT\nrecovered", ("ground_truth", "overall", "frac_recovered"), "pct"),
    ("lag-1\nautocorr.", ("temporal", "autocorr_lag1_mean"), "f"),
]


@_styled
def plot_final_metrics(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Overview: explained variance vs L0 per variant, and a table of key final numbers."""
    variants = variant_order(evals)
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    table = np.array([[_nan(_get(evals[v], *path)) for _, path, _ in _TABLE] for v in variants], dtype=float)
    fig, axes = _figure(1, 2, (13, 1.8 + 0.5 * max(len(variants), 6)), width_ratios=[1, 1.5])
    ax_sc, ax_hm = axes[0]
    for i, (v, ev, l0) in enumerate(zip(variants, table[:, 0], table[:, 2])):
        if np.isfinite(ev) and np.isfinite(l0):
            ax_sc.scatter(l0, ev, s=70, color=colors[v], edgecolor="0.2", zorder=3)
            ax_sc.annotate(v, (l0, ev), xytext=(6, 6 if i % 2 == 0 else -12), textcoords="offset points", fontsize=9)
    if (true_l0 := _true_l0(evals)) is not None:
        ax_sc.axvline(true_l0, ls="--", color="0.15", lw=1.2)
        ax_sc.text(true_l0, 0.98, " true L0", transform=ax_sc.get_xaxis_transform(), fontsize=9, va="top")
    ax_sc.margins(0.2)
    ax_sc.set(xlabel="L0 (active latents / token)", ylabel="explained variance", title="Reconstruction vs sparsity")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-n/a columns
        lo, hi = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
        shade = np.where(np.isfinite(table), np.where(hi > lo, (table - lo) / (hi - lo), 0.5), np.nan)
    notes = [["" if not np.isfinite(x) else _fmt(x, s) for x, (_, _, s) in zip(row, _TABLE)] for row in table]
    columns = [c for c, _, _ in _TABLE]
    sns.heatmap(shade, ax=ax_hm, annot=np.array(notes), fmt="", xticklabels=columns, yticklabels=variants, **_HEAT)
    for i, j in zip(*np.where(~np.isfinite(table))):
        ax_hm.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=9, color="0.5")
    ax_hm.tick_params(axis="y", rotation=0)
    ax_hm.tick_params(axis="x", rotation=0, length=0, labeltop=True, labelbottom=False)
    ax_hm.grid(False)
    ax_hm.set_title("Final metrics (shade: rank within each column, darker = higher)")
    fig.suptitle("Final metrics per variant (held-out tokens)")
    cols = {path[-1]: table[:, j].tolist() for j, (_, path, _) in enumerate(_TABLE)}  # keyed by the eval JSON's names
    return _save(fig, out_dir, "final_metrics", {"variants": variants, "colors": colors, "true_l0": true_l0, **cols})


@_styled
def plot_gt_recovery(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Fraction of true features recovered (cos ≥ threshold) and MMCS by feature kind; None without ground truth."""
    variants = [v for v in variant_order(evals) if isinstance(evals[v].get("ground_truth"), dict)]
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    groups = {
        v: {k: _get(evals[v]["ground_truth"], *(("overall",) if k == "overall" else ("by_kind", k))) for k in GT_KINDS}
        for v in variants
    }
    kinds = [k for k in GT_KINDS if any(isinstance(groups[v][k], dict) for v in variants)]
    n_feat = {k: next((n for v in variants if (n := _get(groups[v][k], "n_features")) is not None), None) for k in kinds}
    threshold = next((t for v in variants if (t := _num(_get(evals[v], "ground_truth", "threshold"))) is not None), None)
    fig, axes = _figure(2, 1, (min(16, max(10, 0.45 * len(kinds) * len(variants) + 4)), 8), sharex=True)
    width, n = 0.8 / len(variants), len(variants)
    data: dict[str, Any] = {"variants": variants, "colors": colors, "threshold": threshold, "kinds": kinds, "n_features": n_feat}
    for ax, key, ylabel in [(axes[0, 0], "frac_recovered", "true features recovered (%)"), (axes[1, 0], "mmcs", "MMCS")]:
        data[key] = {v: [_num(_get(groups[v][k], key)) for k in kinds] for v in variants}
        na_height = _limits(ax, [1.0])
        style = ("pct0" if key == "frac_recovered" else "f2") if n <= 5 else None
        for j, v in enumerate(variants):
            for g, x in enumerate(data[key][v]):
                _bar(ax, g + (j - (n - 1) / 2) * width, x, colors[v], width, na_height, style, rotation=90 if n > 3 else 0)
        ax.set(ylim=(0, 1.18), ylabel=ylabel)
    axes[0, 0].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0, 0].set_title(f"Recovered: a decoder direction with cos ≥ {threshold:g}" if threshold else "Recovered features")
    axes[1, 0].set_title("MMCS: mean over true features of the best decoder cosine")
    axes[1, 0].set_xticks(range(len(kinds)), [f"{k.replace('_', ' ')}\n(n={n_feat[k]})" for k in kinds])
    axes[1, 0].set_xlabel("true feature kind (n = number of true features)")
    fig.legend(handles=[Patch(color=colors[v], label=v) for v in variants], loc="outside right upper", title="variant")
    missing = [v for v in variant_order(evals) if v not in variants]
    fig.suptitle("Ground-truth feature recovery by kind" + (f"  (no ground truth: {', '.join(missing)})" if missing else ""))
    return _save(fig, out_dir, "gt_recovery", data)


_CONTROL_LEGEND = [
    Patch(facecolor="0.5", edgecolor="0.2", label="SAE latents"),
    Patch(facecolor="0.5", alpha=0.45, hatch="///", edgecolor="0.2", label="shuffled control"),
]


@_styled
def plot_temporal_metrics(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Autocorrelation by lag (solid) vs shuffled control (dotted); run-length ratio and MI vs control."""
    variants = [v for v in variant_order(evals) if isinstance(evals[v].get("temporal"), dict)]
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    temporal = {v: evals[v]["temporal"] for v in variants}
    fig, axes = _figure(1, 3, (16, 5.2), width_ratios=[1.4, 1, 1])
    ax = axes[0, 0]
    data: dict[str, Any] = {"variants": variants, "colors": colors, "autocorr": {}}
    for v in variants:
        by_lag = [_nan(x) for x in temporal[v].get("autocorr_mean_by_lag") or []]
        control = [_nan(x) for x in temporal[v].get("autocorr_mean_by_lag_control") or []]
        ax.plot(range(1, len(by_lag) + 1), by_lag, color=colors[v], lw=1.8, marker=".", label=v)
        ax.plot(range(1, len(control) + 1), control, color=colors[v], lw=1.5, ls=":")
        data["autocorr"][v] = {"by_lag": by_lag, "control": control}
    ax.axhline(0, color="0.3", lw=0.8)
    ax.plot([], [], color="0.3", ls=":", label="shuffled control")
    if len(variants) <= 5:
        ax.legend(loc="upper right", title="variant")
    else:
        fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=7, title="variant")
    ax.set(xlabel="lag k (tokens)", ylabel="mean autocorrelation (alive latents)", title="Autocorrelation of activations by lag")
    crowded = len(variants) > 4  # then only the SAE's value is written, upright
    for ax, key, title, ylabel, ref in [
        (axes[0, 1], "run_length_ratio", "Firing run length vs i.i.d.", "mean run length / i.i.d. 1/(1−p)", 1.0),
        (axes[0, 2], "mutual_information", "MI of firing at t and t+1", "mutual information (bits)", None),
    ]:
        actual = [_num(temporal[v].get(f"{key}_mean")) for v in variants]
        control = [_num(temporal[v].get(f"{key}_mean_control")) for v in variants]
        na_height = _limits(ax, actual + control, ref, headroom=0.35 if crowded else 0.2)
        for i, v in enumerate(variants):
            _bar(ax, i - 0.2, actual[i], colors[v], 0.38, na_height, "f", fontsize=7, rotation=90 if crowded else 0)
            _bar(ax, i + 0.2, control[i], colors[v], 0.38, na_height, None if crowded else "f", hatch="///", fontsize=7)
        _ref_line(ax, ref, "i.i.d.")
        ax.set(title=title, ylabel=ylabel)
        ax.legend(handles=_CONTROL_LEGEND, loc="upper right", fontsize=8)
        _variant_ticks(ax, variants)
        data[key] = {"actual": actual, "control": control}
    fig.suptitle("Temporal structure of SAE latents within documents (alive latents; control = positions shuffled)")
    return _save(fig, out_dir, "temporal_metrics", data)


def _cluster_row(sub, v: str, res: dict[str, Any]) -> set[str]:
    """One variant's row: embedding scatter (colour = cluster, marker = kind) and cluster × kind counts."""
    xy = np.array(res.get("embedding_2d") or np.zeros((0, 2)), dtype=float).reshape(-1, 2)
    labels = np.array(res.get("labels") or [], dtype=int)
    kinds = np.array(res.get("latent_kind") or ["unmatched"] * len(labels))
    clusters = sorted(set(labels.tolist()))
    palette = dict(zip(clusters, sns.color_palette("colorblind" if len(clusters) <= 10 else "husl", len(clusters))))
    ax_sc, ax_hm = sub.subplots(1, 2, width_ratios=[1.25, 1])
    for kind in sorted(set(kinds.tolist())):
        m = kinds == kind
        ax_sc.scatter(*xy[m].T, c=[palette[c] for c in labels[m]], marker=_KIND_MARKERS.get(kind, "D"), s=28, alpha=0.75, lw=0)
    if len(clusters) <= 12:
        handles = [Patch(color=palette[c], label=f"cluster {c}") for c in clusters]
        ax_sc.legend(handles=handles, title="cluster", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    ax_sc.set(xlabel="embedding dim 1 (arb. units)", ylabel="embedding dim 2 (arb. units)", title="Latents in 2-D embedding")
    cont = res.get("contingency") or {}
    counts = np.array(cont.get("counts") or np.zeros((0, 0)), dtype=float)
    if not counts.size and res.get("profile"):  # no ground truth: say what each cluster is like instead
        _cluster_profile_table(ax_hm, res["profile"])
        sub.suptitle(f"{v}: clusters of latents by activation pattern (no ground truth to compare with)", fontweight="bold")
        return set(kinds.tolist())
    if counts.size:
        labels_y = [f"cluster {c}" for c in cont.get("clusters", [])]
        kw = {"cmap": "Blues", "cbar_kws": {"label": "latents"}, "xticklabels": cont.get("kinds", []), "yticklabels": labels_y}
        sns.heatmap(counts, ax=ax_hm, annot=True, fmt=".0f", **kw)
        ax_hm.tick_params(axis="y", rotation=0)
    ax_hm.set(xlabel="matched true feature kind", ylabel="", title="Latents per cluster × kind")
    scores = {s: "n/a" if (x := _num(res.get(s))) is None else f"{x:.2f}" for s in ("ari", "nmi")}
    sub.suptitle(f"{v}:  ARI = {scores['ari']},  NMI = {scores['nmi']}  (clusters vs matched true kind)", fontweight="bold")
    return set(kinds.tolist())


def _cluster_profile_table(ax, profile: dict[str, list]) -> None:
    """Cluster x property table: values annotated, shading by rank within each column."""
    cols = [("latents", "n_latents", "{:.0f}"), ("median\nfiring rate", "median_firing_rate", "{:.2%}"),
            ("lag-1\nautocorr.", "mean_autocorr_lag1", "{:.2f}"), ("run length\n/ i.i.d.", "mean_run_length_ratio", "{:.2f}")]
    values = np.array([[_nan(x) for x in profile[key]] for _, key, _ in cols], dtype=float).T
    ranks = np.argsort(np.argsort(np.nan_to_num(values, nan=-np.inf), axis=0), axis=0) / max(len(values) - 1, 1)
    annot = np.array([[fmt.format(x) if np.isfinite(x) else "n/a" for x, (_, _, fmt) in zip(row, cols)] for row in values])
    sns.heatmap(ranks, ax=ax, annot=annot, fmt="", cmap="crest", cbar=False, linewidths=1,
                xticklabels=[c[0] for c in cols], yticklabels=[f"cluster {c}" for c in profile["clusters"]])
    ax.tick_params(axis="y", rotation=0)
    ax.set(title="What each cluster is like (shade: rank in column)")


@_styled
def plot_feature_clusters(cluster_result: Clusters, out_dir: PathLike) -> Path | None:
    """Per variant: 2-D embedding coloured by cluster, marker by matched true kind; cluster × kind counts."""
    variants = variant_order(cluster_result or {})
    if not variants:
        return None
    fig = Figure(figsize=(12, 4.6 * len(variants)), layout="constrained")
    rows = fig.subfigures(len(variants), 1, squeeze=False).flat
    kinds = set().union(*(_cluster_row(sub, v, cluster_result[v]) for sub, v in zip(rows, variants)))
    if kinds - {"unmatched"}:  # a marker legend only where true kinds exist
        handles = [Line2D([], [], ls="", marker=_KIND_MARKERS.get(k, "D"), color="0.3", label=k) for k in sorted(kinds)]
        fig.legend(handles=handles, loc="outside upper center", ncol=max(len(kinds), 1), title="marker = matched true kind")
    keys = ("embedding_2d", "labels", "latent_kind", "contingency", "ari", "nmi", "profile")
    data = {"variants": {v: {k: cluster_result[v].get(k) for k in keys} for v in variants}}
    return _save(fig, out_dir, "feature_clusters", data)


def load_cluster_results(analysis_dir: PathLike) -> Clusters:
    """{variant: clustering result} from `analysis/clusters_<variant>.json` files."""
    files = sorted(Path(analysis_dir).glob("clusters_*.json")) if Path(analysis_dir).is_dir() else []
    return {f.stem.removeprefix("clusters_"): read_json(f) for f in files}


def plot_all(
    evals: Evals, curves: Curves, cluster_results: Clusters | None, out_dir: PathLike, dpi: int = DPI
) -> list[Path]:
    """Every figure the inputs allow (PNG paths), with one colour per variant across all of them."""
    colors = variant_colors({*evals, *curves, *(cluster_results or {})})
    with matplotlib.rc_context({"savefig.dpi": dpi}):
        paths = _draw_all(evals, curves, cluster_results, out_dir, colors)
    return [p for p in paths if p is not None]


def _draw_all(evals: Evals, curves: Curves, cluster_results: Clusters | None, out_dir: PathLike, colors) -> list[Path | None]:
    return [
        plot_reconstruction_metrics(evals, out_dir, colors),
        plot_sparsity_metrics(evals, out_dir, colors),
        plot_model_preservation(evals, out_dir, colors),
        plot_training_metrics(curves, out_dir, colors),
        plot_final_metrics(evals, out_dir, colors),
        plot_gt_recovery(evals, out_dir, colors),
        plot_temporal_metrics(evals, out_dir, colors),
        plot_feature_clusters(cluster_results or {}, out_dir),
    ]
