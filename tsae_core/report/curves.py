"""Training curves as evidence that the budget sufficed: explained variance (1 − FVU of the training
batches) against training tokens, the mean over seeds per variant, and how much of it the last 20% of
the steps still added.

The gain is the mean-over-seeds EV at the last record minus that at the record nearest 80% of the
steps. Under `PLATEAU_POINTS` percentage points the curve had flattened; above, EV was still rising
when training stopped, and a longer budget would move the numbers. (The learning rate decays over the
last `train.decay_fraction` of the steps, which itself lowers the loss a little.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tsae_core.plots import variant_order
from tsae_core.report.loading import RunResults
from tsae_core.report.text import is_finite, md_table, num

LATE_FRACTION = 0.2
PLATEAU_POINTS = 1.0


@dataclass(frozen=True)
class MeanCurve:
    """One variant's training EV, the mean over its seeds at the steps every seed recorded."""

    variant: str
    steps: list[int]
    tokens: list[float]
    ev: list[float]
    n_seeds: int


def _ev_by_step(records: list[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """step -> (tokens, EV) of the records with a finite FVU."""
    return {int(r["step"]): (float(r.get("tokens") or 0), 1.0 - float(r["fvu"]))
            for r in records if is_finite(r.get("fvu")) and is_finite(r.get("step"))}


def mean_curves(run: RunResults) -> dict[str, MeanCurve]:
    """variant -> its mean training-EV curve (sweep points included), for the variants with curves."""
    by_variant: dict[str, list[dict[int, tuple[float, float]]]] = {}
    for instance, records in sorted(run.curves.items()):
        if (points := _ev_by_step(records)):
            by_variant.setdefault(run.variant_of(instance), []).append(points)
    out = {}
    for v in variant_order(by_variant):
        seeds = by_variant[v]
        steps = sorted(set.intersection(*(set(s) for s in seeds)))
        if steps:
            out[v] = MeanCurve(v, steps, [float(np.mean([s[t][0] for s in seeds])) for t in steps],
                               [float(np.mean([s[t][1] for s in seeds])) for t in steps], len(seeds))
    return out


def late_gain(curve: MeanCurve, fraction: float = LATE_FRACTION) -> dict[str, float] | None:
    """EV at the last record minus EV at the record nearest (1 − fraction) of the steps; None with under 2 records."""
    if len(curve.steps) < 2:
        return None
    target = (1 - fraction) * curve.steps[-1]
    i = min(range(len(curve.steps) - 1), key=lambda j: (abs(curve.steps[j] - target), -curve.steps[j]))
    return {"from_step": curve.steps[i], "to_step": curve.steps[-1], "ev_from": curve.ev[i], "ev_to": curve.ev[-1],
            "gain": curve.ev[-1] - curve.ev[i]}


def budget_sentence(variant: str, gain: dict[str, float]) -> str:
    """Whether the curve of `variant` had flattened, in words, with its numbers."""
    points = 100 * gain["gain"]
    text = (f"{variant}'s training EV moved by {points:+.2f} points over the last {LATE_FRACTION:.0%} of its steps "
            f"(from {num(gain['ev_from'])} at step {gain['from_step']} to {num(gain['ev_to'])} at step {gain['to_step']})")
    if abs(points) < PLATEAU_POINTS:
        return text + f": under {PLATEAU_POINTS:g} point, the curve had flattened and the budget sufficed by this measure."
    return text + f": {PLATEAU_POINTS:g} point or more, EV was still moving when training stopped; a longer budget would change the numbers."


def curves_section(curves: dict[str, MeanCurve], reference: list[str], figure: str | None) -> str:
    """The section: a table of each variant's late gain, the sentence for the reference variants (the
    baselines), and the figure."""
    if not curves:
        return "No training curves in this run (train/<sae>.jsonl)."
    gains = {v: late_gain(c) for v, c in curves.items()}
    rows = [[v, c.n_seeds, c.steps[-1], num(c.ev[-1]), "n/a" if (g := gains[v]) is None else f"{num(g['ev_from'])} (step {g['from_step']})",
             "n/a" if g is None else f"{100 * g['gain']:+.2f}"] for v, c in curves.items()]
    parts = ["Explained variance of the training batches (1 − FVU), mean over seeds.",
             md_table(["variant", "seeds", "steps", "final EV", f"EV at {1 - LATE_FRACTION:.0%} of steps",
                       f"gain over the last {LATE_FRACTION:.0%} (points)"], rows)]
    parts += [budget_sentence(v, gains[v]) for v in reference if gains.get(v) is not None]
    if figure:
        parts.append(f"![Training EV per variant]({figure})")
    return "\n\n".join(parts)
