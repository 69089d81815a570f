"""The report's figures, saved beside it in `<out>/<run>/`: each a PNG with the JSON of the numbers
drawn (`tsae_core.plots`): the verdict grid (`comparison`), the autocorrelation of each variant's
latents by lag beside both shuffles (`autocorrelation`, mean over seeds), and the training EV
(`training_ev`, mean over seeds, the last 20% of the steps shaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

from tsae_core.aggregate import aggregate_seeds
from tsae_core.plots import plot_autocorrelation, plot_comparison, remove_stale_figures, variant_colors
from tsae_core.plots.common import DPI, _figure, _save, _styled
from tsae_core.report.curves import LATE_FRACTION, MeanCurve

EARLY_FRACTION = 0.2
"""The first fraction of the tokens whose EV the training figure's y range leaves out."""


@_styled
def plot_training_ev(curves: dict[str, MeanCurve], out_dir: Path) -> Path | None:
    """`training_ev.png`: training EV against tokens, one line per variant (mean over seeds)."""
    if not curves:
        return None
    colors = variant_colors(curves)
    fig, axes = _figure(1, 1, (10.5, 5.0))
    ax = axes[0, 0]
    last = max(c.tokens[-1] for c in curves.values())
    scale, unit = (1e6, "M") if last >= 1e6 else (1e3, "K")
    for v, c in curves.items():
        ax.plot([t / scale for t in c.tokens], c.ev, color=colors[v], lw=1.8, label=f"{v} ({c.n_seeds} seed{'s' * (c.n_seeds > 1)})")
    ax.axvspan((1 - LATE_FRACTION) * last / scale, last / scale, color="0.9", zorder=0, label=f"last {LATE_FRACTION:.0%} of steps")
    # the y range of the last 80% of training, where a budget's sufficiency is read: the first steps' EV can
    # be far below 0 and would squash the curves that matter into a line
    settled = [e for c in curves.values() for t, e in zip(c.tokens, c.ev) if t >= EARLY_FRACTION * last]
    if settled:
        ax.set_ylim(min(settled) - 0.05, min(1.0, max(settled)) + 0.02)
    ax.set(xlabel=f"training tokens ({unit})", ylabel="explained variance of the training batches (1 − FVU)",
           title=f"Training EV per variant, mean over seeds (y range of the last {1 - EARLY_FRACTION:.0%} of training)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1, frameon=False)
    data = {"late_fraction": LATE_FRACTION, "colors": colors,
            "variants": {v: {"steps": c.steps, "tokens": c.tokens, "ev": c.ev, "n_seeds": c.n_seeds} for v, c in curves.items()}}
    return _save(fig, out_dir, "training_ev", data)


def draw_figures(evals: dict[str, dict[str, Any]], curves: dict[str, MeanCurve], out_dir: Path, dpi: int = DPI) -> dict[str, Path]:
    """Every figure the run allows: name -> PNG path. Figures of an earlier report that this one does not draw are removed."""
    per_variant = {v: e for v, e in aggregate_seeds(evals).items() if not e.get("sweep")}
    with matplotlib.rc_context({"savefig.dpi": dpi}):
        drawn = {"comparison": plot_comparison(evals, out_dir) if evals else None,
                 "autocorrelation": plot_autocorrelation(per_variant, out_dir) if per_variant else None,
                 "training_ev": plot_training_ev(curves, out_dir)}
    paths = {k: p for k, p in drawn.items() if p is not None}
    remove_stale_figures(out_dir, paths.values())
    return paths
