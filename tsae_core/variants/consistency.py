"""Temporal consistency: penalise how much codes change between nearby positions of one document.

    L = L_recon + coefficient * d_in * C(f[..., :S]),   S = round(subset_fraction * F)

with C the relative change of codes over lags 1..window (`losses.temporal_consistency`): pairs that
straddle a document boundary or touch a special token are never compared. C is a ratio in [0, 1]
(free of width, k and activation scale) and d_in = E||x_n||^2 is the reconstruction's natural scale
(the dataset scaling makes E||x_n|| = sqrt(d_in)), so a coefficient trades the same fraction of
variance for the same relative change on any model, width or k. With `subset_fraction`
< 1 only the first S latents (a "slow" part of the dictionary) are asked to persist; the rest stay
free to follow fast, token-level features. The idea of the research log that started this project
(seed 000), in the spirit of slow-feature analysis (Wiskott & Sejnowski 2002) applied to SAE codes.

Gradient. Where latent i fires at t and not at t + delta, d|f_t - f_{t+delta}| asks for both a smaller
f_t and a larger f_{t+delta}. Under TopK, ReLU or JumpReLU the second half lands on a code the
activation set to zero and is discarded, so on the codes alone the term can only shrink activations
that do not persist (an L1 on them) and can never make a latent appear at t + delta. With
`gradient: straight_through` (the default) C is computed on `losses.straight_through_codes`: the same
value, but the pull on an inactive latent reaches its pre-activation, so a latent active at t is
raised at its neighbours and can enter their TopK. `gradient: codes` keeps the earlier formulation
(the gradient of the codes alone), so that runs made with it stay comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tsae_core import losses
from tsae_core.sae import SAE, LossContext, SAEOutput
from tsae_core.typed import check


@dataclass(frozen=True)
class ConsistencyOptions:
    window: int = 4
    """Largest lag delta compared: pairs (t, t + delta) for delta = 1..window."""
    coefficient: float = 0.1
    """Weight of the relative change C (in [0, 1] for L1) against the input's energy d_in; same meaning at any width, k or d_in."""
    norm: Literal["l1", "l2"] = "l1"
    """|f_t - f_{t+delta}| (l1) or its square (l2)."""
    subset_fraction: float = 1.0
    """Only the first fraction of latents is penalised (the "slow" part); 1: all of them."""
    gradient: Literal["straight_through", "codes"] = "straight_through"
    """straight_through: the term's pull reaches inactive latents' pre-activations (it can make a latent
    persist); codes: the gradient of the codes alone (earlier runs; it can only shrink codes)."""

    def __post_init__(self) -> None:
        check(self.window >= 1, "options.window", "must be >= 1")
        check(self.coefficient >= 0, "options.coefficient", "must be >= 0")
        check(0 < self.subset_fraction <= 1, "options.subset_fraction", "must be in (0, 1]")


class ConsistencySAE(SAE):
    Options = ConsistencyOptions

    @property
    def n_slow(self) -> int:
        return max(1, round(self.options.subset_fraction * self.cfg.d_sae))

    @property
    def uses_codes_in_loss(self) -> bool:
        return self.options.coefficient > 0 and self.options.gradient == "straight_through"

    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(out, ctx)
        o = self.options
        codes = out.features[..., : self.n_slow]
        if o.gradient == "straight_through":
            codes = losses.straight_through_codes(codes, out.pre_acts[..., : self.n_slow])
        change = losses.temporal_consistency(codes, ctx.doc_start_BT, ctx.mask_BT, o.window, power=1 if o.norm == "l1" else 2)
        terms["consistency"] = o.coefficient * self.cfg.d_in * change
        return terms
