"""Temporal crosscoder: one sparse code per window of T positions, per-position encoder and decoder
(TXC; the shared-latent temporal crosscoder of TempBench, chainik1125/temp_xc, after the
acausal crosscoders of Lindsey et al. 2024, "Sparse Crosscoders").

Each document is tiled into windows of T positions from its start: the token at document position p
sits in window floor(p / T) at slot p mod T, so no window ever holds two documents, and a token's
window and slot do not depend on how documents are packed into sequences (a sequence that begins
inside a document continues that document's tiling from `position_BT`, read at its first counted
token). With x_c,p = x_n,p - b_dec,p
for the counted tokens of window w and 0 for its empty slots (special tokens, positions past the
document's end or outside the sequence):

    pre_w     = sum_p x_c,p W_enc[p] + b_enc                     (F,)   W_enc (T, D, F)
    z_w       = TopK_{k n_w}(pre_w)                              n_w = counted tokens in window w
    x_n^_p    = z_w W_dec[:, p] + b_dec,p                        W_dec (F, T, D), b_dec (T, D)

Decoder rows have unit norm jointly over (T, D) (the reference's normalisation). BatchTopK keeps the
k * (counted tokens) largest window activations of the batch and uses a calibrated threshold at
inference.

Matched sparsity. The baseline TopK spends k non-zeros per token; the crosscoder gets the same
budget: k per counted token of a window (k T for a full window, the reference's k_total = k T;
proportionally less for a window cut by a document's end). `variant_metrics.l0_sparse` is that
budget as measured, active (latent, window) pairs per counted token, the number to match against
TopK's L0.

Per-token view. `features[t, i] = z_w(t),i * ||W_dec[i, slot(t)]||`, the amount latent i writes at
token t: then x_n^_t = sum_i features[t, i] u_i,slot(t) + b_dec,slot(t) with u the unit per-position
decoder directions, as for a token-wise SAE. The core `sparsity.l0` counts latents writing to a token,
about k T (every active latent of the window), and is reported as such; dead latents and every
temporal metric use these per-token features (a window's code is shared by its tokens, so they are
piecewise constant over windows by construction). `decoder_directions` is the sum over positions of
each latent's decoder (the reference's average), used for ground-truth recovery and naming.

The code of a token depends on the later tokens of its window: the crosscoder is not causal, and
splicing its reconstruction into a language model would let position t see up to T - 1 later tokens
(measured on the tiny language model: a CE score of 0.999 at an explained variance of 0.92, where
TopK reaches 0.987 at 0.95). The model splice therefore uses `causal_reconstruction`: the token at
slot s is reconstructed from its window with the later slots left empty (as at a document's end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tsae_core.sae import SAE, LossContext, OutputStatistics, SAEConfig, SAEOutput
from tsae_core.sequence import default_doc_start, document_ids, positions_in_document
from tsae_core.typed import check
from tsae_core.variants.predictive import check_sparse_activation


@dataclass(frozen=True)
class CrosscoderOptions:
    T: int = 4
    """Positions per window (tokens sharing one code)."""

    def __post_init__(self) -> None:
        check(self.T >= 1, "options.T", "must be >= 1")


@dataclass
class WindowLayout:
    """Where each token of a (B, T) batch sits: row of its window (0 .. n_rows - 1) and slot in it."""

    row_BT: torch.Tensor
    slot_BT: torch.Tensor
    n_rows: int


def window_layout(doc_start_BT: torch.Tensor, position_BT: torch.Tensor | None, window: int,
                  counted_BT: torch.Tensor | None = None) -> WindowLayout:
    """Tile every document from its start into windows of `window` positions (see the module docstring).

    A sequence that begins inside a document continues that document's tiling: its offset is read at
    the sequence's first counted token (`counted_BT`; None: every token counts), since a language
    model's context begins with a BOS whose stored position is 0 whatever document follows it."""
    B, T = doc_start_BT.shape
    doc_BT = document_ids(doc_start_BT)
    pos_BT = positions_in_document(doc_start_BT)
    if position_BT is not None:
        counted = torch.ones_like(doc_start_BT) if counted_BT is None else counted_BT.bool()
        first_B1 = counted.long().argmax(1, keepdim=True)  # the first counted token (0 if none counts)
        leading_B1 = doc_BT.gather(1, first_B1) == 0  # it belongs to the document the sequence began inside
        offset_B1 = position_BT.gather(1, first_B1).to(pos_BT.dtype) - pos_BT.gather(1, first_B1)
        continues_BT = (doc_BT == 0) & leading_B1
        pos_BT = pos_BT + torch.where(continues_BT, offset_B1, torch.zeros_like(pos_BT))
    block_BT = torch.div(pos_BT, window, rounding_mode="floor")
    new_BT = torch.ones(B, T, dtype=torch.bool, device=doc_start_BT.device)
    new_BT[:, 1:] = (doc_BT[:, 1:] != doc_BT[:, :-1]) | (block_BT[:, 1:] != block_BT[:, :-1])
    index_BT = new_BT.long().cumsum(1) - 1
    per_sequence = int(index_BT.max()) + 1 if T else 0
    row_BT = index_BT + per_sequence * torch.arange(B, device=doc_start_BT.device)[:, None]
    return WindowLayout(row_BT, pos_BT % window, B * per_sequence)


def window_topk(pre_WF: torch.Tensor, budget_W: torch.Tensor) -> torch.Tensor:
    """Keep the budget_W[w] largest (relu'd) pre-activations of each window."""
    k_max = max(1, min(pre_WF.shape[-1], int(budget_W.max()) if budget_W.numel() else 1))
    values_WK, idx_WK = torch.relu(pre_WF).topk(k_max, dim=-1, sorted=True)
    keep_WK = torch.arange(k_max, device=pre_WF.device)[None] < budget_W[:, None]
    return torch.zeros_like(pre_WF).scatter(-1, idx_WK, values_WK * keep_WK.to(values_WK.dtype))


class CrosscoderSAE(SAE):
    token_wise = False
    reads_other_tokens = ("its forward pass is not the token-wise encode, activate, decode; its encoder reads other tokens "
                          "of the document; its reconstruction reads other tokens")
    causal = False
    Options = CrosscoderOptions

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)  # the base's token-wise tensors are replaced by per-position ones below
        check_sparse_activation(cfg.activation, "crosscoder")
        T, D, F = self.options.T, cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(T, D, F))
        self.W_dec = nn.Parameter(torch.empty(F, T, D))
        self.b_dec = nn.Parameter(torch.zeros(T, D))
        self.reset_parameters(torch.Generator().manual_seed(0))

    @classmethod
    def validate_options(cls, v) -> None:
        cls.parse_options(v.options)
        check_sparse_activation(v.activation, "crosscoder")

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, b_dec: torch.Tensor | None = None) -> None:
        """Random decoder of unit norm per latent over (T, D), encoder = its transpose, b_dec the
        same at every position."""
        if self.W_dec.dim() == 2:  # called by the base constructor, before the per-position tensors exist
            return super().reset_parameters(generator, b_dec)
        F, T, D = self.W_dec.shape
        W = torch.randn(F, T, D, generator=generator)
        self.W_dec.copy_(W / W.flatten(1).norm(dim=-1)[:, None, None])
        self.W_enc.copy_(self.W_dec.permute(1, 2, 0))
        self.b_enc.zero_()
        self.b_dec.copy_((b_dec if b_dec is not None else torch.zeros(D)).expand(T, D))

    # -- forward -------------------------------------------------------------------------------
    def encode_windows(self, x_n_BTD, mask_BT=None, doc_start_BT=None, position_BT=None) -> dict[str, Any]:
        """Window pre-activations (W, F), the layout and the counted tokens per window (W,)."""
        B, T, D = x_n_BTD.shape
        Tw, F = self.options.T, self.cfg.d_sae
        if doc_start_BT is None:
            doc_start_BT = default_doc_start(B, T, x_n_BTD.device)
        counted_BT = torch.ones(B, T, dtype=torch.bool, device=x_n_BTD.device) if mask_BT is None else mask_BT.bool()
        lay = window_layout(doc_start_BT, position_BT, Tw, counted_BT)
        xc_BTD = (x_n_BTD - self.b_dec[lay.slot_BT]) * counted_BT.unsqueeze(-1).to(x_n_BTD.dtype)
        X_WTD = x_n_BTD.new_zeros(lay.n_rows, Tw, D)
        X_WTD[lay.row_BT.reshape(-1), lay.slot_BT.reshape(-1)] = xc_BTD.reshape(-1, D)
        pre_WF = X_WTD.reshape(lay.n_rows, Tw * D) @ self.W_enc.reshape(Tw * D, F) + self.b_enc
        tokens_W = torch.zeros(lay.n_rows, device=x_n_BTD.device).index_add_(0, lay.row_BT.reshape(-1), counted_BT.reshape(-1).float())
        return {"pre": pre_WF, "layout": lay, "tokens": tokens_W}

    def encode_pre(self, x_n_BTD, doc_start_BT=None, position_BT=None) -> torch.Tensor:
        """Each token's window pre-activations (B, T, F)."""
        w = self.encode_windows(x_n_BTD, None, doc_start_BT, position_BT)
        return w["pre"][w["layout"].row_BT]

    def window_code(self, pre_WF: torch.Tensor, tokens_W: torch.Tensor) -> torch.Tensor:
        """The sparse window codes: k per counted token of each window (see the module docstring)."""
        k = self.cfg.k or 1
        if self.cfg.activation == "topk":
            return window_topk(pre_WF, (k * tokens_W).long())
        z_WF = self.activation(pre_WF, tokens_W > 0, budget=int(k * tokens_W.sum()))  # batchtopk
        return z_WF * (tokens_W > 0).unsqueeze(-1).to(z_WF.dtype)

    def forward(self, x_BTD, mask_BT=None, doc_start_BT=None, position_BT=None) -> SAEOutput:
        if x_BTD.dim() == 2:  # one sequence of tokens, as the base treats it
            out = self.forward(x_BTD.unsqueeze(0), *(None if t is None else t.unsqueeze(0) for t in (mask_BT, doc_start_BT, position_BT)))
            return SAEOutput(*(t.squeeze(0) for t in (out.features, out.recon, out.pre_acts, out.x_normalized, out.recon_normalized)),
                             extras=out.extras)
        s = self.cfg.activation_scaling_factor
        x_n = x_BTD * s
        B, T, D = x_n.shape
        Tw, F = self.options.T, self.cfg.d_sae
        w = self.encode_windows(x_n, mask_BT, doc_start_BT, position_BT)
        lay = w["layout"]
        z_WF = self.window_code(w["pre"], w["tokens"])
        R_WTD = (z_WF @ self.W_dec.reshape(F, Tw * D)).view(-1, Tw, D) + self.b_dec
        recon_n = R_WTD[lay.row_BT, lay.slot_BT]
        norm_TF = self.W_dec.norm(dim=-1).T
        features = z_WF[lay.row_BT] * norm_TF[lay.slot_BT]
        extras = {"window_code": z_WF, "window_pre": w["pre"], "window_tokens": w["tokens"], "row_BT": lay.row_BT, "slot_BT": lay.slot_BT}
        return SAEOutput(features, recon_n / s, w["pre"][lay.row_BT], x_n, recon_n, extras)

    @torch.no_grad()
    def causal_reconstruction(self, x_BTD, mask_BT, doc_start_BT=None, position_BT=None) -> torch.Tensor:
        """Each token from the slots of its window up to its own: T passes, the s-th with slots > s empty."""
        B, T, _ = x_BTD.shape
        if doc_start_BT is None:
            doc_start_BT = default_doc_start(B, T, x_BTD.device)
        slot_BT = window_layout(doc_start_BT, position_BT, self.options.T, mask_BT).slot_BT
        recon = torch.zeros_like(x_BTD)
        for s in range(self.options.T):
            out = self(x_BTD, mask_BT.bool() & (slot_BT <= s), doc_start_BT, position_BT)
            recon = torch.where((slot_BT == s).unsqueeze(-1), out.recon, recon)
        return recon

    # -- losses --------------------------------------------------------------------------------
    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        """Per-token reconstruction; AuxK on windows: dead latents' top-k_aux window activations
        must reconstruct the window's residual at its counted tokens (in per-token units)."""
        terms = {"recon": self.reconstruction_term(out, ctx.mask_BT.reshape(-1))}
        if self.cfg.aux_k_coefficient > 0 and ctx.dead_F is not None and bool(ctx.dead_F.any()):
            terms["aux_k"] = self.cfg.aux_k_coefficient * self.window_aux_k(out, ctx)
        return terms

    def window_aux_k(self, out: SAEOutput, ctx: LossContext) -> torch.Tensor:
        e = out.extras
        Tw, D, F = self.options.T, self.cfg.d_in, self.cfg.d_sae
        counted_BT = ctx.mask_BT.bool()
        rows, slots = e["row_BT"][counted_BT], e["slot_BT"][counted_BT]
        residual_WTD = out.x_normalized.new_zeros(len(e["window_tokens"]), Tw, D)
        residual_WTD[rows, slots] = (out.x_normalized - out.recon_normalized).detach()[counted_BT]
        counted_WT = torch.zeros(residual_WTD.shape[:2], dtype=out.x_normalized.dtype, device=residual_WTD.device)
        counted_WT[rows, slots] = 1.0
        n_dead, k_aux = int(ctx.dead_F.sum()), self.cfg.aux_k
        dead_pre_WF = torch.where(ctx.dead_F, e["window_pre"], torch.full_like(e["window_pre"], -torch.inf))
        values, idx = dead_pre_WF.topk(min(k_aux, n_dead), dim=-1, sorted=False)
        codes_WF = torch.zeros_like(dead_pre_WF).scatter(-1, idx, torch.relu(values))
        e_hat_WTD = (codes_WF @ self.W_dec.reshape(F, Tw * D)).view(-1, Tw, D)
        err = ((residual_WTD - e_hat_WTD).pow(2).sum(-1) * counted_WT).sum() / counted_WT.sum().clamp_min(1.0)
        return min(n_dead / k_aux, 1.0) * err

    # -- decoder norms, calibration, directions, reports -----------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        if self.W_dec.grad is not None:  # grad -= (grad . W) W per latent, over its (T, D) block
            W, grad = self.W_dec, self.W_dec.grad
            grad.addcmul_(torch.linalg.vecdot(grad.flatten(1), W.flatten(1))[:, None, None], W, value=-1)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.flatten(1).norm(dim=-1).clamp_min(1e-8)[:, None, None]

    @torch.no_grad()
    def calibrate(self, batches: list) -> None:
        """batchtopk: the inference threshold from window pre-activations with the training budget."""
        if self.cfg.activation != "batchtopk":
            return
        entries = []
        for b in batches:
            w = self.encode_windows(b.acts_BTD * self.cfg.activation_scaling_factor, b.mask_BT, b.doc_start_BT, b.position_BT)
            entries.append((w["pre"], w["tokens"] > 0, int(self.cfg.k * w["tokens"].sum())))
        self.activation.calibrate(entries)

    def decoder_directions(self) -> torch.Tensor:
        return self.W_dec.sum(dim=1)

    @torch.no_grad()
    def extra_metrics(self) -> dict[str, Any]:
        """How position-specific the latents are: the mean cosine between a latent's decoder
        directions at two different positions, and the mean share of its squared decoder norm at its
        strongest position (1/T: spread evenly, 1: writes at one position only)."""
        F, T, _ = self.W_dec.shape
        U = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        cos_FTT = U @ U.transpose(1, 2)
        pairs = T * (T - 1)
        off_diag = (cos_FTT.sum((1, 2)) - cos_FTT.diagonal(dim1=1, dim2=2).sum(-1)) / max(pairs, 1)
        share_FT = self.W_dec.pow(2).sum(-1) / self.W_dec.pow(2).sum((1, 2)).clamp_min(1e-12)[:, None]
        return {"crosscoder_decoder": {
            "position_cosine_mean": float(off_diag.mean()) if pairs else 1.0,
            "dominant_position_share_mean": float(share_FT.max(-1).values.mean()),
        }}

    def output_statistics(self) -> CrosscoderStatistics:
        return CrosscoderStatistics(self.options.T)


class CrosscoderStatistics(OutputStatistics):
    """L0 per token defined three ways over the eval data:
    `l0_sparse`      active (latent, window) pairs per counted token: the budget, matched against TopK's k;
    `l0_per_window`  active latents per window that holds a counted token;
    `l0_token_view`  latents writing to a counted token (the core `sparsity.l0` of the per-token features);
    and `window_fill`, the mean share of a window's T slots that hold counted tokens."""

    def __init__(self, T: int):
        self.T = T
        self.active = self.windows = self.tokens = self.token_view = 0.0

    @torch.no_grad()
    def update(self, out: SAEOutput, mask_BT: torch.Tensor) -> None:
        e = out.extras
        m = mask_BT.to(out.features.device).bool()
        held_W = e["window_tokens"] > 0
        self.active += float((e["window_code"][held_W] != 0).sum())
        self.windows += float(held_W.sum())
        self.tokens += float(m.sum())
        self.token_view += float((out.features[m] != 0).sum())

    def result(self) -> dict[str, Any]:
        n, w = max(self.tokens, 1.0), max(self.windows, 1.0)
        return {
            "l0_sparse": self.active / n,
            "l0_per_window": self.active / w,
            "l0_token_view": self.token_view / n,
            "l0_reconstruction": self.token_view / n,  # a token is rebuilt from every active latent of its window
            "window_fill": self.tokens / (w * self.T),
        }
