"""Each variant against its token-wise baseline: one row per (variant, metric) with a verdict.

Baseline rule. The baseline of a variant is the token-wise SAE (architecture `standard`) of the same
run with the same activation function; among several, the one with the same d_sae, then the one whose
reconstruction L0 (below) is nearest the variant's (a crosscoder, whose tokens read k T latents,
finds a TopK at k T where the run has one), then the one named after its activation (`topk` for
topk), then the first by name. Standard SAEs are baselines and get no rows of their own; sweep points
(ablations) get none either. Architecture, activation and d_sae are read from each eval's `sae_cfg`.

Statistics. Seeds are common random numbers (`tsae_core.train`): a variant and its baseline trained
with one run seed share the data order and the initial values of their common parameters. With at
least two seeds present on both sides, a row gives the mean over those seeds of the paired difference
(variant minus baseline at the same seed) and its 95% t interval over seeds (n - 1 degrees of
freedom; `interval_kind: paired`). Where the two sides share fewer than two seeds but each has two or
more, the difference of means with a Welch interval (`welch`). The verdict is `better` or `worse`
when the interval excludes 0, by the metric's direction, and `no detectable difference` otherwise.
Metrics without a direction (the shuffled-position controls, position dependence) say `higher` or
`lower` instead. With a single seed on either side, a row gives the difference only and the verdict
`one seed: no interval`.

Directions: higher is better for explained variance, CE loss and KL div scores, ground-truth
recovery, lag-1 autocorrelation (the temporal prior's claim: features persist across positions),
sparse-probing accuracy with the top 1 and top 5 latents, the unlearning score and the autointerp
score; lower is better for the dead fraction, redundancy and the max decoder cosine. Controls carry
no direction: the unlearning score of randomly chosen latents, the autointerp score with shuffled
explanations and the autointerp score of the same SAE recipe trained on a randomly initialised copy of
the model (the random-transformer control, read from the run `autointerp.control_run`). Sparse probing
and unlearning are read from `eval/sparse_probing/` and `eval/unlearning/` and autointerp from
`eval/autointerp/` (`tsae_core.plots.attach_analyses`).

Matched L0. Comparisons are meaningful only at matched sparsity, and sparsity means what a token
really uses: the L0 row reads `sparsity.l0_reconstruction`, the latents a token's reconstruction sums
(a predictive SAE's dense predicted code included, a crosscoder's whole window code), beside the
sparse code's `l0_sparse` (the row's `l0_sparse_variant` / `l0_sparse_baseline`). It says `matched`
when the reconstruction L0s agree within 10% and `not matched: ...` naming both numbers otherwise;
every row of the variant carries `l0_matched`, and where it is false the other rows keep their
statistical verdict but support no claim at matched sparsity.

Health. A variant or baseline with `health.healthy == false` for any seed is left out of every
claim: its rows say `excluded: unhealthy (<problems>)`.

A metric absent from the variant's or the baseline's evals gives no row.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy import stats

from tsae_core.aggregate import group_by_variant
from tsae_core.metric_table import (  # noqa: F401 (the compared metrics, importable from here)
    BY_NAME,
    GT_KINDS,
    METRICS,
    Direction,
    Metric,
    metric_value,
)

LEVEL = 0.95
"""Coverage of the interval on the difference of means."""
L0_TOLERANCE = 0.10
"""Largest relative L0 difference at which a comparison counts as at matched L0."""
BASELINE_ARCHITECTURE = "standard"

def _cfg(es: list[dict[str, Any]]) -> dict[str, Any]:
    return es[0].get("sae_cfg") or {}


L0_METRIC = next(m for m in METRICS if m.direction == "matched")
L0_SPARSE = BY_NAME["l0_sparse"]


def _mean_metric(es: list[dict[str, Any]], metric: Metric) -> float | None:
    values = [x for e in es if (x := metric_value(e, metric)) is not None]
    return float(np.mean(values)) if values else None


def find_baselines(evals: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """Compared variant -> its baseline variant (None when the run has none), by the module's rule."""
    groups = {v: es for v, es in group_by_variant(evals).items() if not es[0].get("sweep")}
    standard = sorted(v for v, es in groups.items() if _cfg(es).get("architecture") == BASELINE_ARCHITECTURE)
    out: dict[str, str | None] = {}
    for v in sorted(set(groups) - set(standard)):
        act, d_sae = _cfg(groups[v]).get("activation"), _cfg(groups[v]).get("d_sae")
        l0 = _mean_metric(groups[v], L0_METRIC)
        same_activation = [b for b in standard if _cfg(groups[b]).get("activation") == act]

        def l0_gap(b: str, l0: float | None = l0) -> float:
            b_l0 = _mean_metric(groups[b], L0_METRIC)
            return abs(math.log(b_l0 / l0)) if l0 and b_l0 else math.inf

        # same d_sae first, then the nearest reconstruction L0, then the one named after the activation, then by name
        out[v] = min(same_activation, key=lambda b: (_cfg(groups[b]).get("d_sae") != d_sae, round(l0_gap(b), 6), b != act, b),
                     default=None)
    return out


def welch_interval(variant: list[float], baseline: list[float], level: float = LEVEL) -> tuple[float, float]:
    """`level` Welch t interval on mean(variant) − mean(baseline); both need two values or more.

    With no spread on either side the interval is the difference itself (zero width)."""
    if np.ptp(variant) == 0 and np.ptp(baseline) == 0:  # exact: no rounding noise from the means
        return float(variant[0] - baseline[0]), float(variant[0] - baseline[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly identical values: still a valid interval
        ci = stats.ttest_ind(variant, baseline, equal_var=False).confidence_interval(level)
    return float(ci.low), float(ci.high)


def _verdict(direction: Direction, lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "one seed: no interval"
    if lo <= 0 <= hi:
        return "no detectable difference"
    up = lo > 0
    if direction in ("neutral", "matched"):
        return "higher" if up else "lower"
    return "better" if up == (direction == "higher") else "worse"


def _problems(name: str, es: list[dict[str, Any]]) -> list[str]:
    """The health problems of an SAE's seeds (`<instance>: <problem>`); empty when every seed is healthy."""
    out = []
    for e in es:
        h = e.get("health")
        if isinstance(h, dict) and h.get("healthy") is False:
            who = e.get("instance") or name
            out += [f"{who}: {p}" for p in h.get("problems") or ["unhealthy"]]
    return out


def paired_interval(differences: list[float], level: float = LEVEL) -> tuple[float, float]:
    """`level` t interval on the mean of paired differences (n - 1 degrees of freedom); n >= 2.

    With no spread the interval is the mean itself (zero width)."""
    d = np.asarray(differences, dtype=float)
    mean = float(d.mean())
    if np.ptp(d) == 0:
        return mean, mean
    half = float(stats.t.ppf(0.5 + level / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)))
    return mean - half, mean + half


def _by_seed(es: list[dict[str, Any]], metric: Metric) -> dict[Any, float]:
    """seed -> the metric's value, for the seeds that have one (an eval without a seed counts as seed None)."""
    return {e.get("seed"): x for e in es if (x := metric_value(e, metric)) is not None}


def _row(variant: str, baseline: str, metric: Metric, v_by: dict[Any, float], b_by: dict[Any, float]) -> dict[str, Any]:
    v, b = list(v_by.values()), list(b_by.values())
    common = [s for s in v_by if s in b_by and s is not None]
    kind, lo, hi = None, None, None
    if len(common) >= 2:  # common random numbers: the difference at each seed
        kind, diffs = "paired", [v_by[s] - b_by[s] for s in common]
        mean_v, mean_b = float(np.mean([v_by[s] for s in common])), float(np.mean([b_by[s] for s in common]))
        lo, hi = paired_interval(diffs)
    else:
        mean_v, mean_b = float(np.mean(v)), float(np.mean(b))
        if len(v) > 1 and len(b) > 1:
            kind = "welch"
            lo, hi = welch_interval(v, b)
    return {
        "variant": variant, "baseline": baseline, "metric": metric.name, "direction": metric.direction,
        "n_variant": len(v), "n_baseline": len(b), "n_paired": len(common), "baseline_value": mean_b, "variant_value": mean_v,
        "difference": mean_v - mean_b, "relative_difference": (mean_v - mean_b) / abs(mean_b) if mean_b else None,
        "interval": None if lo is None else [lo, hi], "half_width": None if lo is None else (hi - lo) / 2,
        "interval_kind": kind, "verdict": _verdict(metric.direction, lo, hi),
    }


def compare_variants(
    evals: dict[str, dict[str, Any]], baselines: dict[str, str | None] | None = None
) -> list[dict[str, Any]]:
    """Rows of every compared variant against its baseline, metric by metric (see the module docstring).

    `evals`: instance name -> eval JSON (several seeds of a variant share its `variant`).
    `baselines`: variant -> baseline variant, replacing `find_baselines` (e.g. to compare two variants).
    Each row: variant, baseline, metric, direction, n_variant, n_baseline (seeds with a value),
    baseline_value, variant_value (means), difference, relative_difference, interval ([low, high] or
    None), half_width, verdict, l0_matched (None when L0 is absent)."""
    groups = group_by_variant(evals)
    rows = []
    for variant, baseline in (find_baselines(evals) if baselines is None else baselines).items():
        if baseline is None:
            continue
        es, bs = groups[variant], groups[baseline]
        sick = _problems(variant, es) + _problems(baseline, bs)
        block = []
        for m in METRICS:
            v, b = _by_seed(es, m), _by_seed(bs, m)
            if v and b:
                block.append(_row(variant, baseline, m, v, b))
        l0 = next((r for r in block if r["direction"] == "matched"), None)
        matched = None if l0 is None or l0["relative_difference"] is None else abs(l0["relative_difference"]) <= L0_TOLERANCE
        if l0 is not None:
            l0["l0_sparse_variant"], l0["l0_sparse_baseline"] = _mean_metric(es, L0_SPARSE), _mean_metric(bs, L0_SPARSE)
        for r in block:
            r["l0_matched"] = matched
            if sick:
                r["verdict"] = f"excluded: unhealthy ({'; '.join(sick)})"
            elif r["direction"] == "matched" and matched is not None:
                r["verdict"] = "matched" if matched else _not_matched(r)
        rows += block
    return rows


def _not_matched(l0_row: dict[str, Any]) -> str:
    """The L0 row's verdict where the reconstruction L0s differ by more than the tolerance, with both numbers."""
    text = (f"not matched: a token's reconstruction reads {l0_row['variant_value']:.1f} latents against "
            f"{l0_row['baseline_value']:.1f} for {l0_row['baseline']}")
    vs, bs = l0_row.get("l0_sparse_variant"), l0_row.get("l0_sparse_baseline")
    if vs is not None and bs is not None and (abs(vs - l0_row["variant_value"]) > 1e-6 or abs(bs - l0_row["baseline_value"]) > 1e-6):
        text += f" (sparse code: {vs:.1f} against {bs:.1f})"
    return text
