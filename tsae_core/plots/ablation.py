"""Ablation figures: each headline metric against a swept knob, one figure per swept variant."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from tsae_core.metric_table import BY_NAME, value
from tsae_core.plots.common import Evals, PathLike, _figure, _get, _save, _seed_std, _styled

HEADLINE = [
    ("explained variance", "explained_variance", False, 0.02),
    ("L0 of the sparse code (latents / token)", "l0_sparse", False, 1.0),
    ("dead latents", "dead_fraction", True, 0.1),
    ("lag-1 autocorrelation", "autocorr_lag1", False, 0.02),
    ("true features recovered", "gt_recovered_overall", True, 0.1),
    ("rare slow features recovered", "gt_recovered_rare_slow", True, 0.1),
    ("CE loss score", "ce_loss_score", False, 0.02),
]
"""(title, metric of `tsae_core.metric_table`, is a fraction, smallest y-span drawn); a metric no eval has is left out.
The smallest span keeps differences below noise level from filling a panel."""

BASELINE = "topk"


def knob_order(v: Any) -> tuple[int, float, str]:
    """A sort key for a knob's values: numbers by value (ints and floats mixed), then anything else by its text."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, float(v), "")
    return (1, 0.0, repr(v))


def sweep_groups(evals: Evals) -> dict[str, dict[str, dict[str, Any]]]:
    """swept variant -> sweep name -> {"knobs": [paths], "points": {eval name: knob values}}."""
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for name, e in evals.items():
        point = e.get("sweep")
        if isinstance(point, dict):
            g = groups.setdefault(point["variant"], {}).setdefault(point["sweep"], {"knobs": list(point["knobs"]), "points": {}})
            g["points"][name] = point["knobs"]
    return groups


def _cfg_path(knob: str) -> tuple[str, ...]:
    """Where a knob (`k`, `options.window`) sits in an eval's `sae_cfg`."""
    return tuple(knob.split("."))


def _positions(values: list[Any]) -> tuple[list[float], bool]:
    """x positions for knob values: the numbers themselves (log scale if they span >= 10x), else 0..n-1."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        nums = [float(v) for v in values]
        return nums, min(nums) > 0 and max(nums) / min(nums) >= 10
    return list(range(len(values))), False


def _sweep_series(variant: str, sweep_name: str, sw: dict[str, Any],
                  evals: Evals) -> tuple[list[Any], dict[str, list[str | None]]]:
    """The swept knob's values in order, and per combination of the other knobs a series label ->
    the eval name at each value (None where the grid has no point)."""
    x_knob, other = sw["knobs"][0], sw["knobs"][1:]
    points = dict(sw["points"])
    configured = {k: _get(evals.get(variant, {}).get("sae_cfg", {}), *_cfg_path(k)) for k in sw["knobs"]}
    if variant in evals and None not in configured.values() and configured not in points.values():
        points[variant] = configured  # the variant as configured is the grid point at its own values
    xs = sorted({p[x_knob] for p in points.values()}, key=knob_order)
    series = {}
    for combo in itertools.product(*(sorted({p[k] for p in points.values()}, key=knob_order) for k in other)):
        fixed = dict(zip(other, combo))
        members = {p[x_knob]: n for n, p in points.items() if all(p[k] == fixed[k] for k in other)}
        label = ", ".join(f"{k.rsplit('.', 1)[-1]} = {v}" for k, v in fixed.items()) or sweep_name
        series[label] = [members.get(x) for x in xs]
    return xs, series


def _draw_metric(ax: Axes, pos: list[float], series: dict[str, list[str | None]], evals: Evals, name: str,
                 variant: str) -> dict[str, dict[str, list[Any]]]:
    """One panel's curves of metric `name` (a colour per series, seed std as error bars) and its
    reference lines; returns series label -> {"mean", "seed_std"} per knob value."""
    path = BY_NAME[name].paths[0]
    drawn = {}
    for i, (label, names) in enumerate(series.items()):
        ys = [value(evals[n], name) if n else None for n in names]
        errs = [_seed_std(evals[n], *path) if n else None for n in names]
        y = np.array([np.nan if v is None else v for v in ys])
        ax.errorbar(pos, y, yerr=[0 if e is None else e for e in errs], marker="o", ms=5, lw=1.6, capsize=3,
                    color=f"C{i}", label=label)
        drawn[label] = {"mean": ys, "seed_std": errs}
    for ref, style, ref_label in ((variant, "--", f"{variant} as configured"), (BASELINE, ":", f"{BASELINE} baseline")):
        v = value(evals.get(ref, {}), name)
        if v is not None:
            ax.axhline(v, ls=style, color="0.25", lw=1.2, label=ref_label)
    return drawn


def _format_panel(ax: Axes, pos: list[float], xs: list[Any], log: bool, is_frac: bool, min_span: float, title: str,
                  xlabel: str) -> None:
    """A panel's axes: y span at least `min_span`, fractions as percentages, a tick per knob value."""
    lo, hi = ax.get_ylim()
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - min_span / 2, mid + min_span / 2)
    if not is_frac:
        ax.ticklabel_format(axis="y", useOffset=False)
    if log:
        ax.set_xscale("log")
    ax.set_xticks(pos, [str(x) for x in xs])
    ax.minorticks_off()
    if is_frac:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set(title=title, xlabel=xlabel)


def _figure_legend(fig: Figure, axes: np.ndarray) -> None:
    """One legend under the figure, one entry per label over all panels."""
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5))


@_styled
def plot_ablation(variant: str, sweeps: dict[str, dict[str, Any]], evals: Evals, out_dir: PathLike) -> Path | None:
    """`ablation_<variant>.png`: a row per sweep of `variant`, a column per headline metric. The variant
    as configured is a point of each sweep at its own knob values (and a dashed line); the TopK
    baseline is a dotted line."""
    metrics = [m for m in HEADLINE if any(value(e, m[1]) is not None for e in evals.values())]
    if not metrics or not sweeps:
        return None
    fig, axes = _figure(len(sweeps), len(metrics), (3.1 * len(metrics) + 1, 2.9 * len(sweeps) + 0.8))
    data: dict[str, Any] = {"variant": variant, "sweeps": {}}
    for row, (sweep_name, sw) in enumerate(sweeps.items()):
        x_knob = sw["knobs"][0]
        xs, series = _sweep_series(variant, sweep_name, sw, evals)
        pos, log = _positions(xs)
        data["sweeps"][sweep_name] = {"knob": x_knob, "values": xs, "series": {}}
        for col, (title, name, is_frac, min_span) in enumerate(metrics):
            ax = axes[row, col]
            for label, drawn in _draw_metric(ax, pos, series, evals, name, variant).items():
                data["sweeps"][sweep_name]["series"].setdefault(label, {})[name] = drawn
            _format_panel(ax, pos, xs, log, is_frac, min_span, title if row == 0 else "", x_knob)
        axes[row, 0].set_ylabel(sweep_name)
    _figure_legend(fig, axes)
    fig.suptitle(f"Ablation of {variant}: headline metrics against each swept knob (held-out tokens; mean ± std over seeds)")
    return _save(fig, out_dir, f"ablation_{variant}", data)


def plot_ablations(evals: Evals, out_dir: PathLike) -> list[Path | None]:
    return [plot_ablation(v, sweeps, evals, out_dir) for v, sweeps in sweep_groups(evals).items()]
