"""Predictive SAE: a predicted code from the document's past plus a sparse novel code
(Temporal Feature Analysis; Lubana et al. 2025, "Priors in Time: Missing Inductive Biases for
Language Model Interpretability", arXiv:2511.01836, reference code eslubana/TemporalFeatureAnalysis).

With x_c = x_n - b_dec and e_s = relu(x_c,s W_enc + b_enc) the dense encoding of token s:

    a_t     = Attention(query e_t; keys, values e_s for s in S(t) and a null slot)   (H heads)
    p_t     = relu(a_t W_o + b_o)                                   (F,) predicted code direction
    y_t     = p_t W_dec ,   alpha_t = <y_t, x_c,t> / ||y_t||^2     the prediction, projected on x
    z_pred  = alpha_t p_t                                           dense, not penalised
    z_novel = TopK / BatchTopK( (x_c,t - alpha_t y_t) W_enc + b_enc )     the only sparse code
    x_n^    = (z_pred + z_novel) W_dec + b_dec

S(t) holds the `window` tokens before t of t's own document (never t itself, never a later token,
never another document, never a special token such as BOS); the null slot (the projections of a zero encoding, as the reference's
zero-padded first context token) lets a token read nothing, e.g. at a document's first token. Only
e_t and x_t enter the query and the projection: the content of the prediction comes from the past.

`features` is the novel code: it is the sparse code (L0 = k, matched against TopK), the one whose
latents can die, and what AuxK revives; the predicted code is dense by design (about half the
dictionary is non-zero at every token), so counting it would make L0, dead and dense fractions
meaningless. The predicted code and reconstruction are in `extras`; the eval reports the L0 of the
novel and of the whole code and the energy share of the reconstruction the prediction carries
(`variant_metrics`).

Known failure: one part does all the work. Either the novel code takes over (the predictor is
ignored and the SAE is a TopK SAE with a dead attention block) or the prediction does (the sparse
code is left with noise). The eval flags either (`collapse` and `PredictionCollapseWarning`) when
the prediction's energy share is below `collapse_share` or above 1 - `collapse_share`. Remedies
offered as knobs: `activation: batchtopk` for the novel code (tokens that the past predicts well
can give their budget to tokens that it does not), and `prediction_coefficient` > 0, the
asymmetric loss where the prediction alone must reconstruct x: + c * E||x_n - (z_pred W_dec + b_dec)||^2.

Deviations from the reference, for cost and for this package's recipe: keys, queries and values are
`heads` x `head_dim` wide (head_dim = d_in // heads by default) and the output projection maps them
back to the F latents, where the reference's value and output maps are F x F (F^2 parameters and
F^2 work per token, 16x the encoder at an expansion of 16); the encoder is untied (initialised as
the decoder's transpose, unit-norm decoder rows) instead of tied with a fixed input scale; the
attention reads a bounded `window` within the document instead of the whole context.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F_nn
from torch import nn

from tsae_core import losses
from tsae_core.sae import SAE, LossContext, OutputStatistics, SAEConfig, SAEOutput
from tsae_core.sequence import causal_window_mask, default_doc_start
from tsae_core.typed import check

SPARSE_ACTIVATIONS = ("topk", "batchtopk")


class PredictionCollapseWarning(UserWarning):
    """One part of a predictive SAE does all the work (see the module docstring)."""


@dataclass(frozen=True)
class PredictiveOptions:
    window: int = 32
    """Past tokens of the same document the attention reads (t - window .. t - 1)."""
    heads: int = 4
    """Attention heads."""
    head_dim: int = 0
    """Width of each head's queries, keys and values; 0: d_in // heads."""
    prediction_coefficient: float = 0.0
    """Weight of the asymmetric loss E||x - x_pred||^2 (the prediction alone reconstructs x); 0: off."""
    collapse_share: float = 0.05
    """The eval flags a collapse when the prediction's energy share is below this or above 1 - this."""

    def __post_init__(self) -> None:
        check(self.window >= 1, "options.window", "must be >= 1")
        check(self.heads >= 1, "options.heads", "must be >= 1")
        check(self.head_dim >= 0, "options.head_dim", "must be >= 0 (0: d_in // heads)")
        check(self.prediction_coefficient >= 0, "options.prediction_coefficient", "must be >= 0")
        check(0 <= self.collapse_share < 0.5, "options.collapse_share", "must be in [0, 0.5)")


def check_sparse_activation(activation: str, architecture: str) -> None:
    check(activation in SPARSE_ACTIVATIONS, "activation",
          f"{architecture} needs topk or batchtopk (its sparsity is the activation's budget), got {activation!r}")


class CausalCodeAttention(nn.Module):
    """Multi-head attention from each token's encoding to earlier encodings of its document.

    Returns (B, T, F) pre-activations of the predicted code."""

    def __init__(self, d_sae: int, heads: int, head_dim: int, window: int):
        super().__init__()
        self.heads, self.head_dim, self.window = heads, head_dim, window
        width = heads * head_dim
        self.W_q = nn.Parameter(torch.empty(d_sae, width))
        self.W_k = nn.Parameter(torch.empty(d_sae, width))
        self.W_v = nn.Parameter(torch.empty(d_sae, width))
        self.W_o = nn.Parameter(torch.empty(width, d_sae))
        self.b_q = nn.Parameter(torch.zeros(width))
        self.b_k = nn.Parameter(torch.zeros(width))
        self.b_v = nn.Parameter(torch.zeros(width))
        self.b_o = nn.Parameter(torch.zeros(d_sae))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Random columns of norm 1/sqrt(head_dim) for queries and keys (unit-scale logits, as in the
        reference), 1/sqrt(fan-in) for values and output; zero biases."""
        for W, norm in ((self.W_q, self.head_dim ** -0.5), (self.W_k, self.head_dim ** -0.5),
                        (self.W_v, self.W_v.shape[0] ** -0.5), (self.W_o, self.W_o.shape[0] ** -0.5)):
            R = torch.randn(W.shape, generator=generator)
            W.copy_(norm * R / R.norm(dim=0, keepdim=True).clamp_min(1e-8))
        for b in (self.b_q, self.b_k, self.b_v, self.b_o):
            b.zero_()

    def forward(self, enc_BTF: torch.Tensor, doc_start_BT: torch.Tensor, context_BT: torch.Tensor | None = None) -> torch.Tensor:
        """`context_BT`: the tokens that may be read (special tokens are not); None: all."""
        B, T, _ = enc_BTF.shape
        H, E = self.heads, self.head_dim

        def heads(W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (enc_BTF @ W + b).view(B, T, H, E).transpose(1, 2)  # (B, H, T, E)

        q, k, v = heads(self.W_q, self.b_q), heads(self.W_k, self.b_k), heads(self.W_v, self.b_v)
        null_k = self.b_k.view(1, H, 1, E).expand(B, H, 1, E)  # the encoding 0's key and value
        null_v = self.b_v.view(1, H, 1, E).expand(B, H, 1, E)
        k, v = torch.cat([null_k, k], dim=2), torch.cat([null_v, v], dim=2)  # (B, H, 1 + T, E)
        readable_BTS = causal_window_mask(doc_start_BT, self.window, include_self=False)
        if context_BT is not None:
            readable_BTS = readable_BTS & context_BT.bool()[:, None, :]
        readable_BTS = torch.cat([readable_BTS.new_ones(B, T, 1), readable_BTS], dim=2)
        attended = F_nn.scaled_dot_product_attention(q, k, v, attn_mask=readable_BTS.unsqueeze(1))
        return attended.transpose(1, 2).reshape(B, T, H * E) @ self.W_o + self.b_o


class PredictiveSAE(SAE):
    token_wise = False
    reads_other_tokens = "its forward pass is not the token-wise encode, activate, decode; its encoder reads other tokens of the document"
    Options = PredictiveOptions

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        check_sparse_activation(cfg.activation, "predictive")
        o = self.options
        head_dim = o.head_dim or max(1, cfg.d_in // o.heads)
        self.predictor = CausalCodeAttention(cfg.d_sae, o.heads, head_dim, o.window)
        self.predictor.reset_parameters(torch.Generator().manual_seed(0))

    @classmethod
    def validate_options(cls, v) -> None:
        cls.parse_options(v.options)
        check_sparse_activation(v.activation, "predictive")

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, b_dec: torch.Tensor | None = None) -> None:
        super().reset_parameters(generator, b_dec)
        if hasattr(self, "predictor"):  # the base constructor resets before the predictor exists
            self.predictor.reset_parameters(generator)

    # -- forward -------------------------------------------------------------------------------
    def decompose(self, x_n_BTD: torch.Tensor, doc_start_BT: torch.Tensor | None,
                  mask_BT: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The prediction from the past and the novel code's pre-activations (normalised space).
        Special tokens (mask False) are not read: a BOS's outlying norm would dominate the keys."""
        B, T, _ = x_n_BTD.shape
        if doc_start_BT is None:
            doc_start_BT = default_doc_start(B, T, x_n_BTD.device)
        xc_BTD = x_n_BTD - self.b_dec
        pre_BTF = xc_BTD @ self.W_enc + self.b_enc
        p_BTF = torch.relu(self.predictor(torch.relu(pre_BTF), doc_start_BT, mask_BT))
        y_BTD = p_BTF @ self.W_dec
        # |alpha| ||y|| <= ||x_c||: bounded even where y nearly vanishes
        alpha_BT1 = (y_BTD * xc_BTD).sum(-1, keepdim=True) / (y_BTD.pow(2).sum(-1, keepdim=True) + 1e-6)
        predicted_recon_BTD = alpha_BT1 * y_BTD
        novel_pre_BTF = pre_BTF - predicted_recon_BTD @ self.W_enc  # (x_c - alpha y) W_enc + b_enc
        return {"predicted_code": alpha_BT1 * p_BTF, "predicted_recon": predicted_recon_BTD, "novel_pre": novel_pre_BTF}

    def encode_pre(self, x_n_BTD, doc_start_BT=None, position_BT=None) -> torch.Tensor:
        """The novel code's pre-activations (what batchtopk's calibration thresholds)."""
        return self.decompose(x_n_BTD, doc_start_BT)["novel_pre"]

    def forward(self, x_BTD, mask_BT=None, doc_start_BT=None, position_BT=None) -> SAEOutput:
        if x_BTD.dim() == 2:  # one sequence of tokens, as the base treats it
            out = self.forward(x_BTD.unsqueeze(0), *(None if t is None else t.unsqueeze(0) for t in (mask_BT, doc_start_BT, position_BT)))
            return SAEOutput(*(t.squeeze(0) for t in (out.features, out.recon, out.pre_acts, out.x_normalized, out.recon_normalized)),
                             extras={k: t.squeeze(0) for k, t in out.extras.items()})
        s = self.cfg.activation_scaling_factor
        x_n = x_BTD * s
        parts = self.decompose(x_n, doc_start_BT, mask_BT)
        pre = parts["novel_pre"]
        B, T, F = pre.shape
        mask_N = None if mask_BT is None else mask_BT.reshape(-1)
        novel = self.activation(pre.reshape(B * T, F), mask_N).view(B, T, F)
        novel_recon = novel @ self.W_dec
        recon_n = parts["predicted_recon"] + novel_recon + self.b_dec
        extras = {"predicted_code": parts["predicted_code"], "predicted_recon": parts["predicted_recon"], "novel_recon": novel_recon}
        return SAEOutput(novel, recon_n / s, pre, x_n, recon_n, extras)

    @torch.no_grad()
    def calibrate(self, batches: list) -> None:
        """batchtopk: the inference threshold from novel pre-activations, special tokens unread as in training."""
        if self.cfg.activation != "batchtopk":
            return
        s, F = self.cfg.activation_scaling_factor, self.cfg.d_sae
        self.activation.calibrate([(self.decompose(b.acts_BTD * s, b.doc_start_BT, b.mask_BT)["novel_pre"].reshape(-1, F),
                                    b.mask_BT.reshape(-1)) for b in batches])

    # -- losses and reporting --------------------------------------------------------------------
    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(out, ctx)
        c = self.options.prediction_coefficient
        if c > 0:
            D = self.cfg.d_in
            x_pred = (out.extras["predicted_recon"] + self.b_dec).reshape(-1, D)
            terms["prediction"] = c * losses.reconstruction(out.x_normalized.reshape(-1, D), x_pred, ctx.mask_BT.reshape(-1))
        return terms

    def output_statistics(self) -> PredictiveStatistics:
        return PredictiveStatistics(self.options.collapse_share)


def collapse_verdict(prediction_share: float, collapse_share: float) -> str:
    """'novel_takes_over', 'prediction_takes_over' or 'none' for the prediction's energy share."""
    if not math.isfinite(prediction_share) or prediction_share < collapse_share:
        return "novel_takes_over"
    if prediction_share > 1.0 - collapse_share:
        return "prediction_takes_over"
    return "none"


class PredictiveStatistics(OutputStatistics):
    """Over counted eval tokens: L0 of the novel code (`l0_sparse`, the one matched against TopK), of
    the predicted and of the whole code; the prediction's energy share
    sum ||x_pred||^2 / (sum ||x_pred||^2 + sum ||x_novel||^2) (bias excluded, the reference's
    `rel_energy`); the explained variance of the prediction alone (x_pred + b_dec); the verdict."""

    def __init__(self, collapse_share: float):
        self.collapse_share = collapse_share
        self.sums: dict[str, float] = {}
        self.sum_x_D: torch.Tensor | None = None

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + float(value)

    @torch.no_grad()
    def update(self, out: SAEOutput, mask_BT: torch.Tensor) -> None:
        m = mask_BT.to(out.features.device)
        novel, pred = out.features[m].double(), out.extras["predicted_code"][m].double()
        x_pred, x_novel = out.extras["predicted_recon"][m].double(), out.extras["novel_recon"][m].double()
        x_n = out.x_normalized[m].double()
        b_dec = out.recon_normalized[m].double() - x_pred - x_novel
        self._add("tokens", m.sum())
        self._add("l0_novel", (novel != 0).sum())
        self._add("l0_predicted", (pred != 0).sum())
        self._add("l0_whole", ((novel + pred) != 0).sum())
        self._add("energy_pred", x_pred.pow(2).sum())
        self._add("energy_novel", x_novel.pow(2).sum())
        self._add("err_pred", (x_n - x_pred - b_dec).pow(2).sum())
        self._add("sum_sq_x", x_n.pow(2).sum())
        sum_x_D = x_n.sum(0).cpu()
        self.sum_x_D = sum_x_D if self.sum_x_D is None else self.sum_x_D + sum_x_D

    def result(self) -> dict[str, Any]:
        s, n = self.sums, max(self.sums.get("tokens", 0.0), 1.0)
        energy = s.get("energy_pred", 0.0) + s.get("energy_novel", 0.0)
        share = s.get("energy_pred", 0.0) / energy if energy > 0 else float("nan")
        total_var = s.get("sum_sq_x", 0.0) - (float(self.sum_x_D.pow(2).sum()) / n if self.sum_x_D is not None else 0.0)
        verdict = collapse_verdict(share, self.collapse_share)
        if verdict != "none":
            warnings.warn(f"predictive SAE: {verdict.replace('_', ' ')} (the prediction carries {share:.1%} of the "
                          f"reconstructed energy); remedies: activation batchtopk, options.prediction_coefficient > 0",
                          PredictionCollapseWarning, stacklevel=2)
        return {
            "l0_sparse": s.get("l0_novel", 0.0) / n,
            "l0_novel": s.get("l0_novel", 0.0) / n,
            "l0_predicted": s.get("l0_predicted", 0.0) / n,
            "l0_whole": s.get("l0_whole", 0.0) / n,
            "l0_reconstruction": s.get("l0_whole", 0.0) / n,  # a token's reconstruction reads the whole code
            "prediction_share": share,
            "explained_variance_prediction_only": 1.0 - s.get("err_pred", 0.0) / total_var if total_var > 0 else float("nan"),
            "collapse": verdict,
            "collapse_share": self.collapse_share,
        }
