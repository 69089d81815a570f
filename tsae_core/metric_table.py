"""Where each number sits in an eval JSON, named once: the comparison, the figures, the dashboard and
the reports read a metric by its name here, never by a path typed out again.

`METRICS` are the compared ones (each with the direction that is better, `tsae_core.comparison`);
`SHOWN` adds numbers that figures and tables display but no verdict is drawn on. `value(e, name)`
reads one from an eval JSON (the first of its paths present, as a finite float, else None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

GT_KINDS = ("fast", "slow", "positional", "rare_fast", "rare_slow")
"""Feature kinds of the synthetic source whose recovery is compared (besides `overall`)."""

Direction = Literal["higher", "lower", "matched", "neutral"]
_EM = ("eval_result_metrics",)


@dataclass(frozen=True)
class Metric:
    """One compared number: the first of `paths` present in an eval JSON."""

    name: str
    """Key of the metric in the rows."""
    label: str
    """Column title in the figure."""
    paths: tuple[tuple[str, ...], ...]
    """Where the value sits in an eval JSON; the first present wins."""
    direction: Direction
    """`higher` / `lower`: which way is better; `matched`: must agree (L0); `neutral`: a control."""


METRICS: tuple[Metric, ...] = (
    Metric("explained_variance", "explained\nvariance", ((*_EM, "reconstruction_quality", "explained_variance"),), "higher"),
    Metric("ce_loss_score", "CE loss\nscore", ((*_EM, "model_performance_preservation", "ce_loss_score"),), "higher"),
    Metric("kl_div_score", "KL div\nscore", ((*_EM, "model_behavior_preservation", "kl_div_score"),), "higher"),
    Metric("l0", "L0\n(relative)", ((*_EM, "sparsity", "l0_reconstruction"), (*_EM, "sparsity", "l0_sparse"),
                                     (*_EM, "sparsity", "l0")), "matched"),
    Metric("dead_fraction", "dead\nfraction", ((*_EM, "sparsity", "dead_fraction"),), "lower"),
    Metric("autocorr_lag1", "lag-1\nautocorr.", (("temporal", "autocorr_lag1_mean"),), "higher"),
    Metric("autocorr_lag1_control", "autocorr.\nshuffled", (("temporal", "autocorr_lag1_mean_control"),), "neutral"),
    Metric("autocorr_lag1_doc_shuffled", "autocorr.\ndoc-shuffled", (("temporal", "autocorr_lag1_doc_shuffled_mean"),),
           "neutral"),
    Metric("position_dependence", "position\ndependence", (("temporal", "position_dependence_mean"),), "neutral"),
    Metric("redundancy", "redundancy", (("redundancy", "score"),), "lower"),
    Metric("max_decoder_cos", "max decoder\ncosine", (("geometry", "max_decoder_cos_mean"),), "lower"),
    Metric("max_cos_cofiring", "max decoder cos.\nco-firing", (("geometry", "max_cos_cofiring_mean"),), "lower"),
    Metric("slow_persistence", "slow features'\nlag-1 (matched)", (("ground_truth", "persistence", "slow", "matched_autocorr_lag1"),),
           "higher"),
    Metric("slow_persistence_doc_shuffled", "slow lag-1\ndoc-shuffled",
           (("ground_truth", "persistence", "slow", "matched_autocorr_lag1_doc_shuffled"),), "neutral"),
    Metric("gt_recovered_overall", "GT recovered\noverall", (("ground_truth", "overall", "frac_recovered"),), "higher"),
    *(Metric(f"gt_recovered_{k}", f"GT recovered\n{k.replace('_', ' ')}", (("ground_truth", "by_kind", k, "frac_recovered"),),
             "higher") for k in GT_KINDS),
    Metric("probing_top1", "probing\ntop-1 acc.", (("sparse_probing", *_EM, "sae", "sae_top_1_test_accuracy"),), "higher"),
    Metric("probing_top5", "probing\ntop-5 acc.", (("sparse_probing", *_EM, "sae", "sae_top_5_test_accuracy"),), "higher"),
    Metric("unlearning_score", "unlearning\nscore", (("unlearning", *_EM, "unlearning", "unlearning_score"),), "higher"),
    Metric("unlearning_control", "unlearning\nrandom latents", (("unlearning", *_EM, "unlearning", "control_unlearning_score"),),
           "neutral"),
    Metric("autointerp_score", "autointerp\nscore", (("autointerp", *_EM, "autointerp", "autointerp_score"),), "higher"),
    Metric("autointerp_shuffled_explanation", "autointerp\nshuffled expl.",
           (("autointerp", *_EM, "controls", "shuffled_explanation_score"),), "neutral"),
    Metric("autointerp_random_transformer", "autointerp\nrandom transformer",
           (("autointerp_random_transformer", *_EM, "autointerp", "autointerp_score"),), "neutral"),
)


def metric_value(e: dict[str, Any], metric: Metric) -> float | None:
    """The metric's value in one eval JSON as a finite float, or None when absent or not finite."""
    for path in metric.paths:
        v: Any = e
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


SHOWN: tuple[Metric, ...] = (
    Metric("cossim", "cosine\nsim.", ((*_EM, "reconstruction_quality", "cossim"),), "neutral"),
    Metric("l0_sparse", "sparse-code L0", ((*_EM, "sparsity", "l0_sparse"), (*_EM, "sparsity", "l0")), "neutral"),
    Metric("l0_sae", "L0", ((*_EM, "sparsity", "l0"),), "neutral"),
    Metric("ce_loss_increase", "CE increase\n(nats)", ((*_EM, "model_performance_preservation", "ce_loss_increase"),), "neutral"),
    Metric("gt_mmcs", "GT\nMMCS", (("ground_truth", "overall", "mmcs"),), "neutral"),
    Metric("true_l0", "true L0", (("ground_truth", "true_l0"),), "neutral"),
    Metric("slow_true_persistence", "slow features'\ntrue lag-1", (("ground_truth", "persistence", "slow", "true_autocorr_lag1"),),
           "neutral"),
)
"""Numbers shown beside the compared ones (figures, tables, the dashboard), with no verdict of their own."""

BY_NAME: dict[str, Metric] = {m.name: m for m in (*METRICS, *SHOWN)}


def value(e: dict[str, Any], name: str) -> float | None:
    """The metric `name` (of `METRICS` or `SHOWN`) in one eval JSON, or None when absent or not finite."""
    return metric_value(e, BY_NAME[name])
