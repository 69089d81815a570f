"""Adaptive orthogonal SAE (seed 003): decoder directions of latents that fire together are kept
apart, up to a controlled amount of sharing alpha.

    L = L_recon + coefficient * d_in * mean_i max_{j in g(i), j != i} max(0, |cos(W_i, W_j)| - alpha)^2

(d_in = E||x_n||^2, the reconstruction's scale, so a coefficient means the same on any model).
Comparing every pair costs F^2 D; instead latents are split into groups of at most `group_size`
(cost F * group_size * D, linear in F), and each latent is penalised for its most similar partner in
its group (`reduction: max`, as OrtSAE does) rather than for the mean over the group: the mean over
group_size - 1 partners, most of them near-orthogonal, diluted the term to ~3% of the decoder's
gradient (0.044 against a reconstruction loss of 4.88 on the default), which left it inert;
`reduction: mean` keeps that earlier formulation.

Modes (how groups are formed):
- `adaptive`: re-formed every `regroup_every` steps from co-activation, so the penalty acts where it
  matters (latents that fire together are the ones whose directions can absorb each other): each
  latent keeps a random-projection sketch of the tokens it fired on (Johnson-Lindenstrauss, so sketch
  cosines approximate co-activation cosines), and latents are ordered by recursive balanced splits
  along the sketches' principal direction, then cut into groups.
- `ortsae`: OrtSAE's published penalty (Korznikov et al. 2025, "OrtSAE: Orthogonal Sparse
  Autoencoders Uncover Atomic Features"): random chunks of `group_size` latents redrawn at every step,
  each latent's largest squared cosine within its chunk (use alpha 0 and reduction max); the control
  for `adaptive`, which differs from it only in how the groups are chosen.
- `fixed`: random groups re-drawn every `regroup_every` steps (the earlier control).

The groups are saved with the SAE (`groups`, latent indices, -1 as padding) and the condition
numbers of each group's decoder subspace are reported in the eval JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from tsae_core import losses
from tsae_core.sae import SAE, LossContext, SAEConfig, SAEOutput
from tsae_core.seeds import derive_seed
from tsae_core.typed import check


@dataclass(frozen=True)
class OrthogonalOptions:
    alpha: float = 0.1
    """Allowed sharing: |cos| up to alpha between decoder rows of one group is free."""
    coefficient: float = 0.1
    """Weight of the orthogonality penalty against the input's energy d_in."""
    group_size: int = 32
    """Latents per group (the penalty costs F * group_size * d_in)."""
    regroup_every: int = 50
    """Steps between re-forming the groups (adaptive and fixed; ortsae redraws them every step)."""
    mode: Literal["adaptive", "ortsae", "fixed"] = "adaptive"
    """adaptive: groups from co-activation; ortsae: random chunks every step (OrtSAE, the control); fixed:
    random groups every regroup_every steps."""
    reduction: Literal["max", "mean"] = "max"
    """Per latent, the excess over its most similar group partner (max) or the mean over the group (mean,
    earlier runs)."""
    sketch_dim: int = 32
    """Dimensions of each latent's random-projection co-activation sketch."""
    sketch_tokens: int = 256
    """Tokens per step added to the sketches."""

    def __post_init__(self) -> None:
        check(0 <= self.alpha < 1, "options.alpha", "must be in [0, 1)")
        check(self.coefficient >= 0, "options.coefficient", "must be >= 0")
        check(self.group_size >= 2, "options.group_size", "must be >= 2")
        check(self.regroup_every >= 1, "options.regroup_every", "must be >= 1")
        check(self.sketch_dim >= 1, "options.sketch_dim", "must be >= 1")
        check(self.sketch_tokens >= 1, "options.sketch_tokens", "must be >= 1")


def _pad_groups(order_F: torch.Tensor, size: int) -> torch.Tensor:
    """Latents in `order` cut into consecutive groups of `size`, as (G, size) with -1 padding."""
    G = math.ceil(len(order_F) / size)
    padded = torch.full((G * size,), -1, dtype=torch.long, device=order_F.device)
    padded[: len(order_F)] = order_F
    return padded.view(G, size)


def balanced_coactivation_order(sketch_FR: torch.Tensor, size: int) -> torch.Tensor:
    """An order of the latents in which latents with similar sketches are neighbours.

    Recursive balanced bisection: a set is split in two parts whose sizes are multiples of `size`,
    first along the principal direction of its (normalised, centred) sketches, then refined by a few
    rounds of balanced 2-means (order by which centroid is nearer, cut at the same place), until sets
    have at most `size` latents. Cost O(F * R * log(F / size))."""
    z_FR = losses.nn_normalize(sketch_FR.float())

    def split(idx: torch.Tensor) -> list[torch.Tensor]:
        if len(idx) <= size:
            return [idx]
        X = z_FR[idx] - z_FR[idx].mean(0)
        cut = math.ceil(len(idx) / size) // 2 * size
        score = X @ torch.linalg.svd(X, full_matrices=False).Vh[0]
        for _ in range(10):
            order = torch.argsort(score, stable=True)
            c_low, c_high = X[order[:cut]].mean(0), X[order[cut:]].mean(0)
            score = (X - c_low).pow(2).sum(-1) - (X - c_high).pow(2).sum(-1)
        ordered = idx[torch.argsort(score, stable=True)]
        return split(ordered[:cut]) + split(ordered[cut:])

    return torch.cat(split(torch.arange(len(z_FR), device=z_FR.device)))


class OrthogonalSAE(SAE):
    Options = OrthogonalOptions

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        o = self.options
        self.register_buffer("groups", _pad_groups(torch.arange(cfg.d_sae), min(o.group_size, cfg.d_sae)))
        self.register_buffer("sketch_FR", torch.zeros(cfg.d_sae, o.sketch_dim), persistent=False)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator, b_dec: torch.Tensor | None = None) -> None:
        super().reset_parameters(generator, b_dec)
        if hasattr(self, "groups"):
            self.groups.copy_(_pad_groups(torch.randperm(self.cfg.d_sae, generator=generator), self.groups.shape[1]))

    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(out, ctx)
        penalty = losses.grouped_orthogonality(self.W_dec, self.groups, self.options.alpha, self.options.reduction)
        terms["orthogonality"] = self.options.coefficient * self.cfg.d_in * penalty
        return terms

    @torch.no_grad()
    def after_step(self, out: SAEOutput, ctx: LossContext) -> None:
        o = self.options
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "orthogonal", ctx.step))
        if o.mode == "adaptive":
            fired_NF = (out.features.detach()[ctx.mask_BT] > 0).float()
            pick = torch.randperm(len(fired_NF), generator=gen)[: o.sketch_tokens].to(fired_NF.device)
            R_NR = torch.randn(len(pick), o.sketch_dim, generator=gen).to(fired_NF.device)
            self.sketch_FR += fired_NF[pick].T @ R_NR
        if o.mode == "ortsae" or (ctx.step + 1) % o.regroup_every == 0:
            if o.mode == "adaptive":
                order_F = balanced_coactivation_order(self.sketch_FR, self.groups.shape[1])
                self.sketch_FR.zero_()
            else:
                order_F = torch.randperm(self.cfg.d_sae, generator=gen).to(self.groups.device)
            self.groups.copy_(_pad_groups(order_F, self.groups.shape[1]))

    def training_state(self) -> dict[str, torch.Tensor]:
        return {"sketch_FR": self.sketch_FR}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        if "sketch_FR" in state:
            self.sketch_FR.copy_(state["sketch_FR"])

    @torch.no_grad()
    def extra_metrics(self) -> dict[str, Any]:
        """Per group: condition number of its decoder rows (sigma_max / sigma_min over min(size, d_in)
        singular values) and its largest |cos|; summarised over groups."""
        conds, max_cos = [], []
        for members in self.groups:
            W = losses.nn_normalize(self.W_dec[members[members >= 0]].float())
            if len(W) < 2:
                continue
            s = torch.linalg.svdvals(W)
            conds.append(float(s[0] / s[-1].clamp_min(1e-12)))
            cos = (W @ W.T).abs().fill_diagonal_(0)
            max_cos.append(float(cos.max()))
        if not conds:
            return {}
        conds_t, max_cos_t = torch.tensor(conds), torch.tensor(max_cos)
        return {
            "orthogonal_groups": {
                "mode": self.options.mode,
                "alpha": self.options.alpha,
                "n_groups": len(conds),
                "group_size": int(self.groups.shape[1]),
                "condition_number_median": float(conds_t.median()),
                "condition_number_max": float(conds_t.max()),
                "condition_numbers": conds,
                "max_abs_cos_in_group_median": float(max_cos_t.median()),
                "frac_groups_above_alpha": float((max_cos_t > self.options.alpha).float().mean()),
            }
        }
