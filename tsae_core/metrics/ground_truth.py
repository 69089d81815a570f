"""Metrics against a known generator (the synthetic benchmark): did the SAE find the true features?

For true feature g with unit direction d_g and learned decoder rows w_f (normalised here):

    best_cos_g    = max_f cos(d_g, w_f),   m(g) = argmax_f cos(d_g, w_f)
    mmcs          = mean_g best_cos_g                     (mean max cosine similarity)
    frac_recovered = mean_g [best_cos_g ≥ threshold]
    act_corr      = mean_g Pearson(c_g, f_m(g)) over evaluated tokens, c the true codes; features
                    that never fire in the eval data are left out; a matched latent that never
                    fires while its feature does scores 0.

Each is reported overall and per group of true features: by kind ('fast', 'slow', 'positional'),
'rare' / 'frequent' (true rate < rare_rate or not) and their crossings ('rare_slow', ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

_F64 = torch.float64
_KIND_ORDER = ("fast", "slow", "positional")


def cosine_matrix(W_dec_FD: torch.Tensor, directions_GD: torch.Tensor) -> torch.Tensor:
    """(G, F) float64 cosines between true directions and decoder rows (both normalised here)."""
    w_FD = W_dec_FD.detach().to(_F64)
    d_GD = directions_GD.detach().to(w_FD.device, _F64)
    w_FD = w_FD / w_FD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    d_GD = d_GD / d_GD.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return d_GD @ w_FD.T


def decoder_match(W_dec_FD: torch.Tensor, directions_GD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best decoder cosine per true feature and the latent that attains it: ((G,) float64, (G,) long)."""
    return cosine_matrix(W_dec_FD, directions_GD).max(dim=1)


def feature_groups(kinds: Sequence[str], rates_G: Sequence[float] | torch.Tensor, rare_rate: float) -> dict[str, list[int]]:
    """Non-empty groups of true-feature indices: each kind, 'rare', 'frequent', and '<rare|frequent>_<kind>'."""
    rates = torch.as_tensor(rates_G, dtype=_F64).tolist()
    if len(rates) != len(kinds):
        raise ValueError(f"{len(kinds)} kinds but {len(rates)} rates")
    present = [k for k in _KIND_ORDER if k in kinds] + sorted(set(kinds) - set(_KIND_ORDER))
    rare = [r < rare_rate for r in rates]
    groups: dict[str, list[int]] = {}
    for kind in present:
        groups[kind] = [g for g, k in enumerate(kinds) if k == kind]
    groups["rare"] = [g for g in range(len(kinds)) if rare[g]]
    groups["frequent"] = [g for g in range(len(kinds)) if not rare[g]]
    for kind in present:
        groups[f"rare_{kind}"] = [g for g in groups[kind] if rare[g]]
        groups[f"frequent_{kind}"] = [g for g in groups[kind] if not rare[g]]
    return {name: idx for name, idx in groups.items() if idx}


class GroundTruthMetrics:
    """Streaming recovery metrics of learned latents against the true features of a generator.

    W_dec_FD      learned decoder (rows = latents, any norm)
    directions_GD true feature directions
    kinds         kind of each true feature ('fast' | 'slow' | 'positional')
    rates_G       true firing rate of each feature ('rare' means rate < rare_rate)
    """

    def __init__(
        self,
        W_dec_FD: torch.Tensor,
        directions_GD: torch.Tensor,
        kinds: Sequence[str],
        rates_G: Sequence[float] | torch.Tensor,
        threshold: float = 0.9,
        rare_rate: float = 0.01,
    ) -> None:
        if len(kinds) != directions_GD.shape[0]:
            raise ValueError(f"{len(kinds)} kinds for {directions_GD.shape[0]} true directions")
        self.kinds = list(kinds)
        self.threshold = threshold
        self.best_cos_G, self.best_latent_G = decoder_match(W_dec_FD, directions_GD)
        self.groups = feature_groups(self.kinds, rates_G, rare_rate)
        self.n_tokens = 0
        self._sums: torch.Tensor | None = None  # (6, G): Σa, Σb, Σa², Σb², Σab, Σ[b≠0]

    @torch.no_grad()
    def update(self, features_BTF: torch.Tensor, true_codes_BTG: torch.Tensor, mask_BT: torch.Tensor | None = None) -> None:
        """Add one batch: a = activation of the matched latent m(g), b = true code of feature g."""
        G = self.best_latent_G.shape[0]
        if true_codes_BTG.shape[-1] != G:
            raise ValueError(f"true codes have {true_codes_BTG.shape[-1]} features, expected {G}")
        keep_N = None if mask_BT is None else mask_BT.reshape(-1).to(torch.bool)
        f_NF = features_BTF.reshape(-1, features_BTF.shape[-1])
        c_NG = true_codes_BTG.reshape(-1, G)
        if keep_N is not None:
            f_NF, c_NG = f_NF[keep_N], c_NG[keep_N]
        a_NG = f_NF[:, self.best_latent_G.to(f_NF.device)].to(_F64)
        b_NG = c_NG.to(device=a_NG.device, dtype=_F64)
        sums = torch.stack(
            [a_NG.sum(0), b_NG.sum(0), a_NG.pow(2).sum(0), b_NG.pow(2).sum(0), (a_NG * b_NG).sum(0), (b_NG != 0).sum(0).to(_F64)]
        )
        self._sums = sums if self._sums is None else self._sums + sums.to(self._sums.device)
        self.n_tokens += a_NG.shape[0]

    def activation_correlation(self) -> torch.Tensor:
        """(G,) Pearson correlation of each true feature with its matched latent; NaN if the feature never fired."""
        if self._sums is None or self.n_tokens == 0:
            return torch.full_like(self.best_cos_G, float("nan"))
        n = self.n_tokens
        sa, sb, saa, sbb, sab, _ = self._sums.cpu()
        var_a = (saa - sa * sa / n).clamp_min(0)
        var_b = (sbb - sb * sb / n).clamp_min(0)
        cov = sab - sa * sb / n
        corr = cov / (var_a * var_b).sqrt().clamp_min(1e-300)
        corr = torch.where(var_a > 0, corr, torch.zeros_like(corr)).clamp(-1, 1)
        return torch.where(var_b > 0, corr, torch.full_like(corr, float("nan")))

    def _group_summary(self, idx: list[int], corr_G: torch.Tensor) -> dict[str, Any]:
        cos = self.best_cos_G.cpu()[idx]
        corr = corr_G[idx]
        fired = ~corr.isnan()
        return {
            "n_features": len(idx),
            "mmcs": float(cos.mean()),
            "frac_recovered": float((cos >= self.threshold).to(_F64).mean()),
            "act_corr": float(corr[fired].mean()) if bool(fired.any()) else float("nan"),
        }

    def result(self) -> dict[str, Any]:
        """{"overall", "by_kind": {group: {...}}, "threshold", "true_l0"} (see the module docstring)."""
        corr_G = self.activation_correlation()
        all_idx = list(range(len(self.kinds)))
        true_l0 = float(self._sums[5].sum()) / self.n_tokens if self._sums is not None and self.n_tokens else float("nan")
        return {
            "overall": self._group_summary(all_idx, corr_G),
            "by_kind": {name: self._group_summary(idx, corr_G) for name, idx in self.groups.items()},
            "threshold": self.threshold,
            "true_l0": true_l0,
        }


def matched_persistence(best_latent_G: torch.Tensor, kinds: Sequence[str], latent_lag1_F: Sequence[float],
                        latent_lag1_doc_shuffled_F: Sequence[float], true_lag1_G: Sequence[float]) -> dict[str, Any]:
    """The temporal priors' target, per kind of true feature: the mean lag-1 autocorrelation of the
    latent matched to each feature (its best decoder cosine), beside the same latent's under the
    within-document shuffle (order destroyed, each document's rates kept) and the true feature's own
    codes' (what a latent that tracks it exactly would show). NaN entries (a latent that never fires)
    are left out of the means."""
    match = best_latent_G.cpu().long()
    lag1_F = torch.as_tensor(latent_lag1_F, dtype=_F64)
    shuffled_F = torch.as_tensor(latent_lag1_doc_shuffled_F, dtype=_F64)
    truth_G = torch.as_tensor(true_lag1_G, dtype=_F64)

    def mean(t: torch.Tensor) -> float:
        return float(t.nanmean()) if bool((~t.isnan()).any()) else float("nan")

    out: dict[str, Any] = {}
    for kind in dict.fromkeys(kinds):
        idx = torch.tensor([g for g, k in enumerate(kinds) if k == kind])
        out[kind] = {
            "matched_autocorr_lag1": mean(lag1_F[match[idx]]),
            "matched_autocorr_lag1_doc_shuffled": mean(shuffled_F[match[idx]]),
            "true_autocorr_lag1": mean(truth_G[idx]),
            "n_features": len(idx),
        }
    return out
