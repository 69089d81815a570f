"""How the report prints numbers and tables: one formatter per kind of number, so that every number in
a report is read the same way (and the tests can read it back) and none is typed by hand.

Values print with 4 decimals between 0.001 and 100 000 (3 significant digits in scientific notation
outside), differences with their sign, intervals as `[low, high]`. EV-like fractions (explained
variance, recovery, accuracy, CE / KL scores) are stated in percentage points in the answer paragraph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

MISSING = "n/a"
DECIMALS = 4

PLAIN_NAMES = {
    "explained_variance": "explained variance",
    "ce_loss_score": "CE loss score",
    "kl_div_score": "KL div score",
    "l0": "L0 (reconstruction)",
    "dead_fraction": "dead fraction",
    "autocorr_lag1": "lag-1 autocorrelation",
    "autocorr_lag1_control": "lag-1 autocorrelation, shuffled within sequences",
    "autocorr_lag1_doc_shuffled": "lag-1 autocorrelation, shuffled within documents",
    "position_dependence": "position dependence",
    "redundancy": "redundancy",
    "max_decoder_cos": "max decoder cosine",
    "max_cos_cofiring": "max decoder cosine among co-firing latents",
    "slow_persistence": "slow-feature persistence",
    "slow_persistence_doc_shuffled": "slow-feature persistence, shuffled within documents",
    "gt_recovered_overall": "features recovered",
    "probing_top1": "probing top-1 accuracy",
    "probing_top5": "probing top-5 accuracy",
    "unlearning_score": "unlearning score",
    "unlearning_control": "unlearning score of random latents",
    "autointerp_score": "autointerp score",
    "autointerp_shuffled_explanation": "autointerp score, shuffled explanations",
    "autointerp_random_transformer": "autointerp score on a random transformer",
}
"""Metric key (`tsae_core.comparison.METRICS`) -> the words the report uses for it."""

POINT_METRICS = ("explained_variance", "ce_loss_score", "kl_div_score", "probing_top1", "probing_top5")
"""Fractions whose differences the answer states in percentage points (with `gt_recovered_*`)."""


def plain_name(metric: str) -> str:
    """The words for a metric key; ground-truth recovery by kind reads `<kind> features recovered`."""
    if metric in PLAIN_NAMES:
        return PLAIN_NAMES[metric]
    if metric.startswith("gt_recovered_"):
        return f"{metric.removeprefix('gt_recovered_').replace('_', ' ')} features recovered"
    return metric.replace("_", " ")


def is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def num(x: float | None, sign: bool = False) -> str:
    """A value as the tables print it (`+` in front when `sign`); None and non-finite values print n/a."""
    if not is_finite(x):
        return MISSING
    plus = "+" if sign else ""
    if x == 0 or 10 ** -(DECIMALS - 1) <= abs(x) < 1e5:
        return f"{x:{plus}.{DECIMALS}f}"
    return f"{x:{plus}.3g}"


def signed(x: float | None) -> str:
    return num(x, sign=True)


def interval(bounds: Sequence[float] | None) -> str:
    """`[low, high]` of a 95% interval, or n/a when there is none (one seed)."""
    return MISSING if not bounds else f"[{signed(bounds[0])}, {signed(bounds[1])}]"


def count(n: float | None) -> str:
    """A count with thousands separators (tokens, sequences)."""
    return MISSING if not is_finite(n) else f"{round(n):,}"


def duration(seconds: float | None) -> str:
    """Seconds as s, min or h, whichever reads best."""
    if not is_finite(seconds):
        return MISSING
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h"


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None for one value) and count of the finite values."""
    xs = [float(v) for v in values if is_finite(v)]
    if not xs:
        return None, None, 0
    return float(np.mean(xs)), (float(np.std(xs, ddof=1)) if len(xs) > 1 else None), len(xs)


def mean_std_text(values: Iterable[float | None]) -> str:
    """`mean ± std` over seeds (the mean alone for one seed), n/a without a value."""
    mean, std, _ = mean_std(values)
    if mean is None:
        return MISSING
    return num(mean) if std is None else f"{num(mean)} ± {num(std)}"


def effect(metric: str, difference: float, bounds: Sequence[float] | None) -> str:
    """A difference as the answer states it, its 95% interval in brackets: percentage points for EV-like
    fractions (`-0.62 points [-0.79, -0.46]`), 3 decimals else (2 significant digits under 0.001)."""
    if metric in POINT_METRICS or metric.startswith("gt_recovered_"):
        text = f"{100 * difference:+.2f} points"
        ci = f"[{100 * bounds[0]:+.2f}, {100 * bounds[1]:+.2f}]" if bounds else None
    else:
        three = (lambda x: f"{x:+.3f}") if abs(difference) >= 0.001 or difference == 0 else (lambda x: f"{x:+.2g}")
        text, ci = three(difference), (f"[{three(bounds[0])}, {three(bounds[1])}]" if bounds else None)
    return f"{text} {ci}" if ci else text


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table; `|` inside a cell is escaped, newlines become spaces."""

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
