"""The answer at the top of a report: which priors beat their baseline on what, by how much, at what
cost, and where the smoothing control explains the gain; where nothing separates, it says so.

Every clause is generated from the verdict rows (`tsae_core.comparison.compare_variants`) and the
control comparisons (`tsae_core.report.temporal`), in a fixed order, with their numbers: a metric is
named `better` or `worse` only where the 95% interval of the paired difference excludes 0, and only at
matched L0. Explained variance and the CE loss score are stated for every prior whatever their verdict
(a cost where they fall). A variant not at matched L0, or excluded as unhealthy, is named with the
reason and no claim. With one seed the answer gives differences only.
"""

from __future__ import annotations

from typing import Any

from tsae_core.report.roles import Roles
from tsae_core.report.temporal import ControlComparison
from tsae_core.report.text import effect, plain_name
from tsae_core.report.verdicts import OVERVIEW_METRICS

COST_METRICS = ("explained_variance", "ce_loss_score")
"""Stated for every prior, whatever their verdict: what the prior costs (or gives) in reconstruction."""


def _effects(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{plain_name(r['metric'])} {effect(r['metric'], r['difference'], r['interval'])}" for r in rows)


def _claims(mine: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows (cost metrics left out) whose verdict is better, and those whose verdict is worse."""
    directed = [r for r in mine if r["direction"] in ("higher", "lower") and r["metric"] not in COST_METRICS]
    return [r for r in directed if r["verdict"] == "better"], [r for r in directed if r["verdict"] == "worse"]


def _costs(mine: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in (r for m in COST_METRICS for r in mine if r["metric"] == m):
        text = f"{plain_name(r['metric'])} {effect(r['metric'], r['difference'], r['interval'])} ({r['verdict']})"
        out.append(("at a cost in " + text) if r["verdict"] == "worse" else text)
    return out


def _no_claim(variant: str, mine: list[dict[str, Any]], expected: dict[str, str]) -> str | None:
    """The sentence for a variant that supports no claim (excluded, L0 not matched), else None."""
    first, baseline = mine[0], mine[0]["baseline"]
    if first["verdict"].startswith("excluded"):
        why = f" (expected: {expected[variant]})" if variant in expected else ""
        return f"{variant} vs {baseline} is excluded, {first['verdict'].removeprefix('excluded: ')}{why}: no claim."
    if first["l0_matched"] is False:
        l0 = next(r for r in mine if r["direction"] == "matched")
        return f"{variant} vs {baseline} is not at matched L0 ({l0['verdict'].removeprefix('not matched: ')}): no claim."
    return None


def _one_seed(variant: str, mine: list[dict[str, Any]]) -> str:
    shown = [r for m in OVERVIEW_METRICS for r in mine if r["metric"] == m and r["direction"] != "matched"]
    return f"{variant} vs {mine[0]['baseline']}, one seed, differences only and no verdict: {_effects(shown)}."


def _control_clause(c: ControlComparison) -> str | None:
    """How the prior's persistence gain compares with its control's; None where the prior has no gain."""
    if c.reading == "no gain over the baseline" or c.control_gain is None:
        return None
    what = f"the smoothing control {c.control}" if c.smoothing else f"its control {c.control}"
    if c.reading == "excluded":
        return f"its {plain_name(c.metric)} gain cannot be set beside {what}'s (excluded)"
    numbers = effect(c.metric, c.control_gain["difference"], c.control_gain["interval"])
    if c.control_ev is not None:
        numbers += f" at {effect('explained_variance', c.control_ev['difference'], c.control_ev['interval'])} of EV"
    if c.head_to_head is not None:
        numbers += f"; {c.prior} − {c.control} {effect(c.metric, c.head_to_head['difference'], c.head_to_head['interval'])}"
    verb = "exceeds" if c.reading == "exceeds the control's" else "is within"
    return f"its {plain_name(c.metric)} gain {verb} what {what} gives ({numbers})"


def variant_sentence(variant: str, rows: list[dict[str, Any]], comparisons: list[ControlComparison],
                     expected: dict[str, str]) -> str | None:
    """The sentence for one prior or control; None when nothing separates it from its baseline."""
    mine = [r for r in rows if r["variant"] == variant]
    if not mine:
        return None
    if (text := _no_claim(variant, mine, expected)) is not None:
        return text
    if all(r["interval"] is None for r in mine):
        return _one_seed(variant, mine)
    if not any(r["verdict"] in ("better", "worse") for r in mine):
        return None
    better, worse = _claims(mine)
    parts = [f"better on {_effects(better)}"] * bool(better) + [f"worse on {_effects(worse)}"] * bool(worse)
    if not (better or worse):  # only its reconstruction separates it
        parts.append(f"nothing separates it from {mine[0]['baseline']} but its reconstruction")
    parts += _costs(mine)
    parts += [c for x in comparisons if x.prior == variant and (c := _control_clause(x))]
    return f"{variant} vs {mine[0]['baseline']}: " + "; ".join(parts) + "."


def seeds_text(rows: list[dict[str, Any]], variants: list[str]) -> str:
    """The number of seeds behind the rows of `variants` (a range where they differ)."""
    ns = sorted({r["n_paired"] or min(r["n_variant"], r["n_baseline"]) for r in rows if r["variant"] in variants})
    return "no" if not ns else str(ns[0]) if ns[0] == ns[-1] else f"{ns[0]}–{ns[-1]}"


def answer_paragraph(rows: list[dict[str, Any]], roles: Roles, comparisons: list[ControlComparison],
                     expected: dict[str, str] | None = None) -> str:
    """The plain-words answer (see the module docstring): a lead, then one item per prior or control."""
    expected = expected or {}
    compared = roles.priors + roles.compared_controls()
    if not compared:
        return "This run compares no prior with a baseline (a token-wise SAE with the same activation), so it answers nothing yet."
    sentences, quiet = [], {}
    for v in roles.priors:
        if (s := variant_sentence(v, rows, comparisons, expected)) is None:
            quiet.setdefault(roles.baselines[v], []).append(v)
        else:
            sentences.append(s)
    sentences += [f"Nothing separates {', '.join(vs)} from {b} at {seeds_text(rows, vs)} seeds." for b, vs in quiet.items()]
    for c in roles.compared_controls():
        s = variant_sentence(c, rows, [], expected)
        sentences.append(f"The control {s}" if s else f"Nothing separates the control {c} from {roles.baselines[c]}.")
    lonely = [v for v, b in roles.baselines.items() if b is None and v not in roles.controls]
    sentences += [f"No baseline in this run for {', '.join(lonely)}."] * bool(lonely)
    n_seeds = seeds_text(rows, compared)
    lead = (f"Each variant against its token-wise baseline at matched L0, over {n_seeds} paired seed{'s' * (n_seeds != '1')} "
            "(variant − baseline, mean over seeds, 95% interval in brackets; EV-like fractions in percentage points):")
    return lead + "\n\n" + "\n".join(f"- {s}" for s in sentences)
