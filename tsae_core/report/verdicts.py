"""The verdict tables: each variant against its baseline, metric by metric, exactly the rows of
`tsae_core.comparison.compare_variants` (baseline and variant means over the paired seeds, the mean
paired difference, its 95% t interval over seeds, the verdict with `not matched` / `excluded` reasons
verbatim), and a compact matrix of the verdicts. Priors come first; controls get blocks of their own.
"""

from __future__ import annotations

from typing import Any

from tsae_core.comparison import L0_TOLERANCE, METRICS
from tsae_core.report.roles import Roles
from tsae_core.report.text import interval, md_table, num, plain_name, signed

DIRECTION_WORDS = {"higher": "higher", "lower": "lower", "matched": f"must match (within {L0_TOLERANCE:.0%})",
                   "neutral": "control: none"}
OVERVIEW_METRICS = ("explained_variance", "ce_loss_score", "l0", "dead_fraction", "autocorr_lag1", "slow_persistence",
                    "redundancy", "max_cos_cofiring", "gt_recovered_overall", "probing_top1")
SYMBOLS = {"better": "✓", "worse": "✗", "no detectable difference": "·", "matched": "=", "not matched": "≠",
           "excluded": "⊘", "one seed: no interval": "?", "higher": "↑", "lower": "↓"}
LEGEND = ("✓ better, ✗ worse (the 95% interval excludes 0), · no detectable difference, = L0 matched, "
          "≠ L0 not matched (no claim at matched sparsity), ⊘ excluded (unhealthy), ? one seed (difference only), "
          "↑ / ↓ a control moved (no direction), blank: not measured")
_LABELS = {m.name: m.label.replace("\n", " ") for m in METRICS}


def verdict_kind(verdict: str) -> str:
    """The verdict without its reason: `not matched: ...` -> `not matched`, `excluded: ...` -> `excluded`."""
    for prefix in ("excluded", "not matched"):
        if verdict.startswith(prefix):
            return prefix
    return verdict


def _seeds(r: dict[str, Any]) -> str:
    if r["interval_kind"] == "paired":
        return f"{r['n_paired']} paired"
    kind = " (Welch)" if r["interval_kind"] == "welch" else ""
    return f"{r['n_variant']} vs {r['n_baseline']}{kind}"


def verdict_table(rows: list[dict[str, Any]]) -> str:
    """One variant's rows against its baseline as a markdown table, in the order of `METRICS`."""
    variant, baseline = rows[0]["variant"], rows[0]["baseline"]
    body = [[plain_name(r["metric"]), DIRECTION_WORDS.get(r["direction"], r["direction"]), num(r["baseline_value"]), num(r["variant_value"]),
             signed(r["difference"]), interval(r["interval"]), _seeds(r), r["verdict"]] for r in rows]
    return md_table(["metric", "better when", baseline, variant, "difference", "95% interval", "seeds", "verdict"], body)


def _block(variant: str, rows: list[dict[str, Any]], label: str) -> str:
    mine = [r for r in rows if r["variant"] == variant]
    if not mine:
        return f"#### {variant}: {label}\n\nNo metric in common with its baseline."
    l0 = next((r for r in mine if r["direction"] == "matched"), None)
    note = ""
    if mine[0]["l0_matched"] is False and l0 is not None:
        note = f"\n\nL0 {l0['verdict']}: the other rows keep their statistical verdict but support no claim at matched sparsity."
    return f"#### {variant} against {mine[0]['baseline']} ({label})\n\n" + verdict_table(mine) + note


def overview_matrix(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """Variants × key metrics, one symbol per verdict (legend below the table)."""
    cell = {(r["variant"], r["metric"]): r for r in rows}
    metrics = [m for m in OVERVIEW_METRICS if any(r["metric"] == m for r in rows)]
    body = []
    for v in variants:
        mine = [r for r in rows if r["variant"] == v]
        if not mine:
            continue
        symbols = [SYMBOLS.get(verdict_kind(cell[v, m]["verdict"]), "") if (v, m) in cell else "" for m in metrics]
        body.append([f"{v} vs {mine[0]['baseline']}", *symbols])
    return md_table(["variant", *(_LABELS[m] for m in metrics)], body) + f"\n\n{LEGEND}."


def verdict_section(rows: list[dict[str, Any]], roles: Roles) -> str:
    """The Verdict section: the overview matrix, then a table per prior, then per control."""
    if not rows:
        return "No variant of this run has a baseline to be compared with (a baseline is a token-wise SAE with the same activation)."
    controls = roles.compared_controls()
    parts = ["Each variant against its baseline at the same seeds (common random numbers): the means over the "
             "paired seeds, the mean paired difference (variant − baseline) and its 95% t interval over seeds. "
             "`better` / `worse`: the interval excludes 0.", overview_matrix(rows, roles.priors + controls)]
    parts += [_block(v, rows, "prior") for v in roles.priors]
    if controls:
        parts.append("**Controls.** These SAEs are built to test an explanation of a prior's effect, not as priors; "
                     "their verdicts say what the explanation alone does.")
        parts += [_block(c, rows, "control of " + ", ".join(roles.controls[c])) for c in controls]
    return "\n\n".join(parts)
