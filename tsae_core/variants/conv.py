"""Temporal convolution SAE (seed 004): each latent's pre-activation is a causal convolution over the
last `buffer` tokens of its document, and codes pooled at several time scales are asked to persist.

With x~_t = s x_t - b_dec and p_t = x~_t W_enc (the token-wise pre-activation without its bias):

    pre_t = b_enc + p_t + sum_{l=1}^{buffer-1} kappa_l * p_{t-l} * r_{t-l,t}           (B, T, F)
    f_t   = act(pre_t)
    L     = L_recon + coefficient * d_in * mean_{s in scales} C(pool_s(f))

- The kernel kappa (buffer - 1, F) is depthwise: latent i reads only its own pre-activations at lags
  1..buffer-1, one weight per lag and latent (F (buffer - 1) parameters, no F x F mixing; an
  elementwise cost of buffer - 1 passes over (B, T, F), see `causal_depthwise_conv`). The lag-0
  weight is fixed at 1: the current token's own term always remains, and a learned lag-0 scale would
  only duplicate the scale of W_enc's column. kappa starts at 0, so training starts from the
  token-wise SAE and the temporal part grows only where it helps.
- r_{s,t} = 1 when s is in t's document and is not a special token (BOS, EOS: a model's outsized BOS
  activation is not evidence about a feature); the buffer is thus reset at every document boundary
  and nothing crosses one. Lags before the document's first token read zeros, and p carries no bias,
  so a token near a document start is not shifted by the missing lags.
- pool_s(f) averages codes over aligned blocks of s tokens (counted tokens of the document of the
  block's last token only); C is the relative change of the pooled codes between adjacent blocks of
  one document, in [0, 1] (`losses.temporal_consistency` at lag 1; see `adjacent_change`). Averaging
  over scales (2, 4, 8 by default) asks features to persist at the phrase and sentence scale without
  forcing token-level flicker to vanish; d_in = E||x_n||^2 puts it on the reconstruction's scale, as
  in `consistency`. As there, the pooled codes are those of `losses.straight_through_codes` by default
  (`gradient: straight_through`): a latent active in one block is pulled up in the next block's tokens
  through their pre-activations, where the codes alone would only pull it down in its own block;
  `gradient: codes` keeps the earlier formulation.

Seed 004 proposed a "temporal convolution layer with fixed context buffer", "hierarchical temporal
consistency" and "boundary-aware temporal modeling" (its runs never trained). The depthwise kernel, its
initialisation and the block pooling are this implementation's choices for that idea.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as nnf
from torch import nn

from tsae_core import losses
from tsae_core.sae import SAE, LossContext, SAEConfig, SAEOutput
from tsae_core.sequence import default_doc_start, document_ids
from tsae_core.typed import check


@dataclass(frozen=True)
class ConvOptions:
    buffer: int = 4
    """Tokens the convolution reads: the current one and the buffer - 1 before it (1: token-wise)."""
    scales: list[int] = field(default_factory=lambda: [2, 4, 8])
    """Block sizes (tokens) at which pooled codes are compared with the next block's."""
    coefficient: float = 0.01
    """Weight of the mean relative change of pooled codes against the input's energy d_in; 0: none."""
    gradient: Literal["straight_through", "codes"] = "straight_through"
    """straight_through: the hierarchy term's pull reaches inactive latents' pre-activations; codes: the
    gradient of the codes alone (earlier runs)."""

    def __post_init__(self) -> None:
        check(self.buffer >= 1, "options.buffer", "must be >= 1")
        check(len(self.scales) >= 1 and all(isinstance(s, int) and s >= 1 for s in self.scales), "options.scales",
              "must be a non-empty list of block sizes >= 1")
        check(list(self.scales) == sorted(set(self.scales)), "options.scales", "must be strictly increasing")
        check(self.coefficient >= 0, "options.coefficient", "must be >= 0")


class ConvSAE(SAE):
    token_wise = False
    reads_other_tokens = "its encoder reads other tokens of the document"
    Options = ConvOptions

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        self.kernel_LF = nn.Parameter(torch.zeros(self.options.buffer - 1, cfg.d_sae))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, b_dec: torch.Tensor | None = None) -> None:
        super().reset_parameters(generator, b_dec)
        if hasattr(self, "kernel_LF"):
            self.kernel_LF.zero_()

    # -- encoder -------------------------------------------------------------------------------
    @property
    def linear_encoder(self) -> bool:
        return self.options.buffer == 1

    def encode_pre(self, x_n_BTD, doc_start_BT=None, position_BT=None):
        return self.encode_pre_masked(x_n_BTD, None, doc_start_BT, position_BT)

    def encode_pre_masked(self, x_n_BTD, mask_BT, doc_start_BT, position_BT):
        if self.linear_encoder:  # buffer 1: the token-wise encoder, computed exactly as the base computes it
            return SAE.encode_pre(self, x_n_BTD, doc_start_BT, position_BT)
        B, T, _ = x_n_BTD.shape
        p_BTF = (x_n_BTD - self.b_dec) @ self.W_enc
        if doc_start_BT is None:
            doc_start_BT = default_doc_start(B, T, x_n_BTD.device)
        readable_BTF = p_BTF if mask_BT is None else p_BTF * mask_BT.unsqueeze(-1).to(p_BTF.dtype)
        past_BTF = causal_depthwise_conv(readable_BTF, self.kernel_LF, doc_start_BT)
        return p_BTF + past_BTF + self.b_enc

    # -- losses --------------------------------------------------------------------------------
    @property
    def uses_codes_in_loss(self) -> bool:
        return self.options.coefficient > 0 and self.options.gradient == "straight_through"

    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(out, ctx)
        o = self.options
        if o.coefficient > 0:
            codes = out.features
            if o.gradient == "straight_through":
                codes = losses.straight_through_codes(codes, out.pre_acts)
            changes = [pooled_change(codes, ctx.doc_start_BT, ctx.mask_BT, s) for s in o.scales]
            terms["hierarchy"] = o.coefficient * self.cfg.d_in * torch.stack(changes).mean()
        return terms

    def extra_metrics(self) -> dict[str, float | list[float]]:
        """Mean |kappa| per lag 1..buffer-1 (the lag-0 weight is 1) and the share of latents whose
        largest |kappa| exceeds 0.1, i.e. that read the past at all."""
        if self.options.buffer == 1:
            return {}
        k = self.kernel_LF.detach().float().abs()
        return {"conv_kernel_mean_abs_by_lag": [float(v) for v in k.mean(-1)],
                "conv_latents_reading_past": float((k.max(0).values > 0.1).float().mean())}


def causal_depthwise_conv(p_BTF: torch.Tensor, kernel_LF: torch.Tensor, doc_start_BT: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{l=1}^{L} kernel[l - 1] * p_{t-l} over lags whose token is in t's document (B, T, F):
    the sum of `shift_within_document` over lags, without materialising a shifted copy per lag."""
    return _CausalDepthwiseConv.apply(p_BTF, kernel_LF, doc_start_BT)


class _CausalDepthwiseConv(torch.autograd.Function):
    """Lags as views of one padded tensor, accumulated in place; the backward written out (per lag:
    dL/dp_{t-l} += kernel_l * g_t and dL/dkernel_l = sum_t g_t * p_{t-l}, both masked by the document).
    About twice as fast on CPU as a depthwise `conv1d`, whose weight gradient is slow there."""

    @staticmethod
    def forward(ctx, p_BTF, kernel_LF, doc_start_BT):
        B, T, F = p_BTF.shape
        L = kernel_LF.shape[0]
        doc_BT = document_ids(doc_start_BT)
        source_TL = torch.arange(T, device=p_BTF.device)[:, None] - torch.arange(1, L + 1, device=p_BTF.device)[None, :]
        same_doc_BTL = ((source_TL >= 0) & (doc_BT[:, :, None] == doc_BT[:, source_TL.clamp_min(0)])).to(p_BTF.dtype)
        kernel = kernel_LF.to(p_BTF.dtype)
        padded = nnf.pad(p_BTF, (0, 0, L, 0))
        y_BTF = torch.zeros_like(p_BTF)
        for lag in range(1, L + 1):
            y_BTF.addcmul_(padded[:, L - lag : L - lag + T] * same_doc_BTL[:, :, lag - 1 : lag], kernel[lag - 1])
        ctx.save_for_backward(p_BTF, kernel, same_doc_BTL)
        ctx.kernel_dtype = kernel_LF.dtype
        return y_BTF

    @staticmethod
    def backward(ctx, g_BTF):
        p_BTF, kernel, same_doc_BTL = ctx.saved_tensors
        L = kernel.shape[0]
        grad_p = torch.zeros_like(p_BTF)
        grad_kernel = torch.empty(kernel.shape, dtype=torch.float32, device=kernel.device)
        for lag in range(1, L + 1):
            g_lag = g_BTF[:, lag:] * same_doc_BTL[:, lag:, lag - 1 : lag]
            grad_kernel[lag - 1] = (g_lag * p_BTF[:, :-lag]).sum((0, 1), dtype=torch.float32)
            grad_p[:, :-lag].addcmul_(g_lag, kernel[lag - 1])
        return grad_p, grad_kernel.to(ctx.kernel_dtype), None


def pool_blocks(features_BTF: torch.Tensor, doc_start_BT: torch.Tensor, mask_BT: torch.Tensor, size: int):
    """Mean codes over aligned blocks of `size` tokens -> (pooled (B, T // size, F), block starts a
    document (B, T // size), block has a counted token (B, T // size)).

    A block's mean covers only the counted tokens of the document of its last token, so no mean mixes
    two documents; the tail of T % size tokens is left out."""
    B, T, F = features_BTF.shape
    n = T // size
    doc_BJS = document_ids(doc_start_BT)[:, : n * size].reshape(B, n, size)
    weight_BJS = (mask_BT[:, : n * size].reshape(B, n, size) & (doc_BJS == doc_BJS[..., -1:])).to(features_BTF.dtype)
    total_BJ = weight_BJS.sum(-1)
    mean_weight_NS = (weight_BJS / total_BJ.clamp_min(1.0).unsqueeze(-1)).reshape(B * n, 1, size)
    pooled_BJF = torch.bmm(mean_weight_NS, features_BTF[:, : n * size].reshape(B * n, size, F)).view(B, n, F)
    last_doc_BJ = doc_BJS[..., -1]
    starts_BJ = torch.ones_like(last_doc_BJ, dtype=torch.bool)
    starts_BJ[:, 1:] = last_doc_BJ[:, 1:] != last_doc_BJ[:, :-1]
    return pooled_BJF, starts_BJ, total_BJ > 0


def pooled_change(features_BTF: torch.Tensor, doc_start_BT: torch.Tensor, mask_BT: torch.Tensor, size: int) -> torch.Tensor:
    """Relative change (in [0, 1]) between adjacent blocks of `size` tokens of one document."""
    if features_BTF.shape[1] // size < 2:
        return features_BTF.new_zeros(())
    pooled, starts, counted = pool_blocks(features_BTF, doc_start_BT, mask_BT, size)
    return adjacent_change(pooled, starts, counted)


def adjacent_change(g_BJF: torch.Tensor, starts_BJ: torch.Tensor, counted_BJ: torch.Tensor) -> torch.Tensor:
    """sum |g_j - g_{j+1}| / sum (|g_j| + |g_{j+1}|) (denominator detached) over adjacent blocks of one
    document that both hold a counted token: `losses.temporal_consistency` at lag 1, in value and
    gradient, computed densely (pooled codes hold up to size * k active latents each, where the sparse
    form's bookkeeping costs more than it saves)."""
    block_doc_BJ = starts_BJ.long().cumsum(1)
    valid_BJ1 = ((block_doc_BJ[:, 1:] == block_doc_BJ[:, :-1]) & counted_BJ[:, 1:] & counted_BJ[:, :-1]).unsqueeze(-1)
    a_BJF, b_BJF = g_BJF[:, :-1], g_BJF[:, 1:]
    num = ((a_BJF - b_BJF).abs() * valid_BJ1).sum()
    den = ((a_BJF.abs() + b_BJF.abs()) * valid_BJ1).sum()
    return num / den.detach().clamp_min(1e-12)
