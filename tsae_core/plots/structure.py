"""Figures of how the latents are laid out across positions and in input space: position dependence
and reconstruction error by position, cross-position redundancy, decoder geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.patches import Patch

from tsae_core.plots.common import (
    Colors,
    Evals,
    PathLike,
    _bar,
    _figure,
    _get,
    _label,
    _limits,
    _mark_unhealthy,
    _metric_bars,
    _nan,
    _num,
    _Panel,
    _save,
    _seed_std,
    _styled,
    _unhealthy_note,
    _variant_ticks,
    unhealthy,
    variant_colors,
    variant_order,
)

_DOC_CONTROL_LEGEND = [
    Patch(facecolor="0.5", edgecolor="0.2", label="SAE latents"),
    Patch(facecolor="0.5", alpha=0.45, hatch="///", edgecolor="0.2", label="shuffled within documents"),
]


def _with(evals: Evals, *path: str) -> list[str]:
    """The variants (in display order) whose eval has a number at `path`."""
    return [v for v in variant_order(evals) if _num(_get(evals[v], *path)) is not None]


def _paired_bars(ax, evals: Evals, variants: list[str], colors: dict[str, str], section: tuple[str, ...], key: str,
                 control_key: str) -> dict[str, list]:
    """Per variant a bar of `key` and a hatched bar of its control beside it; returns the numbers drawn."""
    actual = [_num(_get(evals[v], *section, key)) for v in variants]
    control = [_num(_get(evals[v], *section, control_key)) for v in variants]
    crowded = len(variants) > 4  # then only the SAE's value is written, upright
    na_height = _limits(ax, actual + control, headroom=0.35 if crowded else 0.2)
    for i, v in enumerate(variants):
        _bar(ax, i - 0.2, actual[i], colors[v], 0.38, na_height, "f", err=_seed_std(evals[v], *section, key),
             fontsize=7, rotation=90 if crowded else 0)
        _bar(ax, i + 0.2, control[i], colors[v], 0.38, na_height, None if crowded else "f", hatch="///", fontsize=7)
    ax.legend(handles=_DOC_CONTROL_LEGEND, loc="upper right", fontsize=8)
    _variant_ticks(ax, variants, unhealthy(evals, variants))
    return {"actual": actual, "control": control}


def _line_legend(ax, sick: list[str], **kw) -> None:
    legend = ax.legend(**kw)
    _mark_unhealthy(legend.get_texts(), sick)


@_styled
def plot_position_dependence(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Mean position dependence η² (alive latents) vs its within-document control; FVU by position bin."""
    variants = _with(evals, "temporal", "position_dependence_mean")
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    sick = unhealthy(evals, variants)
    fig, axes = _figure(1, 2, (max(13, 1.1 * len(variants) + 8), 5.2), width_ratios=[1, 1.3])
    data: dict[str, Any] = {"variants": variants, "colors": colors, "unhealthy": sick}
    ax = axes[0, 0]
    data["position_dependence"] = _paired_bars(ax, evals, variants, colors, ("temporal",), "position_dependence_mean",
                                               "position_dependence_control_mean")
    ax.set(title="Position dependence of latents", ylabel="mean η² of activation on position bin")
    ax = axes[0, 1]
    data["fvu_by_position"] = {}
    for v in variants:
        curve = _get(evals[v], "temporal", "fvu_by_position") or {}
        bins, fvu = list(curve.get("bins") or []), [_nan(x) for x in curve.get("fvu") or []]
        if bins and len(bins) == len(fvu):
            ax.plot(bins, fvu, color=colors[v], lw=1.8, marker=".", label=_label(v, sick))
            data["fvu_by_position"][v] = {"bins": bins, "fvu": fvu}
    ax.set_xscale("symlog", linthresh=16, linscale=1.5)  # single positions up to 16, then half-octaves
    last = max((c["bins"][-1] for c in data["fvu_by_position"].values()), default=16)
    ticks = [0, 1, 2, 4, 8] + [16 * 2**j for j in range(max(1, int(np.log2(max(last, 16) / 16)) + 1))]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_ylim(bottom=0)
    ax.set(title="Reconstruction error by position in the document", xlabel="position bin (left edge)",
           ylabel="FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² in the bin")
    if data["fvu_by_position"]:
        _line_legend(ax, sick, fontsize=8, title="variant", loc="best")
    fig.suptitle("Position dependence (control: activations shuffled within documents)" + _unhealthy_note(sick))
    return _save(fig, out_dir, "position_dependence", data)


@_styled
def plot_redundancy(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Cross-position redundancy score vs its within-document control per variant, and both by lag."""
    variants = _with(evals, "redundancy", "score")
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    sick = unhealthy(evals, variants)
    fig, axes = _figure(1, 2, (max(13, 1.1 * len(variants) + 8), 5.2))
    data: dict[str, Any] = {"variants": variants, "colors": colors, "unhealthy": sick}
    ax = axes[0, 0]
    data["redundancy"] = _paired_bars(ax, evals, variants, colors, ("redundancy",), "score", "control")
    ax.set(title="Redundancy across positions", ylabel="mean over latents of max corr(f_i(t), f_j(t+δ)), j ≠ i")
    ax = axes[0, 1]
    data["by_lag"], data["top_pairs"] = {}, {}
    for v in variants:
        r = evals[v]["redundancy"]
        score, control = [_nan(x) for x in r.get("score_by_lag") or []], [_nan(x) for x in r.get("control_by_lag") or []]
        lags = list(range(1, len(score) + 1))
        ax.plot(lags, score, color=colors[v], lw=1.8, marker=".", label=_label(v, sick))
        ax.plot(lags[: len(control)], control, color=colors[v], lw=1.5, ls=":")
        data["by_lag"][v] = {"score": score, "control": control}
        data["top_pairs"][v] = (r.get("top_pairs") or [])[:5]
    ax.plot([], [], color="0.3", ls=":", label="within-document control")
    ax.set_xticks(range(1, max((len(d["score"]) for d in data["by_lag"].values()), default=1) + 1))
    ax.set(title="By lag δ", xlabel="lag δ (tokens)", ylabel="mean over latents of max corr at lag δ")
    ax.set_ylim(bottom=0)
    _line_legend(ax, sick, fontsize=8, title="variant", loc="best")
    fig.suptitle("Cross-position redundancy: latent i at t against latent j at t+δ within documents" + _unhealthy_note(sick))
    return _save(fig, out_dir, "redundancy", data)


@_styled
def plot_decoder_geometry(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Distribution of each latent's max decoder cosine with another latent, per variant."""
    variants = _with(evals, "geometry", "max_decoder_cos_mean")
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    sick = unhealthy(evals, variants)
    fig, axes = _figure(1, 3, (max(15, 1.2 * len(variants) + 10), 5.2), width_ratios=[1.4, 1, 1])
    data: dict[str, Any] = {"variants": variants, "colors": colors, "unhealthy": sick, "share_at_least": {}}
    ax = axes[0, 0]
    for v in variants:
        hist = _get(evals[v], "geometry", "max_decoder_cos_histogram") or {}
        counts, edges = np.asarray(hist.get("counts") or [], dtype=float), list(hist.get("edges") or [])
        if counts.size and counts.sum() > 0 and len(edges) == counts.size + 1:
            share = (counts[::-1].cumsum()[::-1] / counts.sum()).tolist()  # share of latents with max cos ≥ left edge
            ax.step(edges[:-1], share, where="post", color=colors[v], lw=1.8, label=_label(v, sick))
            data["share_at_least"][v] = {"cos": edges[:-1], "share": share}
    ax.axvline(0.9, ls="--", color="0.15", lw=1.0)
    ax.set(title="Latents with a near-duplicate direction", xlabel="max cosine with another decoder row",
           ylabel="share of latents at or above", xlim=(0, 1), ylim=(0, 1.02))
    if data["share_at_least"]:
        _line_legend(ax, sick, fontsize=8, title="variant", loc="lower left")
    panels = [
        _Panel("max_decoder_cos_mean", ("geometry",), "Max decoder cosine (◇ p90)", "mean over latents", marker="max_decoder_cos_p90"),
        _Panel("share_above_0_9", ("geometry",), "Near-duplicates (max cos > 0.9)", "% of latents", "pct"),
    ]
    for ax, panel in zip(axes[0, 1:], panels):
        data.update(_metric_bars(ax, panel, variants, evals, colors))
    fig.suptitle("Decoder geometry: each latent's largest cosine with another latent" + _unhealthy_note(sick))
    return _save(fig, out_dir, "decoder_geometry", data)


@_styled
def plot_autocorrelation(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """One panel per variant: mean autocorrelation of its latents by lag, beside both controls (tokens
    shuffled within sequences, and within documents), on a shared scale."""
    variants = [v for v in variant_order(evals) if _get(evals[v], "temporal", "autocorr_mean_by_lag")]
    if not variants:
        return None
    colors = colors or variant_colors(variants)
    sick = unhealthy(evals, variants)
    ncols = min(5, len(variants))
    nrows = -(-len(variants) // ncols)
    fig, axes = _figure(nrows, ncols, (3.1 * ncols, 2.6 * nrows + 0.8), sharex=True, sharey=True)
    data: dict[str, Any] = {"variants": variants, "colors": colors, "unhealthy": sick, "autocorr": {}}
    for ax, v in zip(axes.flat, variants):
        t = evals[v]["temporal"]
        curves = {key: [_nan(x) for x in t.get(name) or []] for key, name in (
            ("by_lag", "autocorr_mean_by_lag"), ("control", "autocorr_mean_by_lag_control"),
            ("doc_shuffled", "autocorr_mean_by_lag_doc_shuffled"))}
        for key, style in (("by_lag", dict(lw=2.0, marker=".", label="SAE latents")),
                           ("control", dict(lw=1.3, ls=":", label="shuffled within sequences")),
                           ("doc_shuffled", dict(lw=1.3, ls="--", label="shuffled within documents"))):
            ax.plot(range(1, len(curves[key]) + 1), curves[key], color=colors[v], **style)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(_label(v, sick), fontsize=10, color="tab:red" if v in sick else "black")
        data["autocorr"][v] = curves
    for ax in axes.flat[len(variants):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("lag (tokens)")
    for ax in axes[:, 0]:
        ax.set_ylabel("mean autocorrelation")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle("Autocorrelation of each SAE's latents by lag within documents, against both controls"
                 + _unhealthy_note(sick))
    return _save(fig, out_dir, "autocorrelation", data)
