"""Temporal-relational SAE (seed 001): sparse learned position embeddings and causal local linear
attention over the previous tokens' codes feed the encoder; a curriculum grows the attention window.

With x~_t = s x_t - b_dec, u_t = x~_t W_enc + b_enc (the token-wise pre-activation) and c_t its
token-wise code, heads h = 1..H each owning a slice F_h of F / H latents:

    pre_t[F_h] = u_t[F_h] + P[bin(pos_t), F_h] + g[F_h] * sum_{s in N_w(t)} a^h_{t,s} c_s[F_h]

    a^h_{t,s} = phi(q^h_t) . phi(k^h_s) / sum_{s' in N_w(t)} phi(q^h_t) . phi(k^h_s'),   phi = elu + 1
    q^h_t = x~_t W_query[:, h],  k^h_s = x~_s W_key[:, h]      (head_dim each)

    L = L_recon + position_l1 * mean_p ||P_p||_1

- N_w(t): the previous w tokens of t's document that are not special (`causal_window_mask`; BOS and
  EOS are not read). w grows from 1 to `window` over `curriculum_steps` optimizer steps; the steps
  done are a persistent buffer (saved with the weights and in checkpoints: a resumed run continues the
  curriculum exactly) and an SAE in eval mode, as `load_sae` returns it, always uses the full window.
- Linear attention (Katharopoulos et al. 2020): a positive feature map instead of a softmax. Over a
  local window the prefix-sum form would need a (head_dim x F / H) state per token; it is evaluated
  instead in banded blocks (`local_linear_attention`), two batched matmuls of cost B T 2W (head_dim +
  F / H) for blocks of W = max(window, 16) tokens, equal to the masked T x T form.
- Non-recursive codes. Seed 001 feeds "previous tokens' codes" to the encoder; the true codes depend
  on the encoder's output at those tokens, a recursion over T. Here c_s is the token-wise code of
  token s (the SAE's own activation applied to u_s, TopK(k) for batchtopk, whose batch-wide selection
  would let later tokens in), so the whole sequence is encoded in one pass and nothing after t reaches t.
- The values are the codes themselves: head h averages its own latents' past codes and the gain g
  (per latent, starts at 0) decides how much of that persistence enters the pre-activation. No F x F
  mixing (it would cost F^2 per token); with g = 0 and P = 0 at initialisation the SAE starts as the
  token-wise one.
- Position embeddings: a table P over bins of the position in the document, one row per bin, starting
  at 0. Positions 0..15 have a bin each, then bins grow by a factor sqrt(2) (16, 23, 32, 45, ...) up
  to `max_position`, beyond which the last bin is open-ended (`metrics.position.position_bin_edges`,
  the bins the position-dependence metric uses). Documents of a language-model corpus run for
  thousands of tokens, so a table clipped at one row per position up to 128 would give nearly every
  token its last row (a second encoder bias); log-spaced bins keep the early positions exact and
  still tell a token at 300 from one at 3000. Its contribution is kept sparse by an L1 penalty on the table rather than by a TopK over it:
  every entry keeps its gradient (a TopK over a zero-initialised table would pick arbitrary entries
  and starve the rest), and an entry that no firing latent asks for receives no reconstruction
  gradient and stays exactly 0. The share of non-zero entries is reported in `extra_metrics`.

Seed 001 proposed sparse position embeddings, efficient local linear attention and a window
curriculum; its runs never trained a step (L0 = 0, negative explained variance).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import nn

from tsae_core.activations import TopK
from tsae_core.metrics.position import position_bin_edges, position_bins
from tsae_core.sae import SAE, LossContext, SAEConfig, SAEOutput
from tsae_core.sequence import default_doc_start, document_ids, positions_in_document
from tsae_core.typed import check


@dataclass(frozen=True)
class RelationalOptions:
    window: int = 8
    """Previous tokens of the document the attention reads once the curriculum is done."""
    heads: int = 4
    """Attention heads; each owns d_sae / heads latents (must divide d_sae)."""
    head_dim: int = 16
    """Width of each head's queries and keys."""
    curriculum_steps: int = 500
    """Optimizer steps over which the window grows linearly from 1 to `window` (0: full window at once)."""
    max_position: int = 4096
    """Where the last position bin begins: positions in the document at or beyond it share one row."""
    attention: bool = True
    """Read the previous tokens' codes (false: the context gain stays 0 and is not trained)."""
    positions: bool = True
    """Add the position table (false: no position prior). With both off the SAE is the token-wise one."""
    position_l1: float = 0.01
    """Weight of the L1 penalty on the position table (mean over positions of a row's L1 norm)."""

    def __post_init__(self) -> None:
        check(self.window >= 1, "options.window", "must be >= 1")
        check(self.heads >= 1, "options.heads", "must be >= 1")
        check(self.head_dim >= 1, "options.head_dim", "must be >= 1")
        check(self.curriculum_steps >= 0, "options.curriculum_steps", "must be >= 0")
        check(self.max_position >= 1, "options.max_position", "must be >= 1")
        check(self.position_l1 >= 0, "options.position_l1", "must be >= 0")


class RelationalSAE(SAE):
    token_wise = False
    reads_other_tokens = "its encoder reads other tokens of the document"
    Options = RelationalOptions

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        o = self.options
        check(cfg.d_sae % o.heads == 0, "options.heads", f"must divide d_sae ({cfg.d_sae})")
        self.position_edges = position_bin_edges(o.max_position)
        if o.attention:
            self.W_query = nn.Parameter(torch.empty(cfg.d_in, o.heads * o.head_dim))
            self.W_key = nn.Parameter(torch.empty(cfg.d_in, o.heads * o.head_dim))
            self.context_gain = nn.Parameter(torch.zeros(cfg.d_sae))
        if o.positions:
            self.position_table = nn.Parameter(torch.zeros(len(self.position_edges), cfg.d_sae))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        # batchtopk picks codes over the whole batch (later tokens included): read its per-token form
        self._per_token_topk = TopK(cfg.k) if cfg.activation == "batchtopk" else None
        self.reset_parameters(torch.Generator().manual_seed(0))

    @classmethod
    def validate_options(cls, v) -> None:
        o = cls.parse_options(v.options)
        check(v.d_sae % o.heads == 0, "options.heads", f"must divide d_sae ({v.d_sae})")

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, b_dec: torch.Tensor | None = None) -> None:
        super().reset_parameters(generator, b_dec)
        if not hasattr(self, "steps_done"):  # the base constructor runs before the attention exists
            return
        if self.options.attention:
            for W in (self.W_query, self.W_key):
                W.copy_(torch.randn(W.shape, generator=generator) / self.cfg.d_in**0.5)
            self.context_gain.zero_()
        if self.options.positions:
            self.position_table.zero_()
        self.steps_done.zero_()

    # -- curriculum ----------------------------------------------------------------------------
    def window_at(self, step: int) -> int:
        """The attention window after `step` optimizer steps: 1 at step 0, `window` from curriculum_steps on."""
        o = self.options
        if o.curriculum_steps == 0 or step >= o.curriculum_steps:
            return o.window
        return 1 + (o.window - 1) * step // o.curriculum_steps

    @property
    def current_window(self) -> int:
        return self.window_at(int(self.steps_done)) if self.training else self.options.window

    @torch.no_grad()
    def after_step(self, out: SAEOutput, ctx: LossContext) -> None:
        self.steps_done.fill_(ctx.step + 1)

    # -- encoder -------------------------------------------------------------------------------
    @property
    def linear_encoder(self) -> bool:
        return not (self.options.attention or self.options.positions)

    def encode_pre(self, x_n_BTD, doc_start_BT=None, position_BT=None):
        return self.encode_pre_masked(x_n_BTD, None, doc_start_BT, position_BT)

    def encode_pre_masked(self, x_n_BTD, mask_BT, doc_start_BT, position_BT):
        if self.linear_encoder:  # attention and positions off: the token-wise SAE, as the base computes it
            return SAE.encode_pre(self, x_n_BTD, doc_start_BT, position_BT)
        B, T, _ = x_n_BTD.shape
        if doc_start_BT is None:
            doc_start_BT = default_doc_start(B, T, x_n_BTD.device)
        x_BTD = x_n_BTD - self.b_dec
        pre_BTF = u_BTF = x_BTD @ self.W_enc + self.b_enc
        if self.options.positions:
            if position_BT is None:
                position_BT = positions_in_document(doc_start_BT)
            pre_BTF = pre_BTF + nnf.embedding(position_bins(position_BT, self.position_edges), self.position_table)
        if self.options.attention:
            pre_BTF = pre_BTF + self.context_gain * self.context(x_BTD, u_BTF, mask_BT, doc_start_BT)
        return pre_BTF

    def context(self, x_BTD: torch.Tensor, u_BTF: torch.Tensor, mask_BT: torch.Tensor | None,
                doc_start_BT: torch.Tensor) -> torch.Tensor:
        """(B, T, F): per head, the attention-weighted mean of its latents' token-wise codes over N_w(t)."""
        B, T, F = u_BTF.shape
        H, E = self.options.heads, self.options.head_dim
        activation = self._per_token_topk or self.activation
        codes_BHSG = activation(u_BTF.reshape(B * T, F)).view(B, T, H, F // H).transpose(1, 2)
        q_BHTE = (nnf.elu(x_BTD @ self.W_query) + 1).view(B, T, H, E).transpose(1, 2)
        k_BHSE = (nnf.elu(x_BTD @ self.W_key) + 1).view(B, T, H, E).transpose(1, 2)
        readable_BT = torch.ones(B, T, dtype=torch.bool, device=u_BTF.device) if mask_BT is None else mask_BT.bool()
        out_BHTG = local_linear_attention(q_BHTE, k_BHSE, codes_BHSG, doc_start_BT, readable_BT, self.current_window)
        return out_BHTG.transpose(1, 2).reshape(B, T, F)

    @torch.no_grad()
    def calibrate(self, batches: list) -> None:
        """Calibrate with the window inference uses (eval mode), whatever the curriculum reached."""
        was_training = self.training
        self.eval()
        try:
            super().calibrate(batches)
        finally:
            self.train(was_training)

    # -- losses and report ---------------------------------------------------------------------
    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(out, ctx)
        if self.options.positions and self.options.position_l1 > 0:
            terms["position_l1"] = self.options.position_l1 * self.position_table.abs().sum(-1).mean()
        return terms

    def extra_metrics(self) -> dict[str, Any]:
        """How much of the position table and of the context path the SAE uses, and the curriculum's state."""
        out: dict[str, Any] = {}
        if self.options.positions:
            P = self.position_table.detach().float().abs()
            out.update({"position_table_nonzero_fraction": float((P > 1e-2).float().mean()),
                        "position_row_l1_mean": float(P.sum(-1).mean()), "position_bins": len(self.position_edges)})
        if self.options.attention:
            g = self.context_gain.detach().float().abs()
            out.update({"context_gain_mean_abs": float(g.mean()), "latents_reading_context": float((g > 0.1).float().mean()),
                        "curriculum_window_reached": self.window_at(int(self.steps_done)), "inference_window": self.options.window})
        return out


MIN_BLOCK = 16
"""Smallest block of the banded attention (smaller blocks make many tiny matmuls)."""


def local_linear_attention(q_BHTE: torch.Tensor, k_BHTE: torch.Tensor, v_BHTG: torch.Tensor, doc_start_BT: torch.Tensor,
                           readable_BT: torch.Tensor, window: int) -> torch.Tensor:
    """out_t = sum_{s in N(t)} (q_t . k_s) v_s / sum_{s in N(t)} q_t . k_s, 0 where N(t) is empty,
    with N(t) the readable tokens s of t's document with 1 <= t - s <= window (q, k positive).

    Banded: the sequence is cut into blocks of W >= window tokens, and block j's queries meet only the
    keys of blocks j - 1 and j, so the cost is B T 2W (E + G) instead of B T^2 (E + G); the result is
    the masked T x T form's (`causal_window_mask`)."""
    B, H, T, _ = q_BHTE.shape
    W = max(window, MIN_BLOCK)
    n = -(-T // W)
    pad = n * W - T

    def blocks(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:  # (B, H, T, X) -> (B, H, n, W, X)
        return nnf.pad(x, (0, 0, 0, pad), value=value).view(x.shape[0], x.shape[1], n, W, -1)

    def with_previous(x: torch.Tensor, value: float = 0.0) -> torch.Tensor:  # (..., n, W, X) -> (..., n, 2W, X)
        previous = nnf.pad(x, (0, 0, 0, 0, 1, 0), value=value)[..., :n, :, :]
        return torch.cat([previous, x], dim=-2)

    doc_B1TX = document_ids(doc_start_BT)[:, None, :, None].float()
    doc_q_BnW = blocks(doc_B1TX, -1.0)[:, 0, ..., 0]
    doc_kv_Bn2W = with_previous(blocks(doc_B1TX, -1.0), -2.0)[:, 0, ..., 0]
    readable_Bn2W = with_previous(blocks(readable_BT[:, None, :, None].float()))[:, 0, ..., 0] > 0
    i_W = torch.arange(W, device=q_BHTE.device)
    lag_W2W = (W + i_W[:, None]) - torch.arange(2 * W, device=q_BHTE.device)[None, :]
    allowed_BnW2W = ((lag_W2W >= 1) & (lag_W2W <= window)) & (doc_q_BnW[..., :, None] == doc_kv_Bn2W[..., None, :])
    allowed_BnW2W = allowed_BnW2W & readable_Bn2W[..., None, :]
    scores = blocks(q_BHTE) @ with_previous(blocks(k_BHTE)).transpose(-1, -2)  # (B, H, n, W, 2W)
    scores = scores * allowed_BnW2W[:, None].to(scores.dtype)
    weights = scores / scores.sum(-1, keepdim=True).clamp_min(1e-6)
    out = weights @ with_previous(blocks(v_BHTG))  # (B, H, n, W, G)
    return out.reshape(B, H, n * W, -1)[:, :, :T]

