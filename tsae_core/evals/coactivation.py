"""Co-activation descriptor of latents: a low-dimensional embedding of which latents fire together.

`CoFiring` keeps, batch by batch, the (token, latent) pairs where a latent fires: a sparse binary
matrix A (N tokens × F latents) with about L0 · N entries, so a dictionary of 16k latents costs
what its firings cost; the F × F co-firing matrix is never formed.

`coactivation_embedding` standardises each latent's column of A, Z = (A − 1 pᵀ) diag(p(1 − p))^(-1/2) / √N
with p the latents' firing rates, so that ZᵀZ is the correlation matrix of the latents' firing (the
phi coefficients: co-firing beyond what independent latents of the same rates would show). A
truncated SVD Z ≈ U S Vᵀ (ARPACK on a linear operator, so Z stays implicit and A sparse) gives each
latent the row of V S: latents that fire on the same tokens get nearby coordinates, inner products
of rows approximate the correlations, and a row's squared norm is the share of that latent's firing
variance the C leading components explain — at most 1, and near 0 for a latent that fires
independently of all others.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch


class CoFiring:
    """The sparse token × latent firing matrix of evaluated tokens, built batch by batch."""

    def __init__(self, n_latents: int) -> None:
        self.n_latents, self.n_tokens = n_latents, 0
        self._tokens: list[torch.Tensor] = []
        self._latents: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, features_BTF: torch.Tensor, mask_BT: torch.Tensor | None = None) -> None:
        f_NF = features_BTF.reshape(-1, features_BTF.shape[-1]).cpu()
        if mask_BT is not None:
            f_NF = f_NF[mask_BT.reshape(-1).bool().cpu()]
        token_E, latent_E = (f_NF != 0).nonzero(as_tuple=True)
        self._tokens.append((token_E + self.n_tokens).to(torch.int64))
        self._latents.append(latent_E.to(torch.int32))
        self.n_tokens += f_NF.shape[0]

    def matrix(self) -> scipy.sparse.csr_matrix:
        """(N, F) float32 CSR matrix with 1 where a latent fired on a token."""
        rows = torch.cat(self._tokens).numpy() if self._tokens else np.zeros(0, np.int64)
        cols = torch.cat(self._latents).numpy() if self._latents else np.zeros(0, np.int32)
        data = np.ones(len(rows), dtype=np.float32)
        return scipy.sparse.csr_matrix((data, (rows, cols)), shape=(self.n_tokens, self.n_latents))


def coactivation_embedding(firing_NF: scipy.sparse.spmatrix, n_dims: int, seed: int = 0) -> np.ndarray:
    """(F, C) coordinates V S of the truncated SVD of the standardised firing matrix (see the module
    docstring), C = min(n_dims, F − 1, N − 1); latents that never fire (or always do) get zero rows."""
    n_tokens, n_latents = firing_NF.shape
    dims = min(n_dims, n_latents - 1, n_tokens - 1)
    if dims < 1 or firing_NF.nnz == 0:
        return np.zeros((n_latents, 0))
    A = scipy.sparse.csr_matrix(firing_NF, dtype=np.float64)
    p_F = np.asarray(A.mean(0)).ravel()
    varies = (p_F > 0) & (p_F < 1)
    scale_F = np.where(varies, 1.0 / np.sqrt(np.where(varies, p_F * (1 - p_F), 1.0) * n_tokens), 0.0)
    Z = scipy.sparse.linalg.LinearOperator(
        (n_tokens, n_latents), dtype=np.float64,
        matvec=lambda x: A @ (scale_F * x.ravel()) - p_F @ (scale_F * x.ravel()),
        rmatvec=lambda y: scale_F * (A.T @ y.ravel() - p_F * y.sum()),
    )
    v0 = np.random.default_rng(seed).standard_normal(min(n_tokens, n_latents))
    _, s_C, vt_CF = scipy.sparse.linalg.svds(Z, k=dims, v0=v0)
    order = np.argsort(s_C)[::-1]
    return (vt_CF[order].T * s_C[order]).astype(np.float64)
