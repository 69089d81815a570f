"""Core SAE metrics (SAEBench-core names and layout), streamed over batches in float64.

Over the N evaluated tokens (mask True; special tokens excluded), with x the input and x̂ the
reconstruction, both in raw units:

    explained_variance        = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²,  x̄ the mean over all N tokens
    explained_variance_legacy = mean over update() batches b of
                                mean over b's tokens of 1 − ‖x − x̂‖² / ‖x − x̄_b‖²
    mse                       = Σ‖x − x̂‖² / N    (summed over dimensions, as SAELens's `mse`)
    cossim                    = mean ⟨x, x̂⟩ / max(‖x‖‖x̂‖, eps)          (0 when x̂ = 0)
    l2_norm_in, l2_norm_out   = mean ‖x‖, mean ‖x̂‖
    l2_ratio                  = mean ‖x̂‖ / max(‖x‖, eps)
    relative_reconstruction_bias = E‖x̂‖² / E⟨x, x̂⟩                   (NaN if E⟨x, x̂⟩ = 0)
    l0, l1                    = mean count / mean sum of the features per token
    dead_fraction             = fraction of latents that never fired
    dense_fraction            = fraction of latents firing on more than `dense_threshold` of tokens
    silent_token_fraction     = fraction of tokens on which no latent fires (x̂ = b_dec there); not
                                SAEBench's: it tells an L0 spread over all tokens from one spent on a few

misc_metrics (SAEBench-core's section, its definitions), from the feature densities p_i (the fraction
of evaluated tokens on which latent i fires) and the weights (`misc_metrics` below):

    frac_alive                       = fraction of latents with p_i > 0
    freq_over_1_percent (10_percent) = fraction of latents with p_i > 0.01 (0.1)
    normalized_freq_over_1_percent   = Σ_{p_i > 0.01} p_i / Σ p_i  (0 when nothing fires); likewise 10%
    average_max_encoder_cosine_sim   = mean over latents of the largest cosine of its encoder vector
                                       with another latent's; likewise the decoder

token_stats follow SAELens's meaning: `total_tokens_eval_sparsity_variance` counts every position of
the evaluated batches (special ones too), `total_tokens_eval_reconstruction` those of the batches the
language-model metrics ran on (0 here; `tsae_core.metrics.model` supplies it); N itself, the tokens
every metric above averages over, is `total_tokens_counted`.

Σ‖x − x̄‖² is accumulated about a fixed shift c (the first batch's mean) so it does not lose
precision when the mean is large: Σ‖x − x̄‖² = Σ‖x − c‖² − N‖x̄ − c‖².
"""

from __future__ import annotations

from typing import Any

import torch

_EPS = 1e-12
_F64 = torch.float64


def _masked_tokens(t_BTX: torch.Tensor, mask_BT: torch.Tensor | None) -> torch.Tensor:
    """(B, T, X) -> (N, X): the evaluated tokens only."""
    flat_NX = t_BTX.reshape(-1, t_BTX.shape[-1])
    return flat_NX if mask_BT is None else flat_NX[mask_BT.reshape(-1).to(torch.bool)]


class CoreMetrics:
    """Streaming accumulator of reconstruction, shrinkage and sparsity metrics.

    Usage: ``m = CoreMetrics(); m.update(x_BTD, recon_BTD, features_BTF, mask_BT); m.result()``.
    Accumulators live on the device of the first batch, in float64.
    """

    def __init__(self, n_latents: int | None = None, dense_threshold: float = 0.1) -> None:
        if not 0 < dense_threshold <= 1:
            raise ValueError(f"dense_threshold must be in (0, 1], got {dense_threshold}")
        self.n_latents = n_latents
        self.dense_threshold = dense_threshold
        self.n_tokens = 0
        self.n_positions = 0
        self.n_batches = 0
        self._s: dict[str, torch.Tensor] = {}
        self._shift_D: torch.Tensor | None = None
        self._fires_F: torch.Tensor | None = None
        self._d = 0

    def _add(self, name: str, value: torch.Tensor) -> None:
        self._s[name] = self._s[name] + value if name in self._s else value

    @torch.no_grad()
    def update(
        self,
        x_BTD: torch.Tensor,
        recon_BTD: torch.Tensor,
        features_BTF: torch.Tensor,
        mask_BT: torch.Tensor | None = None,
    ) -> None:
        """Add one batch. `mask_BT` is True where a token counts (None: every token counts)."""
        if x_BTD.shape != recon_BTD.shape:
            raise ValueError(f"x {tuple(x_BTD.shape)} and recon {tuple(recon_BTD.shape)} differ in shape")
        if features_BTF.shape[:-1] != x_BTD.shape[:-1]:
            raise ValueError(f"features {tuple(features_BTF.shape)} do not match x {tuple(x_BTD.shape)}")
        if self.n_latents is None:
            self.n_latents = features_BTF.shape[-1]
        elif features_BTF.shape[-1] != self.n_latents:
            raise ValueError(f"expected {self.n_latents} latents, got {features_BTF.shape[-1]}")

        x_ND = _masked_tokens(x_BTD, mask_BT).to(_F64)
        recon_ND = _masked_tokens(recon_BTD, mask_BT).to(_F64)
        n = x_ND.shape[0]
        if n == 0:
            return
        if self._shift_D is None:
            self._shift_D = x_ND.mean(0)
            self._fires_F = torch.zeros(self.n_latents, dtype=torch.long, device=x_ND.device)

        err_N = (x_ND - recon_ND).pow(2).sum(-1)
        xc_ND = x_ND - self._shift_D
        norm_in_N = x_ND.norm(dim=-1)
        norm_out_N = recon_ND.norm(dim=-1)
        inner_N = (x_ND * recon_ND).sum(-1)
        batch_var_N = (x_ND - x_ND.mean(0)).pow(2).sum(-1)

        self._add("sum_xc_D", xc_ND.sum(0))
        self._add("sum_sq_xc", xc_ND.pow(2).sum())
        self._add("sum_err", err_N.sum())
        self._add("sum_ev_legacy", (1 - err_N / batch_var_N.clamp_min(_EPS)).mean())
        self._add("sum_cos", (inner_N / (norm_in_N * norm_out_N).clamp_min(_EPS)).sum())
        self._add("sum_norm_in", norm_in_N.sum())
        self._add("sum_norm_out", norm_out_N.sum())
        self._add("sum_l2_ratio", (norm_out_N / norm_in_N.clamp_min(_EPS)).sum())
        self._add("sum_sq_out", norm_out_N.pow(2).sum())
        self._add("sum_inner", inner_N.sum())

        f_NF = _masked_tokens(features_BTF, mask_BT)
        fired_NF = f_NF != 0
        self._add("sum_l0", fired_NF.sum(dtype=_F64))
        self._add("sum_l1", f_NF.sum(dtype=_F64))
        self._add("silent_tokens", (~fired_NF.any(-1)).sum(dtype=_F64))
        self._fires_F += fired_NF.sum(0)

        self.n_tokens += n
        self.n_positions += x_BTD[..., 0].numel()
        self.n_batches += 1
        self._d = x_ND.shape[1]

    def feature_frequencies(self) -> torch.Tensor:
        """(F,) float64: fraction of evaluated tokens on which each latent was non-zero."""
        if self._fires_F is None:
            raise ValueError("no tokens evaluated yet")
        return self._fires_F.to(_F64) / self.n_tokens

    def result(self) -> dict[str, dict[str, Any]]:
        """The metrics as plain floats, in SAEBench-core sections (see the module docstring)."""
        if self.n_tokens == 0:
            raise ValueError("no tokens evaluated yet")
        s, n = self._s, self.n_tokens
        mean_c_D = s["sum_xc_D"] / n
        total_var = float(s["sum_sq_xc"] - n * mean_c_D.pow(2).sum())
        sum_err = float(s["sum_err"])
        ev = 1.0 - sum_err / total_var if total_var > 0 else float("nan")
        inner = float(s["sum_inner"])
        rrb = float(s["sum_sq_out"]) / inner if inner != 0 else float("nan")
        freq_F = self.feature_frequencies()
        return {
            "reconstruction_quality": {
                "explained_variance": ev,
                "explained_variance_legacy": float(s["sum_ev_legacy"]) / self.n_batches,
                "mse": sum_err / n,
                "cossim": float(s["sum_cos"]) / n,
            },
            "shrinkage": {
                "l2_norm_in": float(s["sum_norm_in"]) / n,
                "l2_norm_out": float(s["sum_norm_out"]) / n,
                "l2_ratio": float(s["sum_l2_ratio"]) / n,
                "relative_reconstruction_bias": rrb,
            },
            "sparsity": {
                "l0": float(s["sum_l0"]) / n,
                "l1": float(s["sum_l1"]) / n,
                "dead_fraction": float((freq_F == 0).to(_F64).mean()),
                "dense_fraction": float((freq_F > self.dense_threshold).to(_F64).mean()),
                "silent_token_fraction": float(s["silent_tokens"]) / n,
            },
            "token_stats": {
                "total_tokens_eval_reconstruction": 0,
                "total_tokens_eval_sparsity_variance": self.n_positions,
                "total_tokens_counted": n,
            },
        }


def misc_metrics(freq_F: torch.Tensor, max_encoder_cos_F: torch.Tensor, max_decoder_cos_F: torch.Tensor) -> dict[str, float]:
    """SAEBench-core's `misc_metrics` section (see the module docstring) from the feature densities
    and each latent's largest cosine with another latent's encoder and decoder vector."""
    p = freq_F.to(_F64)
    total = float(p.sum())

    def share(threshold: float) -> float:
        return float(p[p > threshold].sum()) / total if total > 0 else 0.0

    return {
        "average_max_encoder_cosine_sim": float(max_encoder_cos_F.to(_F64).nanmean()),
        "average_max_decoder_cosine_sim": float(max_decoder_cos_F.to(_F64).nanmean()),
        "frac_alive": float((p > 0).to(_F64).mean()),
        "freq_over_1_percent": float((p > 0.01).to(_F64).mean()),
        "freq_over_10_percent": float((p > 0.1).to(_F64).mean()),
        "normalized_freq_over_1_percent": share(0.01),
        "normalized_freq_over_10_percent": share(0.1),
    }
