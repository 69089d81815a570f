"""The unlearning figure: each variant's score beside its random-latent control, and its sweep
(retain cost against forget effect) with the constraint line and the point that sets the score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from tsae_core.plots.common import (
    Colors,
    PathLike,
    _bar,
    _get,
    _limits,
    _num,
    _save,
    _styled,
    _variant_ticks,
    variant_colors,
    variant_order,
)

_UN = ("eval_result_metrics", "unlearning")


def _labels(result: dict[str, Any]) -> tuple[str, str]:
    """(forget axis label, retain axis label) of the result's source."""
    if result.get("eval_config", {}).get("source") == "synthetic":
        return "forget damage (signal share removed)", "retain damage (edit energy / variance)"
    return "forget CE increase (nats)", "retain CE increase (of clean CE)"


@_styled
def plot_unlearning(results: dict[str, dict[str, Any]], out_dir: PathLike, colors: Colors = None) -> Path | None:
    """`unlearning.png` (+ json): the unlearning score per variant with the random-latent control as a
    hatched bar beside it (skipped variants as n/a), and one panel per evaluated variant with its sweep
    (retain cost against forget effect; ranked latents filled, control hollow), the constraint line and
    the point that sets the score circled. `results` maps variant -> its unlearning JSON dict; None
    when there is nothing to draw."""
    variants = variant_order(results)
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    swept = [v for v in variants if results[v].get("eval_result_details")]
    ncols = min(4, max(1, len(swept)))
    nrows = 1 + -(-len(swept) // ncols)
    fig = Figure(figsize=(max(11, 3.2 * ncols), 3.4 * nrows), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    top = fig.add_subplot(grid[0, :])
    scores = [_num(_get(results[v], *_UN, "unlearning_score")) for v in variants]
    controls = [_num(_get(results[v], *_UN, "control_unlearning_score")) for v in variants]
    na_h = _limits(top, scores + controls, headroom=0.3)
    if any(s is None for s in scores):  # an n/a bar must fit even when every score is 0
        top.set_ylim(top=max(top.get_ylim()[1], 1.25 * na_h))
    for i, (v, s, c) in enumerate(zip(variants, scores, controls)):
        _bar(top, i - 0.19, s, colors[v], 0.38, na_h, "g3")
        if s is not None:
            _bar(top, i + 0.19, c, colors[v], 0.38, na_h, "g3", hatch="//")
    first = results[variants[0]]
    forget_label, retain_label = _labels(first)
    limit = _num(_get(first, "eval_config", "max_retain_increase"))
    top.set(title=f"Unlearning score: largest {forget_label.split(' (')[0]} with retain cost ≤ "
                  f"{limit:.0%} (hatched: random latents)" if limit is not None else "Unlearning score",
            ylabel=forget_label)
    _variant_ticks(top, variants)
    data: dict[str, Any] = {"variants": variants, "colors": colors, "unlearning_score": scores,
                            "control_unlearning_score": controls,
                            "skipped": {v: results[v]["skipped"] for v in variants if results[v].get("skipped")},
                            "max_retain_increase": limit, "sweeps": {}}
    for k, v in enumerate(swept):
        ax = fig.add_subplot(grid[1 + k // ncols, k % ncols])
        data["sweeps"][v] = _sweep_panel(ax, results[v], colors[v], v, limit, forget_label, retain_label)
    fig.suptitle("Unlearning by clamping latents that fire on the forget set (SAEBench-style, offline)")
    return _save(fig, out_dir, "unlearning", data)


def _sweep_panel(ax, result: dict[str, Any], color: str, name: str, limit: float | None, forget_label: str,
                 retain_label: str) -> dict[str, Any]:
    rows = result["eval_result_details"]
    control = [r for run in (result.get("control") or {}).get("runs", []) for r in run["sweep"]]
    x = [r["retain_cost"] for r in rows]
    y = [r["forget_effect"] for r in rows]
    ax.scatter(x, y, s=22, color=color, edgecolor="0.2", lw=0.4, label="ranked latents", zorder=3)
    if control:
        ax.scatter([r["retain_cost"] for r in control], [r["forget_effect"] for r in control], s=22, facecolor="none",
                   edgecolor=color, lw=1.0, label="random latents", zorder=2)
    if limit is not None:
        ax.axvline(limit, ls="--", color="0.15", lw=1.0, zorder=1)
    best = _get(result, *_UN, "best_point")
    if isinstance(best, int) and 0 <= best < len(rows):
        ax.scatter([x[best]], [y[best]], s=140, facecolor="none", edgecolor="black", lw=1.6, zorder=4, label="score")
    ax.set_xscale("symlog", linthresh=max(limit or 0.01, 1e-4) / 10)
    every = x + [r["retain_cost"] for r in control]
    ax.set_xlim(left=min([0.0, *every]), right=max([2 * (limit or 0.01), *every]) * 1.3)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=1))
    ax.set(title=name, xlabel=retain_label, ylabel=forget_label.split(" (")[0])
    ax.legend(loc="upper left", fontsize=7)
    return {"retain_cost": x, "forget_effect": y, "best_point": best,
            "control_retain_cost": [r["retain_cost"] for r in control],
            "control_forget_effect": [r["forget_effect"] for r in control]}
