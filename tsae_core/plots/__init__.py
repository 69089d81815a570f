"""Figures: one function per figure, each saving `<name>.png` and `<name>.json` (the numbers drawn).

Inputs are already-loaded results (see `load_evals`, `load_curves`). Any value may be None: bars are
then drawn hatched with 'n/a', lines break, heatmap cells stay blank; nothing raises. Each variant
keeps one colour (colour-blind palette) in every figure; `plot_all` fixes it over all inputs.
Figures are built on `matplotlib.figure.Figure` (Agg canvas), never through pyplot, so nothing is
shown and nothing stays open.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

from tsae_core.aggregate import aggregate_seeds
from tsae_core.io import read_json
from tsae_core.plots.ablation import plot_ablations
from tsae_core.plots.analysis import plot_feature_clusters, plot_gt_recovery, plot_temporal_metrics
from tsae_core.plots.autointerp import plot_autointerp
from tsae_core.plots.common import DPI, Clusters, Curves, Evals, PathLike, variant_colors, variant_order
from tsae_core.plots.comparison import plot_comparison
from tsae_core.plots.metrics import (
    plot_final_metrics,
    plot_model_preservation,
    plot_reconstruction_metrics,
    plot_sparsity_metrics,
    plot_training_metrics,
)
from tsae_core.plots.probing import plot_sparse_probing
from tsae_core.plots.structure import plot_autocorrelation, plot_decoder_geometry, plot_position_dependence, plot_redundancy
from tsae_core.plots.unlearning import plot_unlearning

__all__ = [
    "attach_analyses", "load_cluster_results", "load_curves", "load_evals", "load_run_results", "plot_all", "plot_autocorrelation",
    "plot_autointerp",
    "plot_comparison", "plot_decoder_geometry", "plot_feature_clusters", "plot_final_metrics", "plot_gt_recovery",
    "plot_model_preservation", "plot_position_dependence", "plot_reconstruction_metrics", "plot_redundancy",
    "plot_sparse_probing", "plot_sparsity_metrics", "plot_temporal_metrics", "plot_training_metrics", "plot_unlearning",
    "read_curves", "variant_colors", "variant_order",
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


def load_evals(eval_dir: PathLike, names: Iterable[str] | None = None) -> Evals:
    """SAE name -> eval JSON for every `<name>.json` in `eval_dir` (sorted by name), or only the given names."""
    files = sorted(Path(eval_dir).glob("*.json")) if names is None else [Path(eval_dir) / f"{n}.json" for n in names]
    return {p.stem: read_json(p) for p in files if not p.name.startswith(".") and p.is_file()}


def load_curves(train_dir: PathLike, names: Iterable[str] | None = None) -> Curves:
    """SAE name -> training-curve records for every `<name>.jsonl` in `train_dir`, or only the given names."""
    files = sorted(Path(train_dir).glob("*.jsonl")) if names is None else [Path(train_dir) / f"{n}.jsonl" for n in names]
    return {p.stem: read_curves(p) for p in files if not p.name.startswith(".") and p.is_file()}


ANALYSES = ("sparse_probing", "unlearning", "autointerp")
"""Evaluations written beside the core eval, as `eval/<kind>/<sae>.json`."""


def attach_analyses(evals: Evals, eval_dir: PathLike) -> Evals:
    """Each eval with its sparse-probing, unlearning and autointerp results under those keys, where
    their files exist (their per-class and per-latent `eval_result_unstructured` left out), so that
    the figures and the comparison read one dict per SAE; the core eval's health goes with them."""
    out = {}
    for name, e in evals.items():
        e = dict(e)
        for kind in ANALYSES:
            path = Path(eval_dir) / kind / f"{name}.json"
            if path.is_file():
                result = {k: v for k, v in read_json(path).items() if k != "eval_result_unstructured"}
                e[kind] = {**result, "health": e.get("health")}
        out[name] = e
    return out


def load_run_results(cfg: Any) -> tuple[Evals, Curves, Clusters]:
    """The evals (with their sparse probing, unlearning and autointerp, `attach_analyses`), training curves and
    clusterings of the SAEs the config names (nothing else in the folders: an SAE removed from the
    params leaves the figures). Clusterings are keyed by variant."""
    names = [i.name for i in cfg.instances()]
    evals = attach_analyses(load_evals(cfg.run_dir / "eval", names), cfg.run_dir / "eval")
    curves = load_curves(cfg.run_dir / "train", names)
    compared = cfg.compared_instances()
    clusters = load_cluster_results(cfg.run_dir / "analysis", [i.name for i in compared])
    return evals, curves, {i.variant: clusters[i.name] for i in compared if i.name in clusters}


# ---------------------------------------------------------------- shared helpers


def load_cluster_results(analysis_dir: PathLike, names: Iterable[str] | None = None) -> Clusters:
    """{variant: clustering result} from `analysis/clusters_<variant>.json` files (all, or the given names)."""
    if names is not None:
        files = [f for n in names if (f := Path(analysis_dir) / f"clusters_{n}.json").is_file()]
    else:
        files = sorted(Path(analysis_dir).glob("clusters_*.json")) if Path(analysis_dir).is_dir() else []
    return {f.stem.removeprefix("clusters_"): read_json(f) for f in files}


def plot_all(
    evals: Evals, curves: Curves, cluster_results: Clusters | None, out_dir: PathLike, dpi: int = DPI
) -> list[Path]:
    """Every figure the inputs allow (PNG paths), with one colour per variant across all of them.

    Evals of several seeds of a variant are drawn as one bar (mean, ±1 std error bar); sweep points
    go to the ablation figures only, so the comparison figures keep one bar per variant. The verdict
    figure (`comparison.png`, see `tsae_core.comparison`) takes every seed, for its intervals."""
    per_variant = aggregate_seeds(evals)
    main = {v: e for v, e in per_variant.items() if not e.get("sweep")}
    curves = _curves_per_variant(curves, evals, main)
    colors = variant_colors({*main, *curves, *(cluster_results or {})})
    with matplotlib.rc_context({"savefig.dpi": dpi}):
        paths = _draw_all(main, curves, cluster_results, out_dir, colors) + plot_ablations(per_variant, out_dir)
        paths.append(plot_comparison(evals, out_dir))
    paths = [p for p in paths if p is not None]
    remove_stale_figures(out_dir, paths)
    return paths


def remove_stale_figures(out_dir: PathLike, current: Iterable[Path]) -> list[Path]:
    """Delete figures (a PNG with its JSON of numbers) that this drawing did not produce, e.g. the
    ablation figure of a variant since removed from the params: the folder shows this run only."""
    keep = {Path(p).name for p in current}
    removed = []
    for png in sorted(Path(out_dir).glob("*.png")) if Path(out_dir).is_dir() else []:
        numbers = png.with_suffix(".json")
        if png.name not in keep and numbers.is_file():
            png.unlink()
            numbers.unlink()
            removed.append(png)
    return removed


def _curves_per_variant(curves: Curves, evals: Evals, keep: Iterable[str]) -> Curves:
    """One training curve per compared variant: its first seed's."""
    out: Curves = {}
    for name in sorted(curves):
        variant = (evals.get(name) or {}).get("variant", name)
        if variant in keep and variant not in out:
            out[variant] = curves[name]
    return out


def _draw_all(evals: Evals, curves: Curves, cluster_results: Clusters | None, out_dir: PathLike, colors) -> list[Path | None]:
    return [
        plot_reconstruction_metrics(evals, out_dir, colors),
        plot_sparsity_metrics(evals, out_dir, colors),
        plot_model_preservation(evals, out_dir, colors),
        plot_training_metrics(curves, out_dir, colors),
        plot_final_metrics(evals, out_dir, colors),
        plot_gt_recovery(evals, out_dir, colors),
        plot_temporal_metrics(evals, out_dir, colors),
        plot_autocorrelation(evals, out_dir, colors),
        plot_position_dependence(evals, out_dir, colors),
        plot_redundancy(evals, out_dir, colors),
        plot_decoder_geometry(evals, out_dir, colors),
        plot_feature_clusters(cluster_results or {}, out_dir),
        plot_sparse_probing({v: e["sparse_probing"] for v, e in evals.items() if "sparse_probing" in e}, out_dir, colors),
        plot_unlearning({v: e["unlearning"] for v, e in evals.items() if "unlearning" in e}, out_dir, colors),
        plot_autointerp({v: e["autointerp"] for v, e in evals.items() if "autointerp" in e}, out_dir),
    ]

