"""Loss terms as pure functions. Inputs are in the normalised space (x * scaling factor).

Shapes: x/recon (N, D) flattened tokens, features/pre-activations (N, F), W_dec (F, D),
mask (N,) True for tokens that count. Every function returns a scalar tensor.
"""

from __future__ import annotations

import torch


def masked_mean(values_N: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
    m = mask_N.to(values_N.dtype)
    return (values_N * m).sum() / m.sum().clamp_min(1.0)


def reconstruction(x_ND: torch.Tensor, recon_ND: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the squared error summed over dimensions: E ||x - x_hat||^2."""
    return masked_mean((x_ND - recon_ND).pow(2).sum(-1), mask_N)


def fraction_unexplained(x_ND: torch.Tensor, recon_ND: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
    """FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the batch's counted tokens."""
    m = mask_N.to(x_ND.dtype).unsqueeze(-1)
    mean_D = (x_ND * m).sum(0) / m.sum().clamp_min(1.0)
    err = ((x_ND - recon_ND).pow(2) * m).sum()
    var = ((x_ND - mean_D).pow(2) * m).sum()
    return err / var.clamp_min(1e-12)


def l1_decoder_weighted(features_NF: torch.Tensor, W_dec_FD: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of sum_i f_i * ||W_dec_i||  (the L1 penalty that cannot be gamed by
    shrinking codes while growing decoder rows)."""
    return masked_mean(features_NF @ W_dec_FD.norm(dim=-1), mask_N)


def aux_k(
    residual_ND: torch.Tensor,
    pre_NF: torch.Tensor,
    dead_F: torch.Tensor,
    W_dec_FD: torch.Tensor,
    k_aux: int,
    mask_N: torch.Tensor,
) -> torch.Tensor:
    """AuxK (Gao et al. 2024): dead latents' top-k_aux activations must reconstruct the residual.

    e = x - x_hat (no gradient through it), e_hat = TopK_aux(relu(pre) over dead latents) W_dec,
    loss = sum ||e - e_hat||^2 / sum ||e - mean(e)||^2, scaled by min(n_dead / k_aux, 1) so a few
    dead latents do not dominate. Zero when no latent is dead.
    """
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return pre_NF.new_zeros(())
    k = min(k_aux, n_dead)
    dead_pre_NF = torch.where(dead_F, pre_NF, torch.full_like(pre_NF, -torch.inf))
    values_NK, idx_NK = dead_pre_NF.topk(k, dim=-1, sorted=False)
    codes_NF = torch.zeros_like(pre_NF).scatter(-1, idx_NK, torch.relu(values_NK))
    e_hat_ND = codes_NF @ W_dec_FD
    scale = min(n_dead / k_aux, 1.0)
    return scale * fraction_unexplained(residual_ND.detach(), e_hat_ND, mask_N)
