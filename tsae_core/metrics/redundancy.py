"""Cross-position redundancy: pairs of latents that look like one concept split by position.

For latents i ≠ j and lags δ = 1..max_lag, over the valid pairs (t, t+δ) of `pair_validity` (both
tokens unmasked, one document), with a = f_i(t), b = f_j(t+δ) and n valid pairs at lag δ:

    r_ij(δ) = (Σab/n − Σa Σb/n²) / sqrt(var a · var b)          (Pearson, float64)

A latent A that fires at t for the same underlying feature as latent B at t+δ gives r_AB(δ) near 1.
Per latent, redundancy_i = max(0, max over partners j ≠ i, lags δ and both roles (i first or
second) of r); the **score** is its mean over alive latents (≥ `min_fires` firing tokens; partners
must be alive too). The **control** is the same score with the activations shuffled within each
document (unmasked tokens, `within_document_permutation`): it keeps each document's rates and
destroys order, so latents that merely fire in the same documents reach the control's value, and
finite-sample noise between rare latents is in it too.

Cost. Activations are non-negative, so a pair that never co-fires has Σab = 0 and r ≤ 0 and can
never be a latent's (clamped) maximum: only co-firing pairs are accumulated. The codes of the
evaluated tokens are kept as a sparse (tokens × F) matrix X; for lag δ, Σab over all latent pairs is
the sparse product X[left]ᵀ X[right] (left: first tokens of valid pairs, right = left + δ), formed
BLOCK_ENTRIES / F latent rows at a time and reduced at once to per-latent maxima and a short list of
top pairs. Work ~ co-firing events Σ_t nnz_t · nnz_{t+δ} (≈ N k² per lag for TopK), memory ~ nnz(X)
+ one block; never F × F × max_lag. Beyond MAX_CO_FIRING events (a code far from sparse), later
sequences are left out: `truncated` says so and `n_tokens` how many tokens were used.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from tsae_core.metrics.temporal import pair_validity, within_document_permutation

BLOCK_ENTRIES = 1 << 22
"""Entries of one block of latent rows × F latents of the co-firing product (bounds its memory)."""
MAX_CO_FIRING = 400_000_000
"""Co-firing events (over all lags) accumulated at most; later sequences are left out beyond it."""


class CrossPositionRedundancy:
    """Streaming collection of sparse codes; `result()` gives the score, its control and the top pairs.

    Usage: ``cr = CrossPositionRedundancy(F, max_lag=4); cr.update(features_BTF, doc_start_BT, mask_BT); cr.result()``.
    """

    def __init__(self, n_latents: int, max_lag: int = 4, seed: int = 0, min_fires: int = 10, n_top: int = 20,
                 max_co_firing: float = MAX_CO_FIRING) -> None:
        if max_lag < 1:
            raise ValueError(f"max_lag must be >= 1, got {max_lag}")
        self.n_latents, self.max_lag, self.min_fires, self.n_top = n_latents, max_lag, min_fires, n_top
        self.max_co_firing = max_co_firing
        self._generator = torch.Generator().manual_seed(seed)
        self._rows, self._rows_control, self._cols, self._vals, self._valid = [], [], [], [], []
        self.n_tokens = 0  # token slots seen (masked ones included): the row count of X
        self.co_firing = 0
        self.truncated = False
        self._done: dict[str, Any] | None = None

    @torch.no_grad()
    def update(self, features_BTF: torch.Tensor, doc_start_BT: torch.Tensor, mask_BT: torch.Tensor | None = None) -> None:
        B, T, F = features_BTF.shape
        if F != self.n_latents:
            raise ValueError(f"expected {self.n_latents} latents, got {F}")
        f_BTF = features_BTF.cpu()
        mask_BT = torch.ones(B, T, dtype=torch.bool) if mask_BT is None else mask_BT.cpu().to(torch.bool)
        doc_start_BT = doc_start_BT.cpu()
        valid_BTK = pair_validity(doc_start_BT, mask_BT, self.max_lag)
        perm_BT = within_document_permutation(doc_start_BT, mask_BT, self._generator)
        fires_BTF = (f_BTF != 0) & mask_BT[..., None]

        # whole sequences while the co-firing budget lasts
        nnz_BT = fires_BTF.sum(-1).to(torch.float64)
        events_B = sum((valid_BTK[:, : T - k, k - 1] * nnz_BT[:, : T - k] * nnz_BT[:, k:]).sum(1)
                       for k in range(1, min(self.max_lag, T - 1) + 1))
        keep = int(((self.co_firing + torch.as_tensor(events_B).cumsum(0)) <= self.max_co_firing).sum())
        if keep < B:
            self.truncated = True
        if keep == 0:
            return
        self._done = None
        self.co_firing += float(torch.as_tensor(events_B)[:keep].sum())

        token_n, latent_n = fires_BTF[:keep].reshape(keep * T, F).nonzero().unbind(1)
        # the control: token s's activations move to token perm⁻¹(s) of the same sequence
        perm_N = (perm_BT[:keep] + torch.arange(keep)[:, None] * T).reshape(-1)
        inverse_N = torch.empty_like(perm_N)
        inverse_N[perm_N] = torch.arange(keep * T)
        self._rows.append((token_n + self.n_tokens).numpy())
        self._rows_control.append((inverse_N[token_n] + self.n_tokens).numpy())
        self._cols.append(latent_n.numpy())
        self._vals.append(f_BTF[:keep].reshape(keep * T, F)[token_n, latent_n].to(torch.float64).numpy())
        self._valid.append(valid_BTK[:keep].reshape(keep * T, self.max_lag).numpy())
        self.n_tokens += keep * T

    def _codes(self, rows: list[np.ndarray]) -> sp.csr_matrix:
        shape = (self.n_tokens, self.n_latents)
        if not rows:
            return sp.csr_matrix(shape)
        return sp.csr_matrix((np.concatenate(self._vals), (np.concatenate(rows), np.concatenate(self._cols))), shape=shape)

    def per_latent(self) -> dict[str, np.ndarray]:
        """(F,) arrays: alive, redundancy (max lagged cross-correlation, ≥ 0), its partner (−1: none) and
        lag (0: none), the control's redundancy; and the (F, max_lag) maxima by lag of both."""
        return self._compute()["per_latent"]

    def result(self) -> dict[str, Any]:
        """The summary: score and control (means over alive latents), by lag, and the top pairs
        {"i", "j", "lag", "corr", "co_fires"} (i at t, j at t+lag; each latent pair once, at its best lag)."""
        done = self._compute()
        pl, alive_F = done["per_latent"], done["per_latent"]["alive_F"]

        def mean(x: np.ndarray) -> Any:
            return x[alive_F].mean(0) if alive_F.any() else np.full(x.shape[1:], np.nan)

        X_csc, valid_NK = done["X"].tocsc(), done["valid_NK"]
        top = [{"i": i, "j": j, "lag": lag, "corr": corr, "co_fires": _co_fires(X_csc, valid_NK, i, j, lag)}
               for i, j, lag, corr in done["top"]]
        return {
            "score": float(mean(pl["redundancy_F"])),
            "control": float(mean(pl["redundancy_control_F"])),
            "max_lag": self.max_lag,
            "score_by_lag": mean(pl["redundancy_FK"]).tolist(),
            "control_by_lag": mean(pl["redundancy_control_FK"]).tolist(),
            "top_pairs": top,
            "n_alive": int(alive_F.sum()),
            "min_fires": self.min_fires,
            "n_tokens": int(valid_NK.shape[0]),
            "co_firing_events": int(self.co_firing),
            "truncated": self.truncated,
        }

    def _compute(self) -> dict[str, Any]:
        """Both products, once per set of batches (cached until the next update). Without any sequence
        (none seen, or the first already beyond the budget) no latent is alive and the score is NaN."""
        if self._done is None:
            valid_NK = np.concatenate(self._valid) if self._valid else np.zeros((0, self.max_lag), dtype=bool)
            fires_F = np.bincount(np.concatenate(self._cols), minlength=self.n_latents) if self._cols else np.zeros(self.n_latents, np.int64)
            alive_F = fires_F >= self.min_fires
            X = self._codes(self._rows)
            data = _lagged_maxima(X, valid_NK, alive_F, self.n_top)
            control = _lagged_maxima(self._codes(self._rows_control), valid_NK, alive_F, 0)
            per_latent = {
                "alive_F": alive_F, "fires_F": fires_F, "redundancy_F": data["best_FK"].max(1), "partner_F": data["partner_F"],
                "lag_F": data["lag_F"], "redundancy_control_F": control["best_FK"].max(1), "redundancy_FK": data["best_FK"],
                "redundancy_control_FK": control["best_FK"],
            }
            self._done = {"per_latent": per_latent, "top": data["top"], "X": X, "valid_NK": valid_NK}
        return self._done


def _lagged_maxima(X: sp.csr_matrix, valid_NK: np.ndarray, alive_F: np.ndarray, n_top: int) -> dict[str, Any]:
    """Per latent and lag, the largest r_ij(δ) over partners in either role (0 if none is positive);
    per latent the partner and lag of its overall maximum; the `n_top` best pairs (i, j, lag, r)."""
    N, F = X.shape
    K = valid_NK.shape[1]
    best_FK = np.zeros((F, K))
    best_F, partner_F, lag_F = np.zeros(F), np.full(F, -1), np.zeros(F, dtype=np.int64)
    top: list[tuple[int, int, int, float]] = []
    rows_per_block = max(1, BLOCK_ENTRIES // F)
    for k in range(1, K + 1):
        left = np.flatnonzero(valid_NK[:, k - 1])
        n = len(left)
        if n < 2:
            continue
        A, Bm = X[left], X[left + k]
        sa, sb = np.asarray(A.sum(0)).ravel(), np.asarray(Bm.sum(0)).ravel()
        var_a = np.asarray(A.multiply(A).sum(0)).ravel() / n - (sa / n) ** 2
        var_b = np.asarray(Bm.multiply(Bm).sum(0)).ravel() / n - (sb / n) ** 2
        ok_a, ok_b = alive_F & (var_a > 1e-300), alive_F & (var_b > 1e-300)
        A_csc = A.tocsc()
        for lo in range(0, F, rows_per_block):
            C = (A_csc[:, lo : lo + rows_per_block].T.tocsr() @ Bm).tocoo()  # Σab of co-firing pairs
            i, j = C.row.astype(np.int64) + lo, C.col.astype(np.int64)
            keep = (i != j) & ok_a[i] & ok_b[j]
            i, j, s = i[keep], j[keep], C.data[keep]
            r = np.clip((s / n - sa[i] * sb[j] / n**2) / np.sqrt(var_a[i] * var_b[j]), -1, 1)
            for mine, other in ((i, j), (j, i)):
                local_F = _max_into(best_FK[:, k - 1], mine, r)
                hit = r >= local_F[mine]  # entries achieving their latent's maximum in this block
                local_partner_F = np.full(F, -1)
                local_partner_F[mine[hit]] = other[hit]
                better = local_F > best_F
                best_F[better], partner_F[better], lag_F[better] = local_F[better], local_partner_F[better], k
            if n_top and len(r):
                # enough candidates that n_top distinct latent pairs remain after keeping each pair's best lag
                m = min(n_top * K, len(r))
                pick = np.argpartition(-r, m - 1)[:m]
                top += [(int(a), int(b), k, float(c)) for a, b, c in zip(i[pick], j[pick], r[pick])]
    return {"best_FK": best_FK, "partner_F": partner_F, "lag_F": lag_F, "top": _distinct_pairs(top, n_top)}


def _max_into(best_F: np.ndarray, idx: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Per latent the maximum of `value` over entries `idx` (−inf where none), folded into `best_F` in place."""
    local_F = np.full(len(best_F), -np.inf)
    np.maximum.at(local_F, idx, value)
    np.maximum(best_F, local_F, out=best_F)
    return local_F


def _distinct_pairs(top: list[tuple[int, int, int, float]], n_top: int) -> list[tuple[int, int, int, float]]:
    """The n_top best entries by correlation, each (i, j) pair once (at its best lag)."""
    seen, out = set(), []
    for i, j, lag, r in sorted(top, key=lambda e: -e[3]):
        if (i, j) not in seen:
            seen.add((i, j))
            out.append((i, j, lag, r))
    return out[:n_top]


def _co_fires(X_csc: sp.csc_matrix, valid_NK: np.ndarray, i: int, j: int, lag: int) -> int:
    """Valid pairs (t, t+lag) in which latent i fires at t and latent j at t+lag."""
    col_i = X_csc.indices[X_csc.indptr[i] : X_csc.indptr[i + 1]]
    col_j = X_csc.indices[X_csc.indptr[j] : X_csc.indptr[j + 1]]
    first = col_i[valid_NK[col_i, lag - 1]]
    return int(np.isin(first + lag, col_j).sum())
