"""Figures of what the SAEs found: ground-truth recovery, temporal structure, feature clusters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from tsae_core.plots.common import (
    _KIND_MARKERS,
    GT_KINDS,
    Clusters,
    Colors,
    Evals,
    PathLike,
    _bar,
    _figure,
    _get,
    _limits,
    _nan,
    _num,
    _ref_line,
    _save,
    _seed_std,
    _styled,
    _variant_ticks,
    variant_colors,
    variant_order,
)


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
            for g, (kind, x) in enumerate(zip(kinds, data[key][v])):
                err = _seed_std(evals[v], "ground_truth", *(("overall",) if kind == "overall" else ("by_kind", kind)), key)
                _bar(ax, g + (j - (n - 1) / 2) * width, x, colors[v], width, na_height, style, err=err,
                     rotation=90 if n > 3 else 0)
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
    Patch(facecolor="0.5", alpha=0.45, hatch="///", edgecolor="0.2", label="shuffled within sequences"),
]


@_styled
def plot_temporal_metrics(evals: Evals, out_dir: PathLike, colors: Colors = None) -> Path | None:
    """Autocorrelation by lag (solid) vs the sequence-shuffled control (dotted) and the within-document
    control (dashed, where evaluated); run-length ratio and MI vs the sequence-shuffled control."""
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
        doc_control = [_nan(x) for x in temporal[v].get("autocorr_mean_by_lag_doc_shuffled") or []]
        ax.plot(range(1, len(by_lag) + 1), by_lag, color=colors[v], lw=1.8, marker=".", label=v)
        ax.plot(range(1, len(control) + 1), control, color=colors[v], lw=1.5, ls=":")
        ax.plot(range(1, len(doc_control) + 1), doc_control, color=colors[v], lw=1.2, ls="--")
        data["autocorr"][v] = {"by_lag": by_lag, "control": control, "doc_shuffled": doc_control}
    ax.axhline(0, color="0.3", lw=0.8)
    ax.plot([], [], color="0.3", ls=":", label="shuffled within sequences")
    if any(d["doc_shuffled"] for d in data["autocorr"].values()):
        ax.plot([], [], color="0.3", ls="--", label="shuffled within documents")
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
            _bar(ax, i - 0.2, actual[i], colors[v], 0.38, na_height, "f", err=_seed_std(evals[v], "temporal", f"{key}_mean"),
                 fontsize=7, rotation=90 if crowded else 0)
            _bar(ax, i + 0.2, control[i], colors[v], 0.38, na_height, None if crowded else "f", hatch="///", fontsize=7)
        _ref_line(ax, ref, "i.i.d.")
        ax.set(title=title, ylabel=ylabel)
        ax.legend(handles=_CONTROL_LEGEND, loc="upper right", fontsize=8)
        _variant_ticks(ax, variants)
        data[key] = {"actual": actual, "control": control}
    fig.suptitle("Temporal structure of SAE latents within documents (alive latents; controls: tokens shuffled within "
                 "sequences or within documents)")
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
        why = "no latent matches a true feature" if res.get("has_ground_truth") else "no ground truth to compare with"
        sub.suptitle(f"{v}: clusters of latents by activation pattern ({why})", fontweight="bold")
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
    if not profile.get("clusters"):  # an SAE without alive latents has nothing to describe
        ax.axis("off")
        ax.set(title="no alive latents to describe")
        return
    cols = [("latents", "n_latents", "{:.0f}"), ("mean\nfiring rate", "mean_firing_rate", "{:.2%}"),
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


