"""Sparse probing: test accuracy of a probe on the k latents with the largest class-mean difference,
against k, per variant, with the same probe on the raw activations as the reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tsae_core.plots.common import Colors, PathLike, _get, _num, _save, _styled, variant_colors, variant_order

_LLM = {"color": "black", "ls": (0, (4, 2)), "lw": 2.6, "marker": "x", "ms": 8, "mew": 2, "zorder": 6}  # dashed and heavier: relu is grey, predictive near-black
_CHANCE = {"color": "0.5", "ls": ":", "lw": 1.0, "zorder": 1}


def _curve(section: dict[str, Any] | None, prefix: str, ks: list[int]) -> list[float | None]:
    return [_num(_get(section, f"{prefix}_top_{k}_test_accuracy")) for k in ks]


def _probed(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The results that hold numbers (a skipped probing has none)."""
    return {v: r for v, r in results.items() if isinstance(r, dict) and isinstance(r.get("eval_result_metrics"), dict)}


def _draw(ax, ks: list[int], curves: dict[str, list[float | None]], llm: list[float | None], colors: dict[str, str],
          title: str, legend_labels: dict[str, str] | None = None, small: bool = False, first: bool = True) -> None:
    for v, ys in curves.items():
        pts = [(k, y) for k, y in zip(ks, ys) if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=4, lw=1.6, color=colors[v], label=(legend_labels or {}).get(v, v), zorder=3)
    pts = [(k, y) for k, y in zip(ks, llm) if y is not None]
    if pts:
        ax.plot(*zip(*pts), label="raw activations", **_LLM)
    ax.axhline(0.5, label="chance", **_CHANCE)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set(title=title, xlabel="k" if small else "k (latents or raw dimensions probed)", ylabel="test accuracy" if first else "")


@_styled
def plot_sparse_probing(results: dict[str, dict[str, Any]], out_dir: PathLike, colors: Colors = None) -> Path | None:
    """`sparse_probing.png` (+ .json): accuracy against k averaged over the labelled sets (top), and
    one small panel per set (bottom); the raw-activation probe heavy dashed black with crosses, chance dotted.

    `results` maps a variant (or SAE name) to its `eval/sparse_probing/<name>.json` dict; skipped
    ones are left out. None when no result holds numbers."""
    results = _probed(results)
    if not results:
        return None
    variants = variant_order(results)
    colors = colors or variant_colors(variants)
    ks = sorted({int(k) for r in results.values() for k in r["eval_config"]["k_values"]})
    first = results[variants[0]]
    datasets = [d["dataset_name"] for d in first.get("eval_result_details", [])]

    mean = {v: _curve(_get(results[v], "eval_result_metrics", "sae"), "sae", ks) for v in variants}
    all_latents = {v: _num(_get(results[v], "eval_result_metrics", "sae", "sae_test_accuracy")) for v in variants}
    llm = _curve(_get(first, "eval_result_metrics", "llm"), "llm", ks)
    llm_all = _num(_get(first, "eval_result_metrics", "llm", "llm_test_accuracy"))
    labels = {v: f"{v} (all latents {a:.3f})" if a is not None else v for v, a in all_latents.items()}

    n = len(datasets)
    panels = n > 1
    fig = Figure(figsize=(max(9.0, 3.4 * n), 8.0 if panels else 5.0), layout="constrained")
    grid = fig.add_gridspec(2, n, height_ratios=[1.6, 1.0]) if panels else fig.add_gridspec(1, 1)
    ax = fig.add_subplot(grid[0, :])
    title = "Sparse probing, mean over labelled sets" + (f" (raw activations, all dims: {llm_all:.3f})" if llm_all is not None else "")
    _draw(ax, ks, mean, llm, colors, title, labels)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="variant")

    per_set: dict[str, Any] = {}
    for i, name in enumerate(datasets):
        rows = {v: next((d for d in results[v].get("eval_result_details", []) if d.get("dataset_name") == name), None)
                for v in variants}
        per_set[name] = {"sae": {v: _curve(d, "sae", ks) for v, d in rows.items()}, "llm": _curve(rows[variants[0]], "llm", ks)}
        if panels:  # one set: its panel would repeat the mean
            _draw(fig.add_subplot(grid[1, i]), ks, per_set[name]["sae"], per_set[name]["llm"], colors,
                  name.removesuffix("_results"), small=True, first=i == 0)
    fig.suptitle("Sparse probing: logistic regression on the k latents with the largest class-mean difference")
    data = {"k_values": ks, "variants": variants, "colors": colors, "mean": mean, "all_latents": all_latents,
            "llm": llm, "llm_all_dims": llm_all, "datasets": per_set}
    return _save(fig, out_dir, "sparse_probing", data)
