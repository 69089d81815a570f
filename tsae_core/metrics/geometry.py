"""Feature geometry of a decoder: how close each latent's direction is to another's, and how well
conditioned the subspaces of feature groups are.

Max decoder cosine of latent i (rows u_i = W_dec[i] / ‖W_dec[i]‖):

    c_i = max_{j ≠ i} u_i · u_j        (signed: codes are non-negative, so u and −u are different features)

computed CHUNK rows at a time, so memory is CHUNK × F whatever F (16384 × 16384 never exists at once).
c_i ≈ 1 means latent i has a near-duplicate direction. Summarised by its mean, percentiles and the
share above 0.9, and a histogram.

Condition number of a group g (latents labelled g, rows normalised): κ_g = σ_max / σ_min of the
(n_g × d_in) matrix of its unit rows, over its min(n_g, d_in) singular values. Orthonormal rows give
κ = 1; a group containing two nearly collinear rows has κ ≈ 1 / sin(angle between them), large.
A group of more than d_in latents measures how evenly its rows span the input space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

CHUNK = 1024
"""Decoder rows compared with all others at once."""
HISTOGRAM_EDGES = np.linspace(0.0, 1.0, 51)
"""Bins of the max-cosine histogram (a cosine below 0 counts in the first bin)."""


def unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit norm, in float64 on W's device (zero rows stay zero)."""
    W = W_FD.detach().to(torch.float64)
    return W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def max_decoder_cosine(W_dec_FD: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,) the largest cosine of each decoder row with any other row (float64, on CPU), and (F,) that
    row's index. The products run in float32 on W's device (cosines to ~1e-6)."""
    U = unit_rows(W_dec_FD).float()
    F = U.shape[0]
    best_F = torch.full((F,), float("nan"), dtype=torch.float64)
    partner_F = torch.full((F,), -1, dtype=torch.long)
    if F < 2:
        return best_F, partner_F
    for lo in range(0, F, chunk):
        cos_CF = U[lo : lo + chunk] @ U.T
        rows = torch.arange(cos_CF.shape[0], device=U.device)
        cos_CF[rows, rows + lo] = -float("inf")  # not itself
        best_C, partner_C = cos_CF.max(1)
        best_F[lo : lo + chunk], partner_F[lo : lo + chunk] = best_C.double().cpu(), partner_C.cpu()
    return best_F, partner_F


def cosine_summary(max_cos_F: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Distribution of the per-latent max cosine: mean, p50, p90, p99, share above 0.9, histogram."""
    c = np.asarray(max_cos_F, dtype=np.float64)
    c = c[np.isfinite(c)]
    if len(c) == 0:
        nan = float("nan")
        return {"max_decoder_cos_mean": nan, "max_decoder_cos_p50": nan, "max_decoder_cos_p90": nan,
                "max_decoder_cos_p99": nan, "share_above_0_9": nan, "max_decoder_cos_histogram": None}
    p50, p90, p99 = np.percentile(c, [50, 90, 99])
    counts, _ = np.histogram(np.clip(c, 0.0, 1.0), bins=HISTOGRAM_EDGES)
    return {
        "max_decoder_cos_mean": float(c.mean()),
        "max_decoder_cos_p50": float(p50),
        "max_decoder_cos_p90": float(p90),
        "max_decoder_cos_p99": float(p99),
        "share_above_0_9": float((c > 0.9).mean()),
        "max_decoder_cos_histogram": {"edges": HISTOGRAM_EDGES.tolist(), "counts": counts.tolist()},
    }


@torch.no_grad()
def group_condition_numbers(W_dec_FD: torch.Tensor, labels_F: torch.Tensor | np.ndarray) -> dict[int, float]:
    """{label: κ} for every label ≥ 0 with at least two latents (negative labels: ungrouped)."""
    U = unit_rows(W_dec_FD).cpu()
    labels = torch.as_tensor(np.asarray(labels_F), dtype=torch.long)
    if labels.shape != (U.shape[0],):
        raise ValueError(f"expected {U.shape[0]} labels, got shape {tuple(labels.shape)}")
    out = {}
    for g in labels[labels >= 0].unique().tolist():
        members = (labels == g).nonzero().squeeze(1)
        if len(members) < 2:
            continue
        s = torch.linalg.svdvals(U[members])
        out[int(g)] = float(s[0] / s[-1]) if s[-1] > 0 else float("inf")
    return out


def condition_summary(conds: dict[int, float]) -> dict[str, Any]:
    """Median, max and mean log10 of the groups' condition numbers, and the number of groups."""
    k = np.array(list(conds.values()), dtype=np.float64)
    if len(k) == 0:
        return {"n_groups": 0}
    return {
        "n_groups": len(k),
        "condition_number_median": float(np.median(k)),
        "condition_number_max": float(k.max()),
        "log10_condition_number_mean": float(np.log10(k).mean()),
    }


def labels_from_groups(groups_GS: torch.Tensor, n_latents: int) -> torch.Tensor:
    """(F,) label of each latent from a (groups × size) table of latent indices (−1 padding); −1 if in none."""
    labels = torch.full((n_latents,), -1, dtype=torch.long)
    for g, members in enumerate(groups_GS.detach().cpu().long()):
        labels[members[members >= 0]] = g
    return labels


def decoder_geometry(W_dec_FD: torch.Tensor, labels_F: torch.Tensor | np.ndarray | None = None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The eval JSON's geometry summary (max cosine distribution; group condition numbers when labels
    are given) and the per-latent arrays (max cosine and its partner)."""
    best_F, partner_F = max_decoder_cosine(W_dec_FD)
    summary = cosine_summary(best_F)
    if labels_F is not None:
        summary["group_condition"] = condition_summary(group_condition_numbers(W_dec_FD, labels_F))
    return summary, {"max_decoder_cos": best_F, "max_decoder_cos_partner": partner_F}


COFIRING_MIN_TOKENS = 5
"""A pair of latents co-fires when it fires together on at least this many evaluated tokens ..."""
COFIRING_EXCESS = 2.0
"""... and at least this many times as often as two independent latents of their rates would."""


@torch.no_grad()
def cofiring_max_cosine(firing_NF: Any, W_dec_FD: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor]:
    """The orthogonality prior's target: for each latent, the largest |cosine| between its decoder row
    and that of a latent it co-fires with (NaN where it has no co-firing partner).

    Latents i, j co-fire when n_ij >= COFIRING_MIN_TOKENS and n_ij >= COFIRING_EXCESS n_i n_j / N over
    the N evaluated tokens (`firing_NF`, a scipy sparse 0/1 matrix, `tsae_core.evals.coactivation.CoFiring`);
    the counts come from one sparse product, never an F x F dense array of tokens. Returns the summary
    (`max_cos_cofiring_mean` over latents with a partner, and the share of alive latents that have one)
    and the per-latent values."""
    import scipy.sparse

    A = scipy.sparse.csr_matrix(firing_NF, dtype=np.float32)
    N, F = A.shape
    n_F = np.asarray(A.sum(0)).ravel()
    C = (A.T @ A).tocoo()
    i, j, n_ij = C.row, C.col, C.data
    keep = (i != j) & (n_ij >= COFIRING_MIN_TOKENS) & (n_ij >= COFIRING_EXCESS * n_F[i] * n_F[j] / max(N, 1))
    i, j = i[keep], j[keep]
    U = unit_rows(W_dec_FD).cpu().numpy()
    cos = np.abs(np.einsum("pd,pd->p", U[i], U[j]))
    best = np.full(F, -np.inf)
    np.maximum.at(best, i, cos)
    best[~np.isfinite(best)] = np.nan
    alive = n_F > 0
    has = np.isfinite(best)
    summary = {
        "max_cos_cofiring_mean": float(best[has].mean()) if has.any() else float("nan"),
        "cofiring_partner_fraction": float(has[alive].mean()) if alive.any() else float("nan"),
        "cofiring_rule": f"n_ij >= {COFIRING_MIN_TOKENS} and n_ij >= {COFIRING_EXCESS:g} n_i n_j / N",
    }
    return summary, torch.from_numpy(best)
