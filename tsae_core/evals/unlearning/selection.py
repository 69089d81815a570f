"""Which latents the unlearning eval clamps: firing frequencies on forget and retain tokens, the ranked
selection and its random control, and the clamp's edit of the activations."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tsae_core.evals.unlearning.data import Contexts
from tsae_core.sae import SAE
from tsae_core.seeds import derive_seed


@torch.no_grad()
def encode(sae: SAE, contexts: Contexts, batch_size: int, latents: torch.Tensor | None = None) -> torch.Tensor:
    """(N, T, F) codes of the SAE on the contexts (only `latents`' columns when given), on CPU, float32.
    Special tokens are masked as in training; temporal variants read doc_start and position."""
    device = next(sae.parameters()).device
    parts = []
    for a in range(0, contexts.n, batch_size):
        s = slice(a, a + batch_size)
        out = sae(contexts.acts_NTD[s].to(device), (~contexts.special_NT[s]).to(device),
                  contexts.doc_start_NT[s].to(device), contexts.position_NT[s].to(device))
        f = out.features if latents is None else out.features[..., latents.to(device)]
        parts.append(f.float().cpu())
    return torch.cat(parts)


@dataclass
class LatentStats:
    """Per-latent firing on the selection data."""

    forget_freq_F: torch.Tensor
    retain_freq_F: torch.Tensor
    scale_F: torch.Tensor
    """Mean value where active, over forget and retain selection tokens together (0 if never active)."""
    n_forget: int
    n_retain: int

    @property
    def alive_F(self) -> torch.Tensor:
        return (self.forget_freq_F > 0) | (self.retain_freq_F > 0)


def latent_stats(features_NTF: torch.Tensor, forget_NT: torch.Tensor, retain_NT: torch.Tensor) -> LatentStats:
    """Firing frequencies of every latent on forget and retain tokens, and its mean active value."""
    active = features_NTF > 0
    n_f, n_r = int(forget_NT.sum()), int(retain_NT.sum())
    forget_count = active[forget_NT].sum(0).double()
    retain_count = active[retain_NT].sum(0).double()
    both = forget_NT | retain_NT
    value_sum = (features_NTF * active)[both].sum(0).double()
    count = active[both].sum(0).double()
    return LatentStats(forget_count / max(n_f, 1), retain_count / max(n_r, 1),
                       torch.where(count > 0, value_sum / count.clamp_min(1), 0.0).float(), n_f, n_r)


def select_latents(stats: LatentStats, retain_threshold: float, n: int) -> list[int]:
    """The top `n` eligible latents (p_r ≤ threshold, p_f > 0) by p_f / (p_r + 1/n_r), ties to the
    larger p_f, then the lower index (see the module docstring); fewer if fewer are eligible."""
    pf, pr = stats.forget_freq_F.tolist(), stats.retain_freq_F.tolist()
    eps = 1.0 / max(stats.n_retain, 1)
    eligible = [i for i in range(len(pf)) if pr[i] <= retain_threshold and pf[i] > 0]
    return sorted(eligible, key=lambda i: (-pf[i] / (pr[i] + eps), -pf[i], i))[:n]


def random_latents(stats: LatentStats, retain_threshold: float, seed: int) -> list[int]:
    """The control's order of latents: a seeded permutation of the alive latents with p_r ≤ threshold
    (a point takes as many from its front as the ranked selection used)."""
    pool = ((stats.retain_freq_F <= retain_threshold) & stats.alive_F).nonzero().squeeze(-1)
    g = torch.Generator().manual_seed(derive_seed(seed, "unlearning-control", float(retain_threshold)) % 2**63)
    return pool[torch.randperm(len(pool), generator=g)].tolist()


def clamp_edit(features_NTk: torch.Tensor, special_NT: torch.Tensor, values_k: torch.Tensor, W_dec_kD: torch.Tensor,
               scaling_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta_NTD, changed_N): the raw-unit edit that sets each of k latents to `values_k` wherever it is
    active (> 0) at a non-special token, x' = x + Σ_i (a'_i − a_i) W_dec[i] / s, and which contexts it changes."""
    active = (features_NTk > 0) & ~special_NT[..., None]
    diff = torch.where(active, values_k.to(features_NTk) - features_NTk, torch.zeros_like(features_NTk))
    delta = (diff @ W_dec_kD.to(diff)) / scaling_factor
    return delta, active.flatten(1).any(-1)
