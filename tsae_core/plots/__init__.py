"""Figures: one function per figure, each saving `<name>.png` and `<name>.json` (the numbers drawn).

Inputs are already-loaded results (see `load_evals`, `load_curves`). Any value may be None: bars are
then drawn hatched with 'n/a', lines break, heatmap cells stay blank; nothing raises. Each variant
keeps one colour (colour-blind palette) in every figure; `plot_all` fixes it over all inputs.
Figures are built on `matplotlib.figure.Figure` (Agg canvas), never through pyplot, so nothing is
shown and nothing stays open.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

from tsae_core.io import read_json
from tsae_core.plots.analysis import plot_feature_clusters, plot_gt_recovery, plot_temporal_metrics
from tsae_core.plots.common import DPI, Clusters, Curves, Evals, PathLike, variant_colors, variant_order
from tsae_core.plots.metrics import (
    plot_final_metrics,
    plot_model_preservation,
    plot_reconstruction_metrics,
    plot_sparsity_metrics,
    plot_training_metrics,
)

__all__ = [
    "load_cluster_results", "load_curves", "load_evals", "plot_all", "plot_feature_clusters", "plot_final_metrics",
    "plot_gt_recovery", "plot_model_preservation", "plot_reconstruction_metrics", "plot_sparsity_metrics",
    "plot_temporal_metrics", "plot_training_metrics", "read_curves", "variant_colors", "variant_order",
]


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

