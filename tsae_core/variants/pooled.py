"""Mean-pooled SAE: the control for the temporal family. It is a smoother, not a temporal prior.

Its encoder reads the mean of the last `window` counted tokens of the document instead of the
current token alone. The decoder and every loss are the token-wise SAE's:

    x~_t  = s x_t - b_dec
    pre_t = b_enc + (sum_{l=0}^{window-1} x~_{t-l} r_{t-l,t} m_{t-l}) / (sum_l r_{t-l,t} m_{t-l}) W_enc
    f_t   = act(pre_t),   x^_t = f_t W_dec + b_dec                          (reconstructs x_t itself)

Here r_{s,t} = 1 when s is in t's document and m_s = 1 when s is a counted token (not BOS or EOS),
except that the l = 0 term always counts: a special token reads itself alone.

Any encoder that averages over neighbouring tokens makes codes persist, whatever it learns. A
temporal SAE claims its prior finds features that persist. Its persistence (lag-1 autocorrelation,
run length) has to beat this SAE's at matched L0 before that is a claim about the prior and not about
smoothing. This SAE shows what pure smoothing gives, and what it costs in reconstruction. It has
no parameters beyond the token-wise SAE's, and `window: 1` is the token-wise SAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tsae_core.sae import SAE
from tsae_core.sequence import default_doc_start, shift_within_document
from tsae_core.typed import check


@dataclass(frozen=True)
class PooledOptions:
    window: int = 4
    """Tokens averaged: the current one and the window - 1 before it in its document."""

    def __post_init__(self) -> None:
        check(isinstance(self.window, int) and self.window >= 1, "options.window", "must be an integer >= 1")


class PooledSAE(SAE):
    token_wise = False
    reads_other_tokens = "its encoder reads other tokens of the document"
    Options = PooledOptions

    @property
    def linear_encoder(self) -> bool:
        return self.options.window == 1

    def encode_pre(self, x_n_BTD, doc_start_BT=None, position_BT=None):
        return self.encode_pre_masked(x_n_BTD, None, doc_start_BT, position_BT)

    def encode_pre_masked(self, x_n_BTD, mask_BT, doc_start_BT, position_BT):
        if self.linear_encoder:  # window 1: the token-wise SAE, computed exactly as the base computes it
            return SAE.encode_pre(self, x_n_BTD, doc_start_BT, position_BT)
        pooled_BTD = window_mean(x_n_BTD - self.b_dec, self.options.window, mask_BT, doc_start_BT)
        return pooled_BTD @ self.W_enc + self.b_enc


def window_mean(x_BTD: torch.Tensor, window: int, mask_BT: torch.Tensor | None, doc_start_BT: torch.Tensor | None) -> torch.Tensor:
    """Mean of x over the counted tokens among the last `window` of each token's document (itself included)."""
    B, T, _ = x_BTD.shape
    if doc_start_BT is None:
        doc_start_BT = default_doc_start(B, T, x_BTD.device)
    if window == 1:
        return x_BTD
    counted_BT1 = (torch.ones(B, T, device=x_BTD.device) if mask_BT is None else mask_BT).unsqueeze(-1).to(x_BTD.dtype)
    total_BTD = x_BTD.clone()  # the token itself counts, special or not
    weight_BT1 = torch.ones_like(counted_BT1)
    for lag in range(1, window):
        total_BTD = total_BTD + shift_within_document(x_BTD * counted_BT1, lag, doc_start_BT)
        weight_BT1 = weight_BT1 + shift_within_document(counted_BT1, lag, doc_start_BT)
    return total_BTD / weight_BT1
