"""The summary tables: per variant, mean ± std over seeds of the numbers a reader compares first.

Every value is read from the eval JSONs with `tsae_core.comparison.metric_value` (the same paths the
verdicts use), so the summary and the verdict table cannot disagree on what a number is. A column
that no eval of the run has is left out; a cell without a value prints n/a.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tsae_core.aggregate import group_by_variant
from tsae_core.metric_table import BY_NAME, Metric, metric_value
from tsae_core.plots import variant_order
from tsae_core.report.roles import Roles
from tsae_core.report.text import md_table, mean_std_text

SLOW_TRUTH = BY_NAME["slow_true_persistence"]
"""The lag-1 autocorrelation of the slow true features themselves: what a perfect SAE's matched latents would show."""
L0_SPARSE = BY_NAME["l0_sparse"]


@dataclass(frozen=True)
class Table:
    """One summary table: a title and its (column title, metric) pairs."""

    title: str
    columns: tuple[tuple[str, Metric], ...]


TABLES = (
    Table("Reconstruction and sparsity", (
        ("EV", BY_NAME["explained_variance"]), ("CE loss score", BY_NAME["ce_loss_score"]),
        ("KL div score", BY_NAME["kl_div_score"]), ("L0 reconstruction", BY_NAME["l0"]),
        ("L0 sparse code", L0_SPARSE), ("dead fraction", BY_NAME["dead_fraction"]))),
    Table("Temporal statistics and structure", (
        ("lag-1 autocorr.", BY_NAME["autocorr_lag1"]), ("shuffled in sequences", BY_NAME["autocorr_lag1_control"]),
        ("shuffled in documents", BY_NAME["autocorr_lag1_doc_shuffled"]), ("redundancy", BY_NAME["redundancy"]),
        ("max cos co-firing", BY_NAME["max_cos_cofiring"]))),
    Table("Ground truth (synthetic source)", (
        ("recovered overall", BY_NAME["gt_recovered_overall"]), ("recovered rare slow", BY_NAME["gt_recovered_rare_slow"]),
        ("slow persistence", BY_NAME["slow_persistence"]),
        ("its doc-shuffled control", BY_NAME["slow_persistence_doc_shuffled"]), ("truth", SLOW_TRUTH))),
)


def summary_values(evals: dict[str, dict[str, Any]], metric: Metric) -> dict[str, list[float | None]]:
    """variant -> the metric at each of its seeds (in seed order)."""
    return {v: [metric_value(e, metric) for e in es] for v, es in group_by_variant(evals).items()}


def summary_table(evals: dict[str, dict[str, Any]], table: Table, roles: Roles) -> str | None:
    """One summary table in markdown (None when none of its columns has a value)."""
    columns = [(title, m) for title, m in table.columns if any(metric_value(e, m) is not None for e in evals.values())]
    if not columns:
        return None
    groups = group_by_variant(evals)
    values = {m.name: summary_values(evals, m) for _, m in columns}
    rows = [[v, roles.describe(v), len(groups[v]), *(mean_std_text(values[m.name][v]) for _, m in columns)]
            for v in variant_order(groups)]
    return f"**{table.title}** (mean ± std over seeds)\n\n" + md_table(["variant", "role", "seeds", *(t for t, _ in columns)], rows)


def summary_section(evals: dict[str, dict[str, Any]], roles: Roles) -> str:
    """The Summary section: every table the run's evals allow."""
    tables = [t for table in TABLES if (t := summary_table(evals, table, roles)) is not None]
    return "\n\n".join(tables) if tables else "No SAE of this run has been evaluated."
