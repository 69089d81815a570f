"""The comparison verdict: a grid of variants × metrics against each variant's token-wise baseline,
coloured by verdict and annotated with the difference (± half-width of its 95% interval)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from matplotlib.patches import Patch, Rectangle

from tsae_core.comparison import L0_TOLERANCE, LEVEL, METRICS, compare_variants, find_baselines
from tsae_core.plots.common import UNHEALTHY_COLOR, Evals, PathLike, _figure, _save, _styled, variant_order

RULE = ("baseline: the token-wise SAE (architecture standard) with the same activation, same d_sae where possible; "
        "standard SAEs and sweep points get no rows")
TITLE_RULE = "the token-wise SAE with its activation (and d_sae where possible)"
INTERVAL = f"{LEVEL:.0%} t interval over seeds on the paired difference (variant − baseline at one seed)"
VERDICT_COLORS = {
    "better": "#5aae61",
    "worse": "#d6604d",
    "no detectable difference": "#d9d9d9",
    "higher": "#92c5de",  # a control or undirected metric that moved: not a verdict
    "lower": "#92c5de",
    "matched": "#e5f5e0",
    "not matched": "#fdb863",
    "one seed: no interval": "#f7f7f7",
    "excluded": "white",
}
_LEGEND = {
    "better": "better (interval excludes 0)", "worse": "worse (interval excludes 0)",
    "no detectable difference": "no detectable difference", "higher": "control moved (no direction)",
    "matched": f"L0 matched (within {L0_TOLERANCE:.0%})",
    "not matched": f"L0 not matched (> {L0_TOLERANCE:.0%}): its row faded, no claim",
    "one seed: no interval": "one seed: difference only", "excluded": "excluded: unhealthy SAE",
}
L0_UNMATCHED_COLOR = "#b35806"


def _kind(verdict: str) -> str:
    for prefix in ("excluded", "not matched"):
        if verdict.startswith(prefix):
            return prefix
    return verdict


def _signed(x: float) -> str:
    return f"{x:+.2g}" if x else "0"


def _note(r: dict[str, Any]) -> str:
    """Cell text: the difference (relative for L0) and the interval's half-width."""
    if _kind(r["verdict"]) == "excluded":
        return "excluded"
    if r["direction"] == "matched" and r["relative_difference"] is not None:
        scale, text = abs(r["baseline_value"]), f"{r['relative_difference']:+.1%}"
        return text + (f"\n±{r['half_width'] / scale:.1%}" if r["half_width"] is not None else "")
    return _signed(r["difference"]) + (f"\n±{r['half_width']:.2g}" if r["half_width"] is not None else "")


def _seeds_text(rows: list[dict[str, Any]]) -> str:
    ns = sorted({n for r in rows for n in (r["n_variant"], r["n_baseline"])})
    if ns == [1]:
        return "1 seed per SAE: differences only, no intervals"
    seeds = f"{ns[0]} seeds" if len(ns) == 1 else f"{ns[0]}–{ns[-1]} seeds"
    return f"{seeds} per SAE; cell: difference ± half-width of the {INTERVAL}"


def _row_label(variant: str, rows: list[dict[str, Any]]) -> tuple[str, str]:
    """Tick text and colour of a variant's row: its baseline and seeds; red when excluded, orange at unmatched L0."""
    r = rows[0]
    n_v, n_b = max(x["n_variant"] for x in rows), max(x["n_baseline"] for x in rows)
    text = f"{variant}\nvs {r['baseline']} ({n_v} vs {n_b} seed{'s' if max(n_v, n_b) > 1 else ''})"
    if _kind(r["verdict"]) == "excluded":
        return text + "\nexcluded: unhealthy", UNHEALTHY_COLOR
    if r["l0_matched"] is False:
        return text + "\nL0 not matched", L0_UNMATCHED_COLOR
    return text, "0.1"


@_styled
def plot_comparison(evals: Evals, out_dir: PathLike, baselines: dict[str, str | None] | None = None) -> Path | None:
    """`comparison.png`: every variant against its baseline (see `tsae_core.comparison`), with all rows
    in `comparison.json`. `evals`: instance name -> eval JSON, every seed; None when no variant has a baseline."""
    rule, title_rule = (RULE, TITLE_RULE) if baselines is None else ("given", "chosen by hand, named in each row")
    baselines = find_baselines(evals) if baselines is None else baselines
    rows = compare_variants(evals, baselines)
    if not rows:
        return None
    variants = variant_order({r["variant"] for r in rows})
    metrics = [m for m in METRICS if any(r["metric"] == m.name for r in rows)]
    cell = {(r["variant"], r["metric"]): r for r in rows}
    width = max(8.0, 2.4 + 1.0 * len(metrics))
    fig, axes = _figure(1, 1, (width, 2.2 + 0.62 * len(variants)))
    ax = axes[0, 0]
    for i, v in enumerate(variants):
        for j, m in enumerate(metrics):
            r = cell.get((v, m.name))
            if r is None:  # the metric exists for another variant only
                ax.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=8, color="0.6")
                continue
            kind = _kind(r["verdict"])
            if kind == "excluded":  # the hatch takes the edge colour, so it is drawn beneath the white border
                ax.add_patch(Rectangle((j, i), 1, 1, facecolor=VERDICT_COLORS[kind], edgecolor="0.8", hatch="///", lw=0))
            faded = r["l0_matched"] is False and m.direction != "matched"  # no claim at matched sparsity
            ax.add_patch(Rectangle((j, i), 1, 1, facecolor="none" if kind == "excluded" else VERDICT_COLORS[kind],
                                   edgecolor="white", lw=2, alpha=0.35 if faded else 1.0))
            ax.text(j + 0.5, i + 0.5, _note(r), ha="center", va="center", fontsize=8,
                    color="0.45" if kind == "excluded" else "0.05")
    ax.set_xlim(0, len(metrics))
    ax.set_ylim(len(variants), 0)
    ax.set_xticks([j + 0.5 for j in range(len(metrics))], [m.label for m in metrics], fontsize=8)
    ax.tick_params(axis="x", labeltop=True, labelbottom=False, length=0)
    labels = {v: _row_label(v, [r for r in rows if r["variant"] == v]) for v in variants}
    ax.set_yticks([i + 0.5 for i in range(len(variants))], [labels[v][0] for v in variants], fontsize=8)
    for tick, v in zip(ax.get_yticklabels(), variants):
        tick.set_color(labels[v][1])
    ax.tick_params(axis="y", length=0)
    ax.grid(False)
    for side in ax.spines.values():
        side.set_visible(False)
    shown = {_kind(r["verdict"]) for r in rows}
    handles = [Patch(facecolor=VERDICT_COLORS[k], edgecolor="0.6", hatch="///" if k == "excluded" else None, label=_LEGEND[k])
               for k in _LEGEND if k in shown or (k == "higher" and "lower" in shown)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), int(width // 2.7)), fontsize=8, frameon=False)
    title = [f"Each variant against its baseline: {title_rule}", _seeds_text(rows)]
    fig.suptitle("\n".join(textwrap.fill(t, int(11 * width)) for t in title), fontsize=10)
    data = {"rule": rule, "interval": INTERVAL, "l0_tolerance": L0_TOLERANCE, "baselines": baselines,
            "metrics": [{"name": m.name, "label": m.label.replace("\n", " "), "direction": m.direction,
                         "paths": [".".join(p) for p in m.paths]} for m in metrics],
            "variants": variants, "rows": rows}
    return _save(fig, out_dir, "comparison", data)
