"""Temporal statistics of feature activations within documents, each with a shuffled-position control.

A pair (t, t+k) of one sequence is *valid* when both tokens are unmasked and no document starts at
t+1..t+k (document id = cumsum of doc_start along T; sequences are separate documents). Per latent
f, over valid pairs (a = f_t, b = f_{t+k}), streamed in float64:

    autocorr[k]   = Pearson(a, b) = (Σab/n − Σa Σb/n²) / sqrt(var a · var b),  k = 1..max_lag
    mean run      = (# firing tokens) / (# runs);  # runs = # firing tokens − # valid lag-1 pairs that
                    both fire (a run: consecutive firing tokens of one document)
    iid run       = 1 / (1 − p),  p = firing frequency;  run_length_ratio = mean run / iid run
    MI            = Σ_ij P(z_t=i, z_{t+1}=j) log2 P(i,j) / (P(i)P(j))  bits,  z = [f ≠ 0], lag-1 pairs
    smoothness    = mean_pairs |f_{t+1} − f_t| / mean_tokens |f_t|;  with the input given, also
                    smoothness_relative = smoothness / (mean_pairs ‖x_{t+1} − x_t‖ / mean_tokens ‖x_t‖)

Two controls repeat every statistic on permuted tokens, by seeded random permutations per batch:
- `control` (sequence-shuffled): the tokens (features, mask and input together) are permuted within
  each sequence while the document ids stay with the positions: temporal order is destroyed, each
  sequence's rates are kept.
- `doc_shuffled` (stricter): the unmasked tokens are permuted within each document only (see
  `within_document_permutation`), so each document keeps its own rates: what a latent shows beyond
  this control is order within the document, not which document it fires in.

Only firing tokens are visited (work ~ non-zeros × (1 + co-firing partners within max_lag)), so
sparse SAE codes are cheap; codes with more than DENSE_FRACTION non-zeros take a dense path.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

_F64 = torch.float64


def pair_validity(doc_start_BT: torch.Tensor, mask_BT: torch.Tensor, max_lag: int) -> torch.Tensor:
    """(B, T, K) bool: [b, t, k−1] is True when the pair (t, t+k) is valid (see the module docstring)."""
    B, T = mask_BT.shape
    doc_BT = doc_start_BT.to(torch.long).cumsum(1)
    mask_BT = mask_BT.to(torch.bool)
    valid_BTK = torch.zeros(B, T, max_lag, dtype=torch.bool, device=mask_BT.device)
    for k in range(1, min(max_lag, T - 1) + 1):
        valid_BTK[:, : T - k, k - 1] = mask_BT[:, :-k] & mask_BT[:, k:] & (doc_BT[:, :-k] == doc_BT[:, k:])
    return valid_BTK


def within_document_permutation(doc_start_BT: torch.Tensor, mask_BT: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(B, T) long: a random permutation within each sequence that moves each unmasked token to an
    unmasked position of its own document and leaves masked tokens in place; `x[rows, perm]` is the
    shuffled x. Draws B·T uniforms from `generator` (on CPU) whatever the mask."""
    B, T = mask_BT.shape
    u_N = torch.rand(B * T, generator=generator, dtype=torch.float64).to(mask_BT.device)
    # document ids that grow along the flattened batch: a document's unmasked slots are contiguous in
    # the order of (document, uniform), so sorting by it shuffles within documents only
    doc_N = (doc_start_BT.to(torch.long).cumsum(1) + torch.arange(B, device=mask_BT.device)[:, None] * (T + 1)).reshape(-1)
    slots_n = mask_BT.reshape(-1).to(torch.bool).nonzero().squeeze(1)
    src_n = slots_n[(doc_N[slots_n].to(torch.float64) + u_N[slots_n]).argsort()]
    perm_N = torch.arange(B * T, device=mask_BT.device)
    perm_N[slots_n] = src_n
    return (perm_N % T).view(B, T)


DENSE_FRACTION = 0.2
"""Above this fraction of non-zero activations, co-firing sums are computed densely, lag by lag."""


def _co_firing_sparse(
    idx_n: torch.Tensor, latent_n: torch.Tensor, token_n: torch.Tensor, v_n: torch.Tensor, valid_NK: torch.Tensor, F: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over valid pairs in which both tokens fire: ((F, K) Σab, (F,) lag-1 count, (F,) lag-1 Σ|a|+|b|−|a−b|).

    `idx_n` (sorted flat indices into a latent-major layout whose sequences are padded with K
    zeros) puts the partners of entry m within K positions among entries m+1..m+K; an entry is
    dropped once its next partner is farther, so the work is (firing tokens) + (co-firing pairs).
    """
    K, dev = valid_NK.shape[1], v_n.device
    valid_flat = valid_NK.reshape(-1)
    active = torch.arange(max(idx_n.shape[0] - 1, 0), device=dev)
    keys, vals, keys1, both1, overlap1 = [], [], [], [], []
    for j in range(1, K + 1):
        active = active[active + j < idx_n.shape[0]]
        d = idx_n[active + j] - idx_n[active]
        active, d = active[d <= K], d[d <= K]
        if active.numel() == 0:
            break
        w = valid_flat[token_n[active] * K + d - 1].to(_F64)
        a, b = v_n[active], v_n[active + j]
        keys.append(latent_n[active] * K + d - 1)
        vals.append(a * b * w)
        first = d == 1
        keys1.append(latent_n[active][first])
        both1.append(w[first])
        overlap1.append(w[first] * (a[first].abs() + b[first].abs() - (a[first] - b[first]).abs()))

    def scatter(index: list[torch.Tensor], value: list[torch.Tensor], size: int) -> torch.Tensor:
        out = torch.zeros(size, dtype=_F64, device=dev)
        return out.index_add_(0, torch.cat(index), torch.cat(value)) if index else out

    return scatter(keys, vals, F * K).view(F, K), scatter(keys1, both1, F), scatter(keys1, overlap1, F)


def _co_firing_dense(f_BTF: torch.Tensor, valid_BTK: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dense counterpart of `_co_firing_sparse`, one lag at a time (for codes with many non-zeros)."""
    B, T, F = f_BTF.shape
    K, f = valid_BTK.shape[-1], f_BTF.to(_F64)
    sab_FK = torch.zeros(F, K, dtype=_F64, device=f.device)
    for k in range(1, min(K, T - 1) + 1):
        w_1N = valid_BTK[:, : T - k, k - 1].reshape(1, -1).to(_F64)
        sab_FK[:, k - 1] = (w_1N @ (f[:, :-k] * f[:, k:]).reshape(-1, F))[0]
    a, b = f[:, :-1].reshape(-1, F), f[:, 1:].reshape(-1, F)
    w_1N = valid_BTK[:, :-1, 0].reshape(1, -1).to(_F64)
    both1_F = (w_1N @ ((a != 0) & (b != 0)).to(_F64))[0]
    overlap1_F = (w_1N @ (a.abs() + b.abs() - (a - b).abs()))[0]
    return sab_FK, both1_F, overlap1_F


class _PairSums:
    """Float64 sums over valid pairs (a = f_t, b = f_{t+k}) and tokens; one for the data, one for the control.

    sums: a_FK, aa_FK, b_FK, bb_FK, ab_FK (Σ over valid pairs at each lag); fires_F, abs_F (over
    tokens); left1_F, right1_F (lag-1 pairs whose first / second token fires), both1_F (lag-1 pairs
    where both fire), absdiff1_F (Σ|b − a| over lag-1 pairs). input_sums: Σ‖Δx‖, # lag-1 pairs, Σ‖x‖, # tokens.
    """

    def __init__(self, n_latents: int, max_lag: int) -> None:
        self.F, self.K = n_latents, max_lag
        self.sums: dict[str, torch.Tensor] = {}
        self.n_pairs_K = torch.zeros(max_lag, dtype=_F64)
        self.n_tokens = 0.0
        self.input_sums = torch.zeros(4, dtype=_F64)

    def _add(self, **named: torch.Tensor) -> None:
        for name, value in named.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value

    def add(self, f_BTF: torch.Tensor, mask_BT: torch.Tensor, valid_BTK: torch.Tensor) -> None:
        B, T, F = f_BTF.shape
        K, P, dev = self.K, T + self.K, f_BTF.device
        # Latent-major copy, each sequence padded with K zeros: nonzero() returns the firing tokens
        # sorted by latent (a CSR layout), and the partner f_{t+k} of flat index j sits at j + k.
        f_FBP = torch.nn.functional.pad(f_BTF.permute(2, 0, 1), (0, K))
        flat_f = f_FBP.reshape(-1)
        idx_n = ((f_FBP != 0) & torch.nn.functional.pad(mask_BT, (0, K))).reshape(-1).nonzero().squeeze(1)
        latent_n, rem_n = idx_n // (B * P), idx_n % (B * P)
        token_n = (rem_n // P) * T + rem_n % P
        v_n = flat_f[idx_n].to(_F64)

        # Σ_n value_n · W[token_n] per latent as CSR (F × BT) @ dense (BT × 2K+1), W = [valid | right | 1];
        # right[b, t, k−1] is valid[b, t−k, k−1]: the token is the second of a valid pair.
        right_BTK = torch.zeros_like(valid_BTK)
        for k in range(1, min(K, T - 1) + 1):
            right_BTK[:, k:, k - 1] = valid_BTK[:, : T - k, k - 1]
        ones_BT1 = torch.ones(B, T, 1, dtype=torch.bool, device=dev)
        w_NC = torch.cat([valid_BTK, right_BTK, ones_BT1], -1).reshape(B * T, 2 * K + 1).to(_F64)
        crow = torch.zeros(F + 1, dtype=torch.long, device=dev)
        crow[1:] = torch.bincount(latent_n, minlength=F).cumsum(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            lin, sq, absv, one = (
                torch.sparse_csr_tensor(crow, token_n, vals, (F, B * T), check_invariants=False) @ w_NC
                for vals in (v_n, v_n * v_n, v_n.abs(), torch.ones_like(v_n))
            )
        if idx_n.shape[0] > DENSE_FRACTION * f_BTF.numel():
            sab_FK, both1_F, overlap1_F = _co_firing_dense(f_BTF, valid_BTK)
        else:
            sab_FK, both1_F, overlap1_F = _co_firing_sparse(idx_n, latent_n, token_n, v_n, valid_BTK.reshape(B * T, K), F)
        self._add(
            a_FK=lin[:, :K], aa_FK=sq[:, :K], b_FK=lin[:, K : 2 * K], bb_FK=sq[:, K : 2 * K], ab_FK=sab_FK,
            fires_F=one[:, 2 * K], abs_F=absv[:, 2 * K], left1_F=one[:, 0], right1_F=one[:, K], both1_F=both1_F,
            absdiff1_F=absv[:, 0] + absv[:, K] - overlap1_F,
        )  # fmt: skip
        self.n_pairs_K = self.n_pairs_K.to(dev) + valid_BTK.sum((0, 1)).to(_F64)
        self.n_tokens += float(mask_BT.sum())

    def add_input(self, x_BTD: torch.Tensor, mask_BT: torch.Tensor, valid_BTK: torch.Tensor) -> None:
        x = x_BTD.to(_F64)
        pair_BT = valid_BTK[:, :-1, 0]
        dx = (x[:, 1:] - x[:, :-1]).norm(dim=-1)[pair_BT].sum()
        xn = x.norm(dim=-1)[mask_BT].sum()
        self.input_sums += torch.stack([dx, pair_BT.sum().to(_F64), xn, mask_BT.sum().to(_F64)]).cpu()

    def per_latent(self) -> dict[str, torch.Tensor]:
        """Per-latent statistics (float64 CPU tensors; NaN where undefined), from the sums."""
        if not self.sums:
            raise ValueError("no batches seen yet")
        s = {k: v.cpu() for k, v in self.sums.items()}
        n_K, n_tok, nan = self.n_pairs_K.cpu(), max(self.n_tokens, 1.0), float("nan")
        cov = s["ab_FK"] / n_K - s["a_FK"] * s["b_FK"] / n_K**2
        var_a = s["aa_FK"] / n_K - (s["a_FK"] / n_K) ** 2
        var_b = s["bb_FK"] / n_K - (s["b_FK"] / n_K) ** 2
        ok = (var_a > 1e-300) & (var_b > 1e-300) & (n_K > 1)
        autocorr = torch.where(ok, cov / (var_a * var_b).clamp_min(1e-300).sqrt(), nan).clamp(-1, 1)

        fires, both1 = s["fires_F"], s["both1_F"]
        p = fires / n_tok
        runs = fires - both1
        mean_run = torch.where(runs > 0, fires / runs.clamp_min(1), nan)
        n1 = n_K[0].clamp_min(1)
        q_left, q_right = s["left1_F"] / n1, s["right1_F"] / n1
        p11 = both1 / n1
        joint = torch.stack([1 - q_left - q_right + p11, q_left - p11, q_right - p11, p11], 1)
        marginals = torch.stack(
            [(1 - q_left) * (1 - q_right), q_left * (1 - q_right), (1 - q_left) * q_right, q_left * q_right], 1
        )
        mi = torch.where(joint > 0, joint * torch.log2(joint / marginals), 0.0).sum(1).clamp_min(0)
        mean_abs = s["abs_F"] / n_tok
        smooth = torch.where(mean_abs > 0, (s["absdiff1_F"] / n1) / mean_abs, nan)
        out = {
            "autocorr_FK": autocorr,
            "fires_F": fires,
            "frequency_F": p,
            "mean_run_length_F": mean_run,
            "iid_run_length_F": 1.0 / (1.0 - p),
            "run_length_ratio_F": mean_run * (1.0 - p),
            "mutual_information_F": mi if n_K[0] > 0 else torch.full_like(p, nan),
            "smoothness_F": smooth,
        }
        dx, n_dx, xn, n_x = self.input_sums.tolist()
        if n_dx > 0 and xn > 0:
            out["input_change"] = torch.tensor((dx / n_dx) / (xn / n_x), dtype=_F64)
            out["smoothness_relative_F"] = smooth / out["input_change"]
        return out


class TemporalMetrics:
    """Streaming temporal statistics per latent with two shuffled-position controls (module docstring).

    Usage: ``tm = TemporalMetrics(F); tm.update(features_BTF, doc_start_BT, mask_BT); tm.result()``.
    """

    def __init__(self, n_latents: int, max_lag: int = 32, seed: int = 0, min_fires: int = 10) -> None:
        if max_lag < 1:
            raise ValueError(f"max_lag must be >= 1, got {max_lag}")
        self.n_latents, self.max_lag, self.min_fires = n_latents, max_lag, min_fires
        self._generator = torch.Generator().manual_seed(seed)
        self._data = _PairSums(n_latents, max_lag)
        self._control = _PairSums(n_latents, max_lag)
        self._doc_control = _PairSums(n_latents, max_lag)

    @torch.no_grad()
    def update(
        self,
        features_BTF: torch.Tensor,
        doc_start_BT: torch.Tensor,
        mask_BT: torch.Tensor | None = None,
        acts_BTD: torch.Tensor | None = None,
    ) -> None:
        """Add one batch of whole sequences; `acts_BTD` (optional) enables the relative smoothness."""
        B, T, F = features_BTF.shape
        if F != self.n_latents:
            raise ValueError(f"expected {self.n_latents} latents, got {F}")
        dev = features_BTF.device
        mask_BT = torch.ones(B, T, dtype=torch.bool, device=dev) if mask_BT is None else mask_BT.to(dev, torch.bool)
        doc_start_BT = doc_start_BT.to(dev)
        valid_BTK = pair_validity(doc_start_BT, mask_BT, self.max_lag)
        self._data.add(features_BTF, mask_BT, valid_BTK)

        perm_BT = torch.rand(B, T, generator=self._generator).argsort(dim=1).to(dev)
        rows_B1 = torch.arange(B, device=dev)[:, None]
        f_perm_BTF, mask_perm_BT = features_BTF[rows_B1, perm_BT], mask_BT[rows_B1, perm_BT]
        valid_perm_BTK = pair_validity(doc_start_BT, mask_perm_BT, self.max_lag)
        self._control.add(f_perm_BTF, mask_perm_BT, valid_perm_BTK)

        # within documents: the mask stays, so the valid pairs stay
        doc_perm_BT = within_document_permutation(doc_start_BT, mask_BT, self._generator)
        self._doc_control.add(features_BTF[rows_B1, doc_perm_BT], mask_BT, valid_BTK)

        if acts_BTD is not None:
            self._data.add_input(acts_BTD, mask_BT, valid_BTK)
            self._control.add_input(acts_BTD[rows_B1, perm_BT], mask_perm_BT, valid_perm_BTK)
            self._doc_control.add_input(acts_BTD[rows_B1, doc_perm_BT], mask_BT, valid_BTK)

    def result(self, alive_only: bool = True) -> dict[str, Any]:
        """Summaries (means over alive latents, or over all latents) and per-latent lists under "per_latent".

        A latent is alive when it fired on at least `min_fires` evaluated tokens; NaN entries (a
        statistic undefined for a latent) are left out of the means.
        """
        data, control, doc_control = self._data.per_latent(), self._control.per_latent(), self._doc_control.per_latent()
        alive_F = data["fires_F"] >= self.min_fires
        use_F = alive_F if alive_only else torch.ones_like(alive_F)

        def mean(t: torch.Tensor) -> float:
            return float(t[use_F].nanmean()) if bool(use_F.any()) else float("nan")

        def by_lag(t_FK: torch.Tensor) -> list[float]:
            return t_FK[use_F].nanmean(0).tolist() if bool(use_F.any()) else [float("nan")] * self.max_lag

        out: dict[str, Any] = {
            "n_tokens": int(self._data.n_tokens),
            "n_latents": self.n_latents,
            "max_lag": self.max_lag,
            "min_fires": self.min_fires,
            "n_alive": int(alive_F.sum()),
            "alive_only": alive_only,
            "autocorr_lag1_mean": mean(data["autocorr_FK"][:, 0]),
            "autocorr_lag1_mean_control": mean(control["autocorr_FK"][:, 0]),
            "autocorr_mean_by_lag": by_lag(data["autocorr_FK"]),
            "autocorr_mean_by_lag_control": by_lag(control["autocorr_FK"]),
            "autocorr_lag1_doc_shuffled_mean": mean(doc_control["autocorr_FK"][:, 0]),
            "autocorr_mean_by_lag_doc_shuffled": by_lag(doc_control["autocorr_FK"]),
        }
        for name in ("run_length_ratio", "mutual_information", "smoothness", "smoothness_relative"):
            if f"{name}_F" in data:
                out[f"{name}_mean"] = mean(data[f"{name}_F"])
                out[f"{name}_mean_control"] = mean(control[f"{name}_F"])
                out[f"{name}_mean_doc_shuffled"] = mean(doc_control[f"{name}_F"])
        if "input_change" in data:
            out["input_change"] = float(data["input_change"])
            out["input_change_control"] = float(control["input_change"])
            out["input_change_doc_shuffled"] = float(doc_control["input_change"])

        per_latent: dict[str, Any] = {"alive_F": alive_F.tolist()}
        for key, value in data.items():
            if key.endswith(("_F", "_FK")):
                name = "autocorr_lag_FK" if key == "autocorr_FK" else key
                per_latent[name] = value.tolist()
                if key not in ("fires_F", "frequency_F", "iid_run_length_F"):  # identical under the control
                    per_latent[f"{name}_control"] = control[key].tolist()
                    per_latent[f"{name}_doc_shuffled"] = doc_control[key].tolist()
        out["per_latent"] = per_latent
        return out
