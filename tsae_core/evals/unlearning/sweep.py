"""The unlearning sweep over (retain threshold, latents, multiplier) and its score."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tsae_core.evals.unlearning.config import UnlearningConfig
from tsae_core.evals.unlearning.data import LANGUAGE_MODEL, UnlearningData
from tsae_core.evals.unlearning.selection import LatentStats, clamp_edit
from tsae_core.sae import SAE


def sweep_points(settings: UnlearningConfig) -> list[tuple[float, int, float]]:
    """(retain_threshold, n_latents, multiplier) of every sweep point, in that nesting order."""
    return [(t, n, m) for t in settings.retain_thresholds for n in settings.n_latents for m in settings.multipliers]


def score(rows: list[dict[str, Any]], max_retain_increase: float) -> tuple[float, int | None]:
    """(score, index of the point achieving it): the largest `forget_effect` among rows whose
    `retain_cost` ≤ max_retain_increase, at least 0; None when no admissible row has a positive effect
    (ties: the first in sweep order)."""
    best, where = 0.0, None
    for i, r in enumerate(rows):
        if r["retain_cost"] <= max_retain_increase and r["forget_effect"] > best:
            best, where = r["forget_effect"], i
    return best, where


def _sweep(data: UnlearningData, sae: SAE, stats: LatentStats, order: Callable[[float, int], list[int]],
           cache: dict[tuple, dict[str, float]], test_features: dict[int, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per sweep point: the latents `order(threshold, n)` clamped at each multiplier."""
    s = float(sae.cfg.activation_scaling_factor)
    rows = []
    for t, n, m in sweep_points(data.settings):
        latents = order(t, n)
        key = (tuple(latents), m)
        if key not in cache:
            if latents:
                idx = torch.tensor(latents)
                feats = torch.stack([test_features[i] for i in latents], -1)
                delta, changed = clamp_edit(feats, data.test.special_NT, -m * stats.scale_F[idx], sae.W_dec.detach()[idx].cpu(), s)
                cache[key] = data.measure(delta, changed)
            else:
                cache[key] = dict(data.clean)
        rows.append(_row(data, t, n, m, latents, cache[key]))
    return rows


def _row(data: UnlearningData, t: float, n: int, m: float, latents: list[int], values: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"retain_threshold": t, "n_latents_requested": n, "n_latents": len(latents), "multiplier": m}
    if data.kind == LANGUAGE_MODEL:
        cf, cr = data.clean["forget"], data.clean["retain"]
        row.update({"forget_ce": values["forget"], "retain_ce": values["retain"],
                    "forget_ce_increase": values["forget"] - cf, "forget_ce_increase_relative": (values["forget"] - cf) / cf,
                    "retain_ce_increase_relative": (values["retain"] - cr) / cr})
        row["forget_effect"], row["retain_cost"] = row["forget_ce_increase"], row["retain_ce_increase_relative"]
    else:
        row.update({"forget_damage": values["forget"], "retain_damage": values["retain"]})
        row["forget_effect"], row["retain_cost"] = values["forget"], values["retain"]
    row["admissible"] = row["retain_cost"] <= data.settings.max_retain_increase
    row["latents"] = latents
    return row


def _summary(data: UnlearningData, rows: list[dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    best, where = score(rows, data.settings.max_retain_increase)
    out = {f"{prefix}unlearning_score": best}
    if data.kind == LANGUAGE_MODEL:
        out[f"{prefix}unlearning_score_relative"] = best / data.clean["forget"]
    if not prefix:
        point = rows[where] if where is not None else None
        out.update({"best_point": where, "n_admissible_points": sum(r["admissible"] for r in rows),
                    "best_retain_threshold": point and point["retain_threshold"],
                    "best_n_latents": point and point["n_latents"], "best_multiplier": point and point["multiplier"],
                    "best_retain_cost": point and point["retain_cost"]})
    return out
