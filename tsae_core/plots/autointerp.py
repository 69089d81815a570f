"""`autointerp.png`: each SAE's autointerp score beside its controls and its temporal rescoring.

Per SAE (instance), three bars: the score (mean over latents, ±1 std over latents as the error
bar), the shuffled-explanation control (hatched: the same sequences scored with another latent's
explanation) and the score with the wider temporal window; the dashed line is the chance level of
a scorer naming as many sequences as SAEBench's prompt suggests, at random (mean over SAEs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsae_core.plots.common import PathLike, _bar, _figure, _get, _num, _ref_line, _save, _styled, variant_colors, variant_order

_M = ("eval_result_metrics",)


@_styled
def plot_autointerp(results: dict[str, dict[str, Any]], out_dir: PathLike) -> Path | None:
    """Draw `autointerp.png` from instance -> autointerp JSON; None when there is nothing to draw."""
    if not results:
        return None
    names = variant_order(results)
    colors = variant_colors({results[n].get("variant", n) for n in names})
    fig, axes = _figure(1, 1, (max(5.0, 1.6 * len(names) + 2.5), 3.8))
    ax = axes[0, 0]
    width, rows = 0.26, []
    config = results[names[0]].get("eval_config", {})
    judge = "oracle (true features)" if config.get("backend") == "oracle" else config.get("judge_model")
    for i, n in enumerate(names):
        r = results[n]
        score = _num(_get(r, *_M, "autointerp", "autointerp_score"))
        std = _num(_get(r, *_M, "autointerp", "autointerp_std_dev"))
        shuffled = _num(_get(r, *_M, "controls", "shuffled_explanation_score"))
        temporal = _num(_get(r, *_M, "temporal_window", "autointerp_score"))
        color = colors[r.get("variant", n)]
        _bar(ax, i - width, score, color, width, 0.05, "f2", err=std)
        _bar(ax, i, shuffled, color, width, 0.05, "f2", hatch="//")
        _bar(ax, i + width, temporal, color, width, 0.05, "f2", hatch="..")
        rows.append({"sae": n, "score": score, "std_over_latents": std, "shuffled_explanation": shuffled,
                     "temporal_window": temporal, "n_scored": _get(r, "counts", "n_scored")})
    chances = [c for n in names if (c := _num(_get(results[n], *_M, "controls", "chance_random_guess"))) is not None]
    chance = sum(chances) / len(chances) if chances else None
    _ref_line(ax, chance, "chance")
    window = _get(results[names[0]], *_M, "temporal_window", "window_before")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("fraction of sequences classified correctly")
    ax.set_title(f"Autointerp, judge: {judge}\nper SAE: score (±1 std over latents) | shuffled explanation (//) | "
                 f"{window} tokens before (..)", fontsize=9)
    return _save(fig, out_dir, "autointerp", {"judge": judge, "chance_random_guess": chance, "rows": rows})
