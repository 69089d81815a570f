"""Position dependence of latents and reconstruction error by position in the document.

Positions p (the token's position within its document, `batch.position_BT`) fall into bins: one
bin per position 0..15, then bins whose left edges grow by a factor √2 (16, 23, 32, 45, 64, 91, 128,
...) up to `max_position`; the last bin is open-ended. Early positions, where a model's activations
change fastest, are resolved one by one; later ones by octave halves.

Position dependence of latent f is the correlation ratio η² of its activation on the position bin,
over evaluated (unmasked) tokens, accumulated in float64:

    η²_f = Σ_b n_b (mean_b f − mean f)² / Σ_t (f_t − mean f)²
         = (Σ_b S_b² / n_b − S² / N) / (Q − S² / N),   S_b = Σ_{t in b} f_t, S = Σ_b S_b, Q = Σ_t f_t²

the share of the latent's activation variance explained by the position bin (0: none, 1: a function
of the bin). With finitely many tokens η² > 0 even without any dependence (about (P − 1) / N for
i.i.d. activations, more for latents whose firing clusters in documents), so every latent's η² is
also computed on a **control**: the activations shuffled within each document (unmasked tokens
only, `within_document_permutation`) while the positions stay. A latent without positional
dependence sits at its control; a positional one far above it.

Reconstruction error by position: FVU_b = Σ_{t in b} ‖x_t − x̂_t‖² / Σ_{t in b} ‖x_t − x̄‖², x̄ the mean
input over all evaluated tokens (as in `explained_variance`, so the bins' sums add up to 1 − EV).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tsae_core.metrics.temporal import within_document_permutation

_F64 = torch.float64
EXACT_POSITIONS = 16
"""Positions 0..EXACT_POSITIONS−1 each have their own bin."""


def position_bin_edges(max_position: int = 4096) -> list[int]:
    """Left edges of the position bins: 0, 1, ..., 15, then round(16 · √2^j) while below `max_position`."""
    edges = list(range(min(EXACT_POSITIONS, max_position)))
    j = 0
    while (edge := round(EXACT_POSITIONS * math.sqrt(2) ** j)) < max_position:
        if edge > edges[-1]:
            edges.append(edge)
        j += 1
    return edges


def position_bins(position_BT: torch.Tensor, edges: list[int]) -> torch.Tensor:
    """(B, T) long: the bin of each position, i.e. the last edge ≤ p (the first bin for p < 0)."""
    edges_P = torch.tensor(edges, dtype=torch.long, device=position_BT.device)
    return (torch.bucketize(position_BT.to(torch.long), edges_P, right=True) - 1).clamp_min(0)


def correlation_ratio(S_FP: torch.Tensor, n_P: torch.Tensor, Q_F: torch.Tensor) -> torch.Tensor:
    """(F,) η² from per-bin sums S_FP, bin counts n_P and sums of squares Q_F (NaN for a constant latent)."""
    N = n_P.sum()
    S_F = S_FP.sum(1)
    between = (S_FP**2 / n_P.clamp_min(1)).sum(1) - S_F**2 / N.clamp_min(1)
    total = Q_F - S_F**2 / N.clamp_min(1)
    ok = total > 1e-12 * Q_F.clamp_min(1e-300)
    return torch.where(ok, (between / total.clamp_min(1e-300)).clamp(0, 1), float("nan"))


class PositionDependence:
    """Streaming η² of each latent on the position bin, with the within-document-shuffled control.

    Usage: ``pd = PositionDependence(F); pd.update(features_BTF, position_BT, doc_start_BT, mask_BT); pd.result()``.
    Only non-zero activations are visited (work ~ non-zeros), so sparse codes are cheap.
    """

    def __init__(self, n_latents: int, seed: int = 0, min_fires: int = 10, max_position: int = 4096) -> None:
        self.n_latents, self.min_fires = n_latents, min_fires
        self.edges = position_bin_edges(max_position)
        P = len(self.edges)
        self._generator = torch.Generator().manual_seed(seed)
        self.S_FP = torch.zeros(n_latents, P, dtype=_F64)
        self.S_control_FP = torch.zeros(n_latents, P, dtype=_F64)
        self.Q_F = torch.zeros(n_latents, dtype=_F64)
        self.fires_F = torch.zeros(n_latents, dtype=_F64)
        self.n_P = torch.zeros(P, dtype=_F64)

    @torch.no_grad()
    def update(
        self, features_BTF: torch.Tensor, position_BT: torch.Tensor, doc_start_BT: torch.Tensor, mask_BT: torch.Tensor | None = None
    ) -> None:
        B, T, F = features_BTF.shape
        if F != self.n_latents:
            raise ValueError(f"expected {self.n_latents} latents, got {F}")
        f_BTF = features_BTF.cpu()
        mask_BT = torch.ones(B, T, dtype=torch.bool) if mask_BT is None else mask_BT.cpu().to(torch.bool)
        bin_N = position_bins(position_BT.cpu(), self.edges).reshape(-1)
        # the control: token s's activations move to token t = perm⁻¹(s), whose bin they then count in
        perm_N = (within_document_permutation(doc_start_BT.cpu(), mask_BT, self._generator) + torch.arange(B)[:, None] * T).reshape(-1)
        bin_control_N = torch.empty_like(bin_N)
        bin_control_N[perm_N] = bin_N

        token_n, latent_n = ((f_BTF != 0) & mask_BT[..., None]).reshape(B * T, F).nonzero().unbind(1)
        v_n = f_BTF.reshape(B * T, F)[token_n, latent_n].to(_F64)
        P = len(self.edges)
        self.S_FP.view(-1).index_add_(0, latent_n * P + bin_N[token_n], v_n)
        self.S_control_FP.view(-1).index_add_(0, latent_n * P + bin_control_N[token_n], v_n)
        self.Q_F.index_add_(0, latent_n, v_n * v_n)
        self.fires_F += torch.bincount(latent_n, minlength=F).to(_F64)
        self.n_P += torch.bincount(bin_N[mask_BT.reshape(-1)], minlength=P).to(_F64)

    def per_latent(self) -> dict[str, torch.Tensor]:
        """(F,) float64: η² of the data and of the control, and each latent's firing count."""
        return {
            "position_dependence_F": correlation_ratio(self.S_FP, self.n_P, self.Q_F),
            "position_dependence_control_F": correlation_ratio(self.S_control_FP, self.n_P, self.Q_F),
            "fires_F": self.fires_F.clone(),
        }

    def result(self) -> dict[str, Any]:
        """Means of η² (data and control) over alive latents (≥ `min_fires` firing tokens; NaN left out)."""
        pl = self.per_latent()
        alive_F = pl["fires_F"] >= self.min_fires

        def mean(t: torch.Tensor) -> float:
            return float(t[alive_F].nanmean()) if bool(alive_F.any()) else float("nan")

        return {
            "position_dependence_mean": mean(pl["position_dependence_F"]),
            "position_dependence_control_mean": mean(pl["position_dependence_control_F"]),
            "position_bins": self.edges[: _used_bins(self.n_P)],
            "n_alive": int(alive_F.sum()),
        }


def _used_bins(n_P: torch.Tensor) -> int:
    """Number of bins up to the last one holding a token (the open-ended tail beyond is left out)."""
    used = (n_P > 0).nonzero()
    return int(used[-1]) + 1 if len(used) else 0


class ReconstructionByPosition:
    """Streaming FVU per position bin (module docstring): Σ‖x − x̂‖² / Σ‖x − x̄‖² within each bin."""

    def __init__(self, d_in: int, max_position: int = 4096) -> None:
        self.edges = position_bin_edges(max_position)
        P = len(self.edges)
        self.err_P = torch.zeros(P, dtype=_F64)
        self.sq_P = torch.zeros(P, dtype=_F64)
        self.sum_PD = torch.zeros(P, d_in, dtype=_F64)
        self.n_P = torch.zeros(P, dtype=_F64)

    @torch.no_grad()
    def update(self, x_BTD: torch.Tensor, recon_BTD: torch.Tensor, position_BT: torch.Tensor, mask_BT: torch.Tensor | None = None) -> None:
        D = x_BTD.shape[-1]
        keep_N = torch.ones(position_BT.numel(), dtype=torch.bool) if mask_BT is None else mask_BT.reshape(-1).cpu().to(torch.bool)
        x_ND = x_BTD.reshape(-1, D).cpu()[keep_N].to(_F64)
        r_ND = recon_BTD.reshape(-1, D).cpu()[keep_N].to(_F64)
        bin_N = position_bins(position_BT.cpu(), self.edges).reshape(-1)[keep_N]
        self.err_P.index_add_(0, bin_N, (x_ND - r_ND).pow(2).sum(1))
        self.sq_P.index_add_(0, bin_N, x_ND.pow(2).sum(1))
        self.sum_PD.index_add_(0, bin_N, x_ND)
        self.n_P += torch.bincount(bin_N, minlength=len(self.edges)).to(_F64)

    def result(self) -> dict[str, Any]:
        """{"bins": left edges, "fvu": FVU per bin (None where a bin has no variance), "n_tokens": per bin},
        over the bins up to the last one holding a token."""
        mean_D = self.sum_PD.sum(0) / self.n_P.sum().clamp_min(1)
        # Σ_{t in b} ‖x_t − x̄‖² = Σ‖x_t‖² − 2 x̄·Σx_t + n_b ‖x̄‖²
        total_P = self.sq_P - 2 * self.sum_PD @ mean_D + self.n_P * mean_D.pow(2).sum()
        fvu_P = torch.where(total_P > 0, self.err_P / total_P.clamp_min(1e-300), float("nan"))
        used = _used_bins(self.n_P)
        return {
            "bins": self.edges[:used],
            "fvu": [None if math.isnan(v) else v for v in fvu_P[:used].tolist()],
            "n_tokens": [int(n) for n in self.n_P[:used].tolist()],
        }
