"""Temporal statistics beside their controls, and each temporal prior beside its smoothing control.

A lag-1 autocorrelation means little alone: latents of any SAE persist where the data does. Each is
printed beside the same latents with tokens shuffled within sequences and within documents, and the
excess over the within-document shuffle (mean over seeds of the per-seed excess). On a synthetic source
the latents matched to slow true features give the targeted statistic, beside its shuffle and the
truth (the true features' own lag-1).

A prior's persistence gain over its baseline is then set beside its control's (the pooled SAE, which
only smooths codes over neighbouring tokens): both gains against the same baseline at the same
seeds, both EV changes, and the prior against the control directly (paired by seed). The gain
`exceeds the control's` when that direct comparison says `better`; otherwise it is within what
smoothing gives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tsae_core.aggregate import group_by_variant
from tsae_core.comparison import compare_variants, metric_value
from tsae_core.metric_table import BY_NAME
from tsae_core.plots import variant_order
from tsae_core.report.roles import Roles
from tsae_core.report.summary import SLOW_TRUTH
from tsae_core.report.text import interval, md_table, mean_std_text, plain_name, signed

PERSISTENCE_METRICS = ("slow_persistence", "autocorr_lag1")
"""The statistics a temporal prior claims to raise, the targeted one (synthetic sources) first."""


def _excess(es: list[dict[str, Any]], stat: str, control: str) -> list[float | None]:
    out = []
    for e in es:
        a, b = metric_value(e, BY_NAME[stat]), metric_value(e, BY_NAME[control])
        out.append(None if a is None or b is None else a - b)
    return out


def temporal_table(evals: dict[str, dict[str, Any]]) -> str | None:
    """Per variant: lag-1 with both shuffles and its excess; slow persistence with its control, excess and truth."""
    groups = group_by_variant(evals)
    columns = [("lag-1", lambda es: [metric_value(e, BY_NAME["autocorr_lag1"]) for e in es]),
               ("shuffled in sequences", lambda es: [metric_value(e, BY_NAME["autocorr_lag1_control"]) for e in es]),
               ("shuffled in documents", lambda es: [metric_value(e, BY_NAME["autocorr_lag1_doc_shuffled"]) for e in es]),
               ("lag-1 excess over doc shuffle", lambda es: _excess(es, "autocorr_lag1", "autocorr_lag1_doc_shuffled")),
               ("slow persistence", lambda es: [metric_value(e, BY_NAME["slow_persistence"]) for e in es]),
               ("its doc shuffle", lambda es: [metric_value(e, BY_NAME["slow_persistence_doc_shuffled"]) for e in es]),
               ("slow excess", lambda es: _excess(es, "slow_persistence", "slow_persistence_doc_shuffled")),
               ("truth", lambda es: [metric_value(e, SLOW_TRUTH) for e in es])]
    values = {title: {v: f(es) for v, es in groups.items()} for title, f in columns}
    kept = [t for t, _ in columns if any(x is not None for xs in values[t].values() for x in xs)]
    if not kept:
        return None
    rows = [[v, *(mean_std_text(values[t][v]) for t in kept)] for v in variant_order(groups)]
    return md_table(["variant", *kept], rows)


@dataclass(frozen=True)
class ControlComparison:
    """A prior's persistence gain beside its control's, on one statistic."""

    prior: str
    control: str
    baseline: str
    metric: str
    prior_gain: dict[str, Any]
    """The prior's row against the baseline (`compare_variants`)."""
    control_gain: dict[str, Any] | None
    """The control's row against the same baseline."""
    head_to_head: dict[str, Any] | None
    """The prior against the control, paired by seed."""
    prior_ev: dict[str, Any] | None
    control_ev: dict[str, Any] | None
    control_l0_matched: bool | None
    smoothing: bool
    """The control is the pooled SAE (a smoothing control)."""

    @property
    def reading(self) -> str:
        """`exceeds the control's`, `within what <control> gives`, `no gain` or `excluded`, from the verdicts."""
        verdict = self.prior_gain["verdict"]
        if verdict.startswith("excluded") or (self.head_to_head or {}).get("verdict", "").startswith("excluded"):
            return "excluded"
        if verdict != "better":
            return "no gain over the baseline"
        if self.head_to_head is not None and self.head_to_head["verdict"] == "better":
            return "exceeds the control's"
        return f"within what {self.control} gives"


def _pick(rows: list[dict[str, Any]], variant: str, metric: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["variant"] == variant and r["metric"] == metric), None)


def control_comparisons(evals: dict[str, dict[str, Any]], rows: list[dict[str, Any]], roles: Roles) -> list[ControlComparison]:
    """Every (prior, control, persistence statistic) the run allows, priors in display order."""
    out = []
    for prior in roles.priors:
        baseline = roles.baselines[prior]
        for control in roles.controls_of(prior):
            against_baseline = compare_variants(evals, {control: baseline})
            head = compare_variants(evals, {prior: control})
            l0 = _pick(against_baseline, control, "l0")
            for metric in PERSISTENCE_METRICS:
                gain = _pick(rows, prior, metric)
                if gain is None:
                    continue
                out.append(ControlComparison(
                    prior, control, baseline, metric, gain, _pick(against_baseline, control, metric), _pick(head, prior, metric),
                    _pick(rows, prior, "explained_variance"), _pick(against_baseline, control, "explained_variance"),
                    None if l0 is None else l0["l0_matched"], roles.is_smoothing(control)))
    return out


def _diff(r: dict[str, Any] | None) -> str:
    return "n/a" if r is None else f"{signed(r['difference'])} {interval(r['interval'])}"


def control_table(items: list[ControlComparison]) -> str:
    rows = [[c.prior, plain_name(c.metric), _diff(c.prior_gain), _diff(c.prior_ev), c.control + ("" if c.control_l0_matched in (True, None)
             else " (L0 not matched)"), _diff(c.control_gain), _diff(c.control_ev), _diff(c.head_to_head), c.reading] for c in items]
    return md_table(["prior", "statistic", "prior's gain over baseline [95%]", "prior's EV change", "control",
                     "control's gain [95%]", "control's EV change", "prior − control [95%]", "reading"], rows)


def temporal_section(evals: dict[str, dict[str, Any]], rows: list[dict[str, Any]], roles: Roles) -> str:
    """The section: the statistics beside their controls, then the priors beside their smoothing controls."""
    table = temporal_table(evals)
    if table is None:
        return "No eval of this run holds temporal statistics."
    parts = ["Mean ± std over seeds. Shuffling tokens within sequences or within documents keeps each latent's "
             "firing rate and destroys its order: the excess over the within-document shuffle is what order adds.", table]
    items = control_comparisons(evals, rows, roles)
    if items:
        parts += ["Each prior's persistence gain beside its control's, both against the same baseline at the same seeds "
                  "(differences with their 95% intervals). A gain `exceeds the control's` only when the prior beats the "
                  "control directly.", control_table(items)]
    elif roles.priors:
        parts.append("No variant of this run is a control of a prior (no `controls` in the parameters, no pooled SAE), "
                     "so no gain is set beside what smoothing alone gives.")
    return "\n\n".join(parts)

