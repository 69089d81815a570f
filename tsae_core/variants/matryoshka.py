"""Matryoshka SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka SAEs";
Nabeshima 2024): nested prefixes of the dictionary must each reconstruct the input on their own.

With prefix sizes m_1 < ... < m_L = F and weights w_l (summing to 1):

    x_hat_l = f[:, :m_l] W_dec[:m_l] + b_dec,      L_recon = sum_l w_l E ||x - x_hat_l||^2

so the first latents learn general, high-level features and later ones refine them. The codes come
from the variant's activation over the whole dictionary (TopK / BatchTopK in the paper); the full
reconstruction x_hat_L is the SAE's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tsae_core import losses
from tsae_core.sae import SAE, SAEOutput
from tsae_core.typed import check


@dataclass(frozen=True)
class MatryoshkaOptions:
    prefixes: list[float] = field(default_factory=lambda: [0.0625, 0.25])
    """Nested prefix sizes below the full dictionary: fractions of d_sae (< 1) or latent counts (>= 1)."""
    weights: list[float] = field(default_factory=list)
    """Weight of each level's reconstruction, the full dictionary last (len(prefixes) + 1 values); empty: equal."""

    def __post_init__(self) -> None:
        check(all(p > 0 for p in self.prefixes), "options.prefixes", "sizes must be > 0")
        check(list(self.prefixes) == sorted(set(self.prefixes)), "options.prefixes", "must be strictly increasing")
        check(not self.weights or len(self.weights) == len(self.prefixes) + 1, "options.weights",
              f"needs {len(self.prefixes) + 1} values (one per prefix and the full dictionary), got {len(self.weights)}")
        check(all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0), "options.weights",
              "must be >= 0 and not all zero")


def prefix_sizes(prefixes: list[float], d_sae: int) -> list[int]:
    """Prefix sizes in latents, ending with d_sae."""
    sizes = [int(round(p * d_sae)) if p < 1 else int(p) for p in prefixes]
    if any(s < 1 or s >= d_sae for s in sizes) or sizes != sorted(set(sizes)):
        raise ValueError(f"prefixes {prefixes} give sizes {sizes}; each must be distinct and in 1..d_sae-1 ({d_sae - 1})")
    return sizes + [d_sae]


class MatryoshkaSAE(SAE):
    Options = MatryoshkaOptions

    @property
    def sizes(self) -> list[int]:
        return prefix_sizes(self.options.prefixes, self.cfg.d_sae)

    @property
    def level_weights(self) -> list[float]:
        w = self.options.weights or [1.0] * len(self.sizes)
        return [x / sum(w) for x in w]

    def prefix_reconstructions(self, features_NF: torch.Tensor) -> torch.Tensor:
        """(L, N, D): the reconstruction of each prefix, computed as cumulative sums of chunk decodes."""
        bounds = [0, *self.sizes]
        parts = [features_NF[:, a:b] @ self.W_dec[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        return torch.stack(parts).cumsum(0) + self.b_dec

    def reconstruction_term(self, out: SAEOutput, mask_N: torch.Tensor) -> torch.Tensor:
        D, F = self.cfg.d_in, self.cfg.d_sae
        x_ND = out.x_normalized.reshape(-1, D)
        recon_LND = self.prefix_reconstructions(out.features.reshape(-1, F))
        return sum(w * losses.reconstruction(x_ND, r_ND, mask_N) for w, r_ND in zip(self.level_weights, recon_LND))

    @classmethod
    def validate_options(cls, v) -> None:
        prefix_sizes(cls.parse_options(v.options).prefixes, v.d_sae)
