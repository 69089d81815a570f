"""`autointerp.png`: each SAE's autointerp score beside its controls and its temporal rescoring.

Per SAE (instance), three bars: the score (mean over latents, ±1 std over latents as the error
bar), the shuffled-explanation control (hatched: the same sequences scored with another latent's
explanation) and the score with the wider temporal window; with a random-transformer control run
(`autointerp.control_run`), a fourth: the score of the SAE of the same name trained on a randomly
initialised copy of the model (hatched `\\`, ±1 std over its latents; n/a where that run has no
result). The dashed line is the chance level of a scorer naming as many sequences as SAEBench's
prompt suggests, at random (mean over SAEs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsae_core.plots.common import PathLike, _bar, _figure, _get, _num, _ref_line, _save, _styled, variant_colors, variant_order

_M = ("eval_result_metrics",)


@_styled
def plot_autointerp(results: dict[str, dict[str, Any]], out_dir: PathLike,
                    random_transformer: dict[str, dict[str, Any]] | None = None) -> Path | None:
    """Draw `autointerp.png` from instance -> autointerp JSON, with `random_transformer` (instance ->
    the control run's autointerp JSON for the same name) as a further bar per SAE when given; None
    when there is nothing to draw."""
    if not results:
        return None
    names = variant_order(results)
    colors = variant_colors({results[n].get("variant", n) for n in names})
    controls = random_transformer or {}
    n_bars = 4 if controls else 3
    fig, axes = _figure(1, 1, (max(5.0, (0.55 * n_bars - 0.05) * len(names) + 2.5), 3.8))
    ax = axes[0, 0]
    width, rows = 0.78 / n_bars, []
    config = results[names[0]].get("eval_config", {})
    judge = "oracle (true features)" if config.get("backend") == "oracle" else config.get("judge_model")
    for i, n in enumerate(names):
        r = results[n]
        score = _num(_get(r, *_M, "autointerp", "autointerp_score"))
        std = _num(_get(r, *_M, "autointerp", "autointerp_std_dev"))
        shuffled = _num(_get(r, *_M, "controls", "shuffled_explanation_score"))
        temporal = _num(_get(r, *_M, "temporal_window", "autointerp_score"))
        color = colors[r.get("variant", n)]
        x0 = i - width * (n_bars - 1) / 2
        _bar(ax, x0, score, color, width, 0.05, "f2", err=std)
        _bar(ax, x0 + width, shuffled, color, width, 0.05, "f2", hatch="//")
        _bar(ax, x0 + 2 * width, temporal, color, width, 0.05, "f2", hatch="..")
        row = {"sae": n, "score": score, "std_over_latents": std, "shuffled_explanation": shuffled,
               "temporal_window": temporal, "n_scored": _get(r, "counts", "n_scored")}
        if controls:
            c = controls.get(n) or {}
            random_score = _num(_get(c, *_M, "autointerp", "autointerp_score"))
            random_std = _num(_get(c, *_M, "autointerp", "autointerp_std_dev"))
            _bar(ax, x0 + 3 * width, random_score, color, width, 0.05, "f2", hatch="\\\\", err=random_std)
            row.update({"random_transformer": random_score, "random_transformer_std_over_latents": random_std,
                        "random_transformer_n_scored": _get(c, "counts", "n_scored")})
        rows.append(row)
    chances = [c for n in names if (c := _num(_get(results[n], *_M, "controls", "chance_random_guess"))) is not None]
    chance = sum(chances) / len(chances) if chances else None
    _ref_line(ax, chance, "chance")
    window = _get(results[names[0]], *_M, "temporal_window", "window_before")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("fraction of sequences classified correctly")
    control_run = next((c.get("control_run") for c in controls.values() if c.get("control_run")), None)
    random_bar = (f"\nrandom transformer (\\\\): the same SAE trained on a randomly initialised model (run {control_run})"
                  if controls else "")
    ax.set_title(f"Autointerp, judge: {judge}\nper SAE: score (±1 std over latents) | shuffled explanation (//) | "
                 f"{window} tokens before (..){random_bar}", fontsize=9)
    return _save(fig, out_dir, "autointerp", {"judge": judge, "chance_random_guess": chance, "random_transformer_run": control_run,
                                              "rows": rows})
