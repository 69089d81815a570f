"""Loss terms as pure functions. Inputs are in the normalised space (x * scaling factor).

Shapes: x/recon (N, D) flattened tokens, features/pre-activations (N, F), W_dec (F, D),
mask (N,) True for tokens that count. Every function returns a scalar tensor.
"""

from __future__ import annotations

import torch

from tsae_core import sparse_codes


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


AUX_BLOCK_RATIO = 16
"""On the sparse path AuxK decodes its codes as a dense (tokens x dead latents) block while there
are at most this many dead latents per kept one (k_aux 384 of 1638 dead at 768 x 16384: the block
is ~3x faster than the sparse decoder); beyond, sparsely."""


def aux_k(
    residual_ND: torch.Tensor,
    pre_NF: torch.Tensor,
    dead_F: torch.Tensor,
    W_dec_FD: torch.Tensor,
    k_aux: int,
    mask_N: torch.Tensor,
    pick: sparse_codes.Pick | None = None,
) -> torch.Tensor:
    """AuxK (Gao et al. 2024): dead latents' top-k_aux activations must reconstruct the residual.

    e = x - x_hat (no gradient through it), e_hat = TopK_aux(relu(pre) over dead latents) W_dec,
    loss = min(n_dead / k_aux, 1) * E ||e - e_hat||^2, the scale so that a few dead latents do not
    dominate. Zero when no latent is dead.

    It is in the units of `reconstruction` (E ||x - x_hat||^2), so that the objective is the
    paper's L = ||x - x_hat||^2 + alpha ||e - e_hat||^2 and alpha (aux_k_coefficient, 1/32) is its
    weight relative to reconstruction whatever the data's scale. Dividing by Var(e) instead, while
    the reconstruction term stays unnormalised, weights it by alpha / Var(e) = alpha / (FVU Var(x)):
    about alpha / 15 at E||x||^2 = d_in = 64, and less as d_in grows — too weak to revive a latent.

    `pick` (the sparse training path, `tsae_core.sparse_codes`): pre_NF carries no gradient and the
    chosen entries' differentiable values come from pick (a sparse encoder gradient).
    """
    n_dead = int(dead_F.sum())
    if n_dead == 0:
        return pre_NF.new_zeros(())
    k = min(k_aux, n_dead)
    scale = min(n_dead / k_aux, 1.0)
    if pick is not None:
        dead_cols = dead_F.nonzero().squeeze(1)
        with torch.no_grad():
            local_NK = pre_NF[:, dead_cols].topk(k, dim=-1, sorted=False).indices
        cols = dead_cols[local_NK].flatten()
        offsets = sparse_codes.regular_offsets(pre_NF.shape[0], k, pre_NF.device)
        block = n_dead <= AUX_BLOCK_RATIO * k  # k_aux fill enough of the dead latents that matmuls are faster
        values = torch.relu(pick(cols, offsets, within=dead_cols if block else None))
        if not block:  # many dead latents: the sparse decoder
            codes = sparse_codes.SparseCodes(values, cols, offsets, pre_NF.shape[1])
            e_hat_ND = sparse_codes.decode(codes, W_dec_FD)
        else:  # a dense block over the dead latents, for the decoder and the encoder's gradient
            codes_N_dead = torch.zeros(local_NK.shape[0], n_dead, dtype=values.dtype, device=values.device)
            e_hat_ND = codes_N_dead.scatter(-1, local_NK, values.view_as(local_NK)) @ W_dec_FD[dead_cols]
        return scale * reconstruction(residual_ND.detach(), e_hat_ND, mask_N)
    dead_pre_NF = torch.where(dead_F, pre_NF, torch.full_like(pre_NF, -torch.inf))
    values_NK, idx_NK = dead_pre_NF.topk(k, dim=-1, sorted=False)
    codes_NF = torch.zeros_like(pre_NF).scatter(-1, idx_NK, torch.relu(values_NK))
    return scale * reconstruction(residual_ND.detach(), codes_NF @ W_dec_FD, mask_N)


def threshold_gap(pre_NF: torch.Tensor, threshold_F: torch.Tensor, mask_N: torch.Tensor) -> torch.Tensor:
    """JumpReLU's pre-activation loss: mean over tokens and latents of max(0, theta_i - pre_i).

    A latent gets gradient from the reconstruction only where it fires (and its threshold only within
    the estimator's window), so once its threshold passes every pre-activation it is dead for good.
    This term lifts the pre-activations that sit below their thresholds, and lowers the thresholds,
    by a small constant pull on every latent (the pre-activation loss of Conerly et al. 2025, "Circuits
    Updates — January 2025", with unit-norm decoders); the L0 penalty holds the balance."""
    return masked_mean(torch.relu(threshold_F - pre_NF).mean(-1), mask_N)


# ---------------------------------------------------------------- temporal and geometric terms


def straight_through_codes(features_BTF: torch.Tensor, pre_acts_BTF: torch.Tensor) -> torch.Tensor:
    """The codes, with a gradient that also reaches the latents the activation left at zero.

        g = f + (pre - stopgrad(pre)) * [f = 0]

    g equals f in value; its gradient is f's where a latent is active and passes straight through to
    the pre-activation where it is not (the straight-through estimator of Bengio, Leonard & Courville
    2013, "Estimating or propagating gradients through stochastic neurons", applied to TopK / ReLU /
    JumpReLU selection). A term on the codes that asks a latent to appear where it is inactive (at
    t + delta, when it fires at t) then raises that latent's pre-activation, which can carry it into
    the TopK or over its threshold; through f alone, that pull lands on a zeroed code and is lost.
    Only terms whose gradient reaches an inactive entry move it: a pair of zeros contributes none."""
    inactive = (features_BTF == 0).to(pre_acts_BTF.dtype)
    return features_BTF + (pre_acts_BTF - pre_acts_BTF.detach()) * inactive


def same_document_pairs(doc_start_BT: torch.Tensor, mask_BT: torch.Tensor, delta: int) -> torch.Tensor:
    """(B, T - delta) True where tokens t and t + delta are in one document and both count.

    A document begins where `doc_start_BT` is True, so the pair straddles a boundary iff a start
    lies in (t, t + delta]; special tokens (mask False) never pair."""
    doc_id_BT = doc_start_BT.long().cumsum(dim=1)
    same_doc = doc_id_BT[:, delta:] == doc_id_BT[:, :-delta]
    return same_doc & mask_BT[:, delta:] & mask_BT[:, :-delta]


def temporal_consistency(
    features_BTF: torch.Tensor, doc_start_BT: torch.Tensor, mask_BT: torch.Tensor, window: int, power: int = 1
) -> torch.Tensor:
    """Relative change of (non-negative) codes within documents, over lags delta = 1..window:

        C = sum_{delta, valid (t, t+delta)} sum_i |f_{t,i} - f_{t+delta,i}|^p
            / sum_{delta, valid (t, t+delta)} sum_i (|f_{t,i}|^p + |f_{t+delta,i}|^p)   (denominator detached)

    C lies in [0, 1] for p = 1 and [0, 2] for p = 2 whatever the width, k or activation scale, so one
    coefficient means the same across them; 0 when no valid pair exists.

    Computed sparsely, with the value and the gradient of the dense definition: for codes a, b >= 0
    (every activation here gives them) |a - b| = a + b - 2 min(a, b) and (a - b)^2 = a^2 + b^2 - 2ab,
    where min(a, b) and ab vanish unless a latent is active at both positions. Each lag then costs
    O(B T m) for m active latents per token instead of O(B T F) (a window of 32 no longer costs 32
    dense passes over the dictionary). Where one side is zero, |a - b| has derivative -1 towards the
    zero side, which the half-weighted terms below reproduce (p = 1)."""
    F = features_BTF.shape[-1]
    m = max(1, min(F, int((features_BTF > 0).sum(-1).max()) if features_BTF.numel() else 1))
    idx_BTM = features_BTF.topk(m, dim=-1, sorted=False).indices  # each token's active latents (and zeros)
    active_BTF = (features_BTF > 0).to(features_BTF.dtype)
    mass_BT = (features_BTF.pow(power) * active_BTF).sum(-1)  # no gradient into zero codes, as |0 - 0|
    half = 0.5 if power == 1 else 1.0
    num = features_BTF.new_zeros(())
    den = features_BTF.new_zeros(())
    for delta in range(1, min(window, features_BTF.shape[1] - 1) + 1):
        valid_BT = same_document_pairs(doc_start_BT, mask_BT, delta).to(features_BTF.dtype)
        pair_mass = ((mass_BT[:, :-delta] + mass_BT[:, delta:]) * valid_BT).sum()
        a_BTF, b_BTF = features_BTF[:, :-delta], features_BTF[:, delta:]
        shared = a_BTF.new_zeros(())
        # over the latents active at t (then at t + delta), the other side read at the same latents
        for x_BTF, y_BTF, idx in ((a_BTF, b_BTF, idx_BTM[:, :-delta]), (b_BTF, a_BTF, idx_BTM[:, delta:])):
            x, y = x_BTF.gather(-1, idx), y_BTF.gather(-1, idx)
            both = ((x > 0) & (y > 0)).to(x.dtype)
            x_only = ((x > 0) & (y == 0)).to(x.dtype)
            term = torch.minimum(x, y) if power == 1 else x * y
            # active on both sides: counted once (from t); active at x only: the gradient into y
            weight = (both if x_BTF is a_BTF else 0.0) + half * x_only
            shared = shared + (term * weight).sum(-1).mul(valid_BT).sum()
        num = num + pair_mass - 2 * shared
        den = den + pair_mass
    return num / den.detach().clamp_min(1e-12)


def info_nce(
    anchor_PH: torch.Tensor, positive_PH: torch.Tensor, queue_QH: torch.Tensor, same_doc_PP: torch.Tensor, temperature: float,
    same_doc_PQ: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarities (anchor and positive rows are normalised here; queued
    rows are expected normalised).

    For pair p the positive is its partner; the negatives are the other pairs' partners and the
    queue of past codes. Partners and queued codes from p's own document are masked out (they are not
    negatives; `same_doc_PP`, `same_doc_PQ`):
        L = (CE(z_a z_p^T / tau over [positives, queue]) + CE(z_p z_a^T / tau over [anchors, queue])) / 2
    computed as logsumexp over each block, combined with logaddexp: no (P, P + Q) concatenation.
    """
    za, zp = nn_normalize(anchor_PH), nn_normalize(positive_PH)
    blocked_PP = same_doc_PP & ~torch.eye(len(za), dtype=torch.bool, device=za.device)
    total = za.new_zeros(())
    for u, v in ((za, zp), (zp, za)):
        u = u / temperature
        positive_P = (u * v).sum(-1)
        lse_P = torch.logsumexp((u @ v.T).masked_fill(blocked_PP, float("-inf")), dim=1)
        if len(queue_QH):
            queue_PQ = u @ queue_QH.T
            if same_doc_PQ is not None:
                queue_PQ = queue_PQ.masked_fill(same_doc_PQ, float("-inf"))
            lse_P = torch.logaddexp(lse_P, torch.logsumexp(queue_PQ, dim=1))
        total = total + (lse_P - positive_P).mean()
    return total / 2


def nn_normalize(x_NH: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x_NH / x_NH.norm(dim=-1, keepdim=True).clamp_min(eps)


def grouped_orthogonality(W_dec_FD: torch.Tensor, groups_GS: torch.Tensor, alpha: float, reduction: str = "max") -> torch.Tensor:
    """Excess decoder similarity within groups: e_ij = max(0, |cos(W_i, W_j)| - alpha)^2 for the other
    members j of latent i's group, then per latent its largest e_ij (`max`, OrtSAE's form) or the mean
    over pairs (`mean`), averaged over latents.

    `groups_GS` holds latent indices, -1 for padding. Zero for orthogonal rows and for every
    |cos| <= alpha (the allowed sharing); grows quadratically above it. Cost F * S * D for groups of
    size S: linear in the dictionary size."""
    valid_GS = groups_GS >= 0
    W_GSD = nn_normalize(W_dec_FD[groups_GS.clamp_min(0)])
    cos_GSS = W_GSD @ W_GSD.transpose(1, 2)
    pair_GSS = valid_GS.unsqueeze(2) & valid_GS.unsqueeze(1)
    pair_GSS &= ~torch.eye(groups_GS.shape[1], dtype=torch.bool, device=W_dec_FD.device)
    excess = torch.relu(cos_GSS.abs() - alpha).pow(2) * pair_GSS.to(cos_GSS.dtype)
    if reduction == "mean":
        return excess.sum() / pair_GSS.sum().clamp_min(1)
    has_partner_GS = pair_GSS.any(-1)
    return excess.amax(-1)[has_partner_GS].sum() / has_partner_GS.sum().clamp_min(1)
