"""What each variant of a run is in a report: a baseline, a prior compared with its baseline, a control
of some prior, or a sweep point.

Baselines follow `tsae_core.comparison.find_baselines`. Controls are the variants whose `controls`
(in the run's parameters) name other variants: the pooled SAE, which only smooths codes over
neighbouring tokens, is the smoothing control of the temporal priors. A run whose parameters name no
control at all (made before `controls` existed) takes every `pooled` variant as the control of its
temporal variants, the role it was built for. Priors are the compared variants that are no control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tsae_core.aggregate import group_by_variant
from tsae_core.comparison import find_baselines
from tsae_core.plots import variant_order

SMOOTHING_ARCHITECTURE = "pooled"
TEMPORAL_ARCHITECTURES = ("consistency", "contrastive", "conv", "crosscoder", "predictive", "relational")
"""Architectures whose codes read neighbouring tokens or are trained on them: what smoothing could imitate."""


@dataclass(frozen=True)
class Roles:
    """The variants of a run by role, each list in display order."""

    baselines: dict[str, str | None]
    """Compared variant -> its baseline (None where the run has none)."""
    controls: dict[str, list[str]]
    """Control -> the variants it is a control of."""
    priors: list[str]
    """Compared variants that are no control and have a baseline."""
    architectures: dict[str, str]
    """Variant -> architecture (from its eval's sae_cfg)."""
    sweep: list[str]
    """Sweep points (ablations): summarised, never compared."""

    def controls_of(self, variant: str) -> list[str]:
        """The controls that name `variant`."""
        return [c for c, targets in self.controls.items() if variant in targets]

    def is_smoothing(self, control: str) -> bool:
        return self.architectures.get(control) == SMOOTHING_ARCHITECTURE

    def describe(self, variant: str) -> str:
        """The variant's role in a few words, for the tables."""
        if variant in self.controls:
            return "control of " + ", ".join(self.controls[variant])
        if variant in self.sweep:
            return "sweep point"
        if variant in self.priors:
            return f"prior, vs {self.baselines[variant]}"
        return "baseline" if variant in set(self.baselines.values()) else "no baseline in this run"

    def compared_controls(self) -> list[str]:
        """Controls that have a baseline, so a verdict block of their own."""
        return [c for c in self.controls if self.baselines.get(c)]


def _declared_controls(config: dict[str, Any], present: set[str]) -> dict[str, list[str]]:
    variants = config.get("variants") or {}
    return {name: [t for t in spec.get("controls") or [] if t in present]
            for name, spec in variants.items() if isinstance(spec, dict) and spec.get("controls") and name in present}


def find_roles(evals: dict[str, dict[str, Any]], config: dict[str, Any]) -> Roles:
    """The roles of the variants in `evals` (instance -> eval JSON), with `config` (config.json's config)."""
    groups = group_by_variant(evals)
    arch = {v: (es[0].get("sae_cfg") or {}).get("architecture", "standard") for v, es in groups.items()}
    sweep = [v for v, es in groups.items() if es[0].get("sweep")]
    present = set(groups) - set(sweep)
    controls = _declared_controls(config, present)
    if not controls:
        temporal = variant_order(v for v in present if arch[v] in TEMPORAL_ARCHITECTURES)
        controls = {v: temporal for v in variant_order(present) if arch[v] == SMOOTHING_ARCHITECTURE and temporal}
    baselines = find_baselines(evals)
    priors = [v for v in variant_order(baselines) if baselines[v] and v not in controls]
    return Roles(baselines=baselines, controls={c: controls[c] for c in variant_order(controls)}, priors=priors,
                 architectures=arch, sweep=variant_order(sweep))
