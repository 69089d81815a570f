"""The Health section: every SAE with its verdict (`tsae_core.evals.core.assess_health`) and its problems;
the ones the parameters expect to be unhealthy (`run.expected_unhealthy`) with the reason given.
An unhealthy SAE is left out of every claim (its verdict rows say `excluded`)."""

from __future__ import annotations

from tsae_core.report.loading import RunResults
from tsae_core.report.text import md_table


def health_section(run: RunResults) -> str:
    """One row per SAE: healthy or not, its problems, and the reason where it was expected."""
    if not run.evals:
        return "No SAE has been evaluated, so none has a health verdict."
    expected = (run.config.get("run") or {}).get("expected_unhealthy") or {}
    rows, sick = [], 0
    for name, e in run.evals.items():
        h = e.get("health") or {}
        reason = expected.get(run.variant_of(name), "")
        if h.get("healthy") is False:
            sick += 1
            verdict = "unhealthy" + (" (expected)" if reason else "")
        else:
            verdict = "healthy" if h.get("healthy") else "no verdict"
            reason = f"listed as expected unhealthy ({reason}), but healthy" if reason else ""
        rows.append([name, verdict, "; ".join(h.get("problems") or []) or "-", reason or "-"])
    head = f"{len(run.evals) - sick} of {len(run.evals)} SAEs are healthy." + (
        " Unhealthy SAEs are left out of every claim: their verdict rows say `excluded`." if sick else "")
    return head + "\n\n" + md_table(["SAE", "verdict", "problems", "expected (run.expected_unhealthy)"], rows)
