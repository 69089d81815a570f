"""Figures: one function per figure, each saving `<name>.png` and `<name>.json` (the numbers drawn).

Inputs are already-loaded results (see `load_evals`, `load_curves`). Any value may be None: bars are
then drawn hatched with 'n/a', lines break, heatmap cells stay blank; nothing raises. Each variant
keeps one colour (colour-blind palette) in every figure; `plot_all` fixes it over all inputs.
Figures are built on `matplotlib.figure.Figure` (Agg canvas), never through pyplot, so nothing is
shown and nothing stays open.
"""

from __future__ import annotations

import json
import warnings
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
    "RANDOM_TRANSFORMER", "attach_analyses", "check_control_run", "control_eval_dir", "load_cluster_results", "load_curves", "load_evals", "load_run_results", "plot_all", "plot_autocorrelation",
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


RANDOM_TRANSFORMER = "autointerp_random_transformer"
"""Key of the random-transformer control on an SAE's eval: the autointerp result of the SAE of the same
name in the control run (`autointerp.control_run`), trained on a randomly initialised copy of the model."""


def attach_analyses(evals: Evals, eval_dir: PathLike, control_eval_dir: PathLike | None = None) -> Evals:
    """Each eval with its sparse-probing, unlearning and autointerp results under those keys, where
    their files exist (their per-class and per-latent `eval_result_unstructured` left out), so that
    the figures and the comparison read one dict per SAE; the core eval's health goes with them.

    `control_eval_dir`: the `eval` folder of the random-transformer control run; its
    `autointerp/<sae>.json` is attached as `autointerp_random_transformer` to the SAE of the same name
    (with the control run's name under `control_run`); an SAE without such a file gets nothing."""
    out = {}
    for name, e in evals.items():
        e = dict(e)
        for kind in ANALYSES:
            if (result := _analysis(Path(eval_dir) / kind / f"{name}.json")) is not None:
                e[kind] = {**result, "health": e.get("health")}
        if control_eval_dir is not None:
            if (result := _analysis(Path(control_eval_dir) / "autointerp" / f"{name}.json")) is not None:
                e[RANDOM_TRANSFORMER] = {**result, "control_run": Path(control_eval_dir).parent.name}
        out[name] = e
    return out


def _analysis(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return {k: v for k, v in read_json(path).items() if k != "eval_result_unstructured"}


def control_eval_dir(cfg: Any) -> Path | None:
    """The `eval` folder of the random-transformer control run (`autointerp.control_run`), None
    without one. Raises FileNotFoundError, saying how to make it, when that run does not exist."""
    name = cfg.autointerp.control_run
    if not name:
        return None
    run_dir = cfg.run_dir.parent / name
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"autointerp.control_run: no run {name!r} in {run_dir.parent}. Make it (the same variants and autointerp "
            f"settings on a randomly initialised model): tsae run <params> --set run.name={name} --set "
            "source.random_init=true; or leave autointerp.control_run empty")
    return run_dir / "eval"


def check_control_run(evals: Evals, control_dir: Path) -> list[str]:
    """What makes the attached random-transformer control a poor comparison (each also warned):
    a control run whose store was not harvested from a randomly initialised model, and autointerp
    settings or judges that differ between an SAE's result and its control's."""
    problems = []
    try:
        source = read_json(control_dir.parent / "activations" / "manifest.json").get("source", {})
    except (OSError, ValueError):
        source = None
    if source is not None and not source.get("random_init"):
        problems.append(f"control run {control_dir.parent.name!r} was not harvested from a randomly initialised model "
                        "(source.random_init is not set in its activations/manifest.json)")
    for name, e in evals.items():
        if RANDOM_TRANSFORMER in e and "autointerp" in e:
            ours, theirs = e["autointerp"].get("eval_config", {}), e[RANDOM_TRANSFORMER].get("eval_config", {})
            differ = sorted(k for k in {*ours, *theirs} - {"model_name", "dataset_name", "total_tokens"}
                            if ours.get(k) != theirs.get(k))
            if differ:
                problems.append(f"{name}: its autointerp and the random-transformer control's differ in {', '.join(differ)}")
    for p in problems:
        warnings.warn(f"random-transformer control: {p}", stacklevel=2)
    return problems


def load_run_results(cfg: Any) -> tuple[Evals, Curves, Clusters]:
    """The evals (with their sparse probing, unlearning and autointerp, and the random-transformer
    control's autointerp where `autointerp.control_run` is set: `attach_analyses`), training curves and
    clusterings of the SAEs the config names (nothing else in the folders: an SAE removed from the
    params leaves the figures). Clusterings are keyed by variant. A control run that does not exist
    raises FileNotFoundError (`control_eval_dir`)."""
    names = [i.name for i in cfg.instances()]
    control = control_eval_dir(cfg)
    evals = attach_analyses(load_evals(cfg.run_dir / "eval", names), cfg.run_dir / "eval", control)
    if control is not None:
        check_control_run(evals, control)
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
        plot_autointerp({v: e["autointerp"] for v, e in evals.items() if "autointerp" in e}, out_dir,
                        {v: e[RANDOM_TRANSFORMER] for v, e in evals.items() if RANDOM_TRANSFORMER in e}),
    ]

