"""The mechanism tests (`python -m tsae_core.mechanisms`, written to `mechanisms.json`): per prior, the
statistic it targets at 0, 1 and 10 times its coefficient (mean ± std over seeds, the control beside
it where there is one, the EV), the paired move from level 0 with its 95% interval over seeds, and
whether the prior acts (both moves at least the margin, the claimed way) or does not."""

from __future__ import annotations

from typing import Any

from tsae_core.report.text import MISSING, interval, md_table, num, signed


def _level(row: dict[str, Any]) -> list[str]:
    std = row.get("std")
    stat = num(row.get("mean")) + ("" if std is None else f" ± {num(std)}")
    move = signed(row["paired_difference"]) if "paired_difference" in row else "(reference)"
    return [f"×{row.get('level', 0):g}", num(row.get("coefficient")), stat, num(row.get("control_mean")) if "control_mean" in row
            else MISSING, num(row.get("explained_variance")), move, interval(row.get("interval")) if "paired_difference" in row else ""]


def mechanism_block(prior: str, result: dict[str, Any]) -> str:
    """One prior's test: what it targets, its verdict, and its table of levels."""
    seeds = ", ".join(str(s) for s in result.get("seeds") or []) or MISSING
    budget = ""
    if result.get("steps") and result.get("tokens_per_step"):
        budget = f"; {result['steps']} steps of {result['tokens_per_step']} tokens"
    head = (f"**{prior}**: {result.get('statistic', MISSING)} ({result.get('direction', MISSING)} is the prior's claim; "
            f"least move {result.get('margin', MISSING)}) -> **{result.get('verdict', MISSING)}**. Seeds {seeds}{budget}.")
    knob = result.get("knob", "coefficient")
    rows = [_level(r) for r in result.get("levels") or []]
    return head + "\n\n" + md_table(["level", knob, "statistic (mean ± std)", "control", "EV", "paired move from ×0", "95% interval"], rows)


def mechanisms_section(mechanisms: dict[str, Any] | None) -> str | None:
    """The section, or None when the run has no mechanisms.json."""
    if not mechanisms:
        return None
    intro = ("Before a prior is credited with anything, raising its coefficient from 0 must move the statistic it "
             "targets, the way it claims, on data where the answer is known. Every level of one seed shares the data "
             "order and the initial values, so the moves are the prior's.")
    return "\n\n".join([intro, *(mechanism_block(p, r) for p, r in mechanisms.items())])


def mechanisms_answer(mechanisms: dict[str, Any]) -> str:
    """The answer of a mechanism run: which priors move the statistic they target, by how much (the paired
    move from coefficient 0 at the default and at 10x, with its interval), and which do not."""
    acts, idle = [], []
    for prior, r in mechanisms.items():
        moves = [f"x{row.get('level', 0):g} {signed(row['paired_difference'])} {interval(row.get('interval'))}"
                 for row in r.get("levels") or [] if "paired_difference" in row]
        clause = f"{prior} ({r.get('statistic', MISSING)}: {'; '.join(moves)})"
        (acts if r.get("verdict") == "acts" else idle).append(clause)
    seeds = len(next(iter(mechanisms.values())).get("seeds") or [])
    text = f"Each prior at 0, 1 and 10 times its coefficient, {seeds} paired seeds (move from coefficient 0, 95% interval)."
    if acts:
        text += " Acts, moving its target the claimed way by at least the margin: " + "; ".join(acts) + "."
    if idle:
        text += " Does not act: " + "; ".join(idle) + "."
    return text
