"""Figures of the core metrics per variant: reconstruction, sparsity, model preservation, training
curves and the final overview."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.ticker import PercentFormatter

from tsae_core.metric_table import value
from tsae_core.plots.common import (
    _HEAT,
    _MB,
    _MP,
    _RQ,
    _SH,
    _SP,
    UNHEALTHY_COLOR,
    Colors,
    Curves,
    Evals,
    PathLike,
    _figure,
    _fmt,
    _get,
    _label,
    _mark_unhealthy,
    _metric_bars,
    _metric_grid,
    _nan,
    _num,
    _Panel,
    _save,
    _styled,
    _true_l0,
    _unhealthy_note,
    unhealthy,
    variant_colors,
    variant_order,
)


@_styled
def plot_reconstruction_metrics(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Explained variance (legacy as a diamond), cosine similarity, MSE and ‖x̂‖/‖x‖ per variant."""
    panels = [
        _Panel(
            "explained_variance", _RQ, "Explained variance (◇ legacy)", "explained variance", marker="explained_variance_legacy"
        ),
        _Panel("cossim", _RQ, "Cosine similarity cos(x, x̂)", "mean cosine similarity"),
        _Panel("mse", _RQ, "Mean squared error", "‖x − x̂‖² per token (activation units²)", "g3"),
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
    data: dict[str, Any] = {"variants": variants, "colors": colors, "unhealthy": unhealthy(evals, variants)}
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
    fig.suptitle(title + (f"  (no model eval: {', '.join(missing)})" if missing else "") + _unhealthy_note(data["unhealthy"]))
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
    ("explained\nvariance", "explained_variance", "f"),
    ("cosine\nsim.", "cossim", "f"),
    ("L0\n(sparse code)", "l0_sparse", "int"),  # the sparse code's L0 (the crosscoder's per window position)
    ("dead\nlatents", "dead_fraction", "pct"),
    ("GT\nMMCS", "gt_mmcs", "f"),
    ("GT\nrecovered", "gt_recovered_overall", "pct"),
    ("lag-1\nautocorr.", "autocorr_lag1", "f"),
]
"""(column title, metric of `tsae_core.metric_table`, number format)."""


@_styled
def plot_final_metrics(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Overview: explained variance vs L0 per variant, and a table of key final numbers."""
    variants = variant_order(evals)
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    table = np.array([[_nan(value(evals[v], name)) for _, name, _ in _TABLE] for v in variants], dtype=float)
    fig, axes = _figure(1, 2, (13, 1.8 + 0.5 * max(len(variants), 6)), width_ratios=[1, 1.5])
    ax_sc, ax_hm = axes[0]
    sick = unhealthy(evals, variants)
    for v, ev, l0 in zip(variants, table[:, 0], table[:, 2]):
        if np.isfinite(ev) and np.isfinite(l0):
            ax_sc.scatter(l0, ev, s=70, color=colors[v], edgecolor=UNHEALTHY_COLOR if v in sick else "0.2",
                          marker="X" if v in sick else "o", zorder=3, label=_label(v, sick))
    # a legend, not labels at the points: at matched L0 every variant sits on one vertical line
    legend = ax_sc.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.12), ncol=3, frameon=False)
    _mark_unhealthy(legend.get_texts(), sick)
    if (true_l0 := _true_l0(evals)) is not None:
        ax_sc.axvline(true_l0, ls="--", color="0.15", lw=1.2)
        ax_sc.text(true_l0, 0.98, " true L0", transform=ax_sc.get_xaxis_transform(), fontsize=9, va="top")
    ax_sc.margins(0.2)
    ax_sc.set(xlabel="L0 of the sparse code (active latents / token)", ylabel="explained variance", title="Reconstruction vs sparsity")
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-n/a columns
        lo, hi = np.nanmin(table, axis=0), np.nanmax(table, axis=0)
        shade = np.where(np.isfinite(table), np.where(hi > lo, (table - lo) / (hi - lo), 0.5), np.nan)
    notes = [["" if not np.isfinite(x) else _fmt(x, s) for x, (_, _, s) in zip(row, _TABLE)] for row in table]
    columns = [c for c, _, _ in _TABLE]
    sns.heatmap(shade, ax=ax_hm, annot=np.array(notes), fmt="", xticklabels=columns,
                yticklabels=[_label(v, sick) for v in variants], **_HEAT)
    _mark_unhealthy(ax_hm.get_yticklabels(), sick)
    for i, j in zip(*np.where(~np.isfinite(table))):
        ax_hm.text(j + 0.5, i + 0.5, "n/a", ha="center", va="center", fontsize=9, color="0.5")
    ax_hm.tick_params(axis="y", rotation=0)
    ax_hm.tick_params(axis="x", rotation=0, length=0, labeltop=True, labelbottom=False)
    ax_hm.grid(False)
    ax_hm.set_title("Final metrics (shade: rank within each column, darker = higher)")
    fig.suptitle("Final metrics per variant (held-out tokens)" + _unhealthy_note(sick))
    cols = {name: table[:, j].tolist() for j, (_, name, _) in enumerate(_TABLE)}  # keyed by the metric's name
    return _save(fig, out_dir, "final_metrics", {"variants": variants, "colors": colors, "true_l0": true_l0,
                                                 "unhealthy": sick, **cols})


