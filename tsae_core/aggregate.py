"""Results across seeds: one eval per variant holding the mean over its seeds, with the standard
deviations beside it under `seed_std` (same layout) and the seeds used under `seeds`.

Only numbers (and lists of numbers of equal length) are averaged; other values are taken from the
first seed. None (a metric undefined for a seed) is left out of that metric's mean; the standard
deviation is the sample one (ddof = 1) and is absent for a single seed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def group_by_variant(evals: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """variant -> its evals (one per seed), in seed order; an eval without `variant` is its own group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, e in evals.items():
        groups.setdefault(e.get("variant") or name, []).append(e)
    return {v: sorted(es, key=lambda e: (e.get("seed") is None, e.get("seed") or 0)) for v, es in groups.items()}


KEPT_AS_IS = {"tsae", "seed", "instance", "sweep", "sae_cfg", "eval_config", "health"}
"""Top-level keys that describe the SAE or the run, not a measurement: taken from the first seed."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _mean_std(values: list[Any]) -> tuple[Any, Any]:
    first = values[0]
    if _is_number(first) or first is None and any(_is_number(v) for v in values):
        xs = [float(v) for v in values if _is_number(v) and math.isfinite(float(v))]
        if not xs:
            return None, None
        if all(v == first for v in values):  # the same for every seed (a count, a setting): kept as it is
            return first, 0.0 if len(values) > 1 else None
        return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else None
    if isinstance(first, dict):
        keys = [k for k in first if all(isinstance(v, dict) for v in values)]
        pairs = {k: _mean_std([v.get(k) for v in values]) for k in keys}
        means = {**first, **{k: m for k, (m, _) in pairs.items()}}
        stds = {k: s for k, (_, s) in pairs.items() if s is not None and s != {}}
        return means, stds
    if isinstance(first, list) and first and all(isinstance(v, list) and len(v) == len(first) for v in values):
        if all(_is_number(x) or x is None for v in values for x in v):
            cols = [_mean_std([v[i] for v in values]) for i in range(len(first))]
            return [m for m, _ in cols], [s for _, s in cols]
    return first, None


def aggregate_seeds(evals: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """variant -> mean eval over its seeds, with `seed_std`, `seeds` and `n_seeds` added."""
    out = {}
    for variant, es in group_by_variant(evals).items():
        mean, std = _mean_std([{k: v for k, v in e.items() if k not in KEPT_AS_IS} for e in es])
        mean = {**es[0], **mean}
        out[variant] = {**mean, "variant": variant, "seeds": [e.get("seed") for e in es], "n_seeds": len(es),
                        "seed_std": std if len(es) > 1 else {}}
        out[variant]["health"] = {
            "healthy": all(e.get("health", {}).get("healthy", False) for e in es),
            "problems": [p for e in es for p in e.get("health", {}).get("problems", [])],
        }
    return out
