"""Activation functions of the SAE family: pre-activations (..., F) -> sparse codes (..., F).

relu       f = max(pre, 0)                                  (sparsity from an L1 penalty)
topk       keep the k largest pre-activations per token, relu'd
batchtopk  keep the k*N largest over the N tokens of a batch during training; at inference a
           single learned threshold theta: f = pre * 1[pre > theta]  (Bussmann et al. 2024)
jumprelu   f_i = pre_i * H(pre_i - theta_i) with a learned threshold per latent; the thresholds
           learn through straight-through estimators (Rajamanoharan et al. 2024, "Jumping Ahead")
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from tsae_core.sparse_codes import Pick, SparseCodes, offsets_from_rows, regular_offsets


class Activation(nn.Module):
    """Pre-activations (N, F) -> codes (N, F); `mask_N` (True = the token counts) keeps special tokens
    out of a batch-level budget. What an activation declares, each with a default that does nothing:"""

    fits_to_data: ClassVar[bool] = False
    """True when `init_from_sample` sets initial values from pre-activations of a data sample (jumprelu's
    thresholds); the SAE then computes that sample's pre-activations once, before training."""
    calibrated: ClassVar[bool] = False
    """True when `calibrate` fixes inference-time statistics from final-weight batches (batchtopk's threshold)."""

    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def init_from_sample(self, pre_NF: torch.Tensor) -> None:
        """Set data-dependent initial values (only called when `fits_to_data`)."""

    def calibrate(self, pre_batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fix inference-time statistics from (pre_NF, mask_N) batches (only called when `calibrated`)."""

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors written with the SAE's weights under SAELens's names (`threshold`); none by default."""
        return {}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Read back what `export_tensors` wrote."""
        if tensors:
            raise ValueError(f"{type(self).__name__} keeps no tensors with the weights, got {sorted(tensors)}")


class ReLU(Activation):
    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None) -> torch.Tensor:
        return torch.relu(pre_NF)


class TopK(Activation):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None) -> torch.Tensor:
        values_NK, idx_NK = pre_NF.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_NF).scatter(-1, idx_NK, torch.relu(values_NK))

    def sparse(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None, pick: Pick) -> SparseCodes:
        """`forward`'s codes in compressed rows, their values from `pick` (the sparse training path)."""
        with torch.no_grad():
            cols = pre_NF.topk(self.k, dim=-1, sorted=False).indices.flatten()
        offsets = regular_offsets(pre_NF.shape[0], self.k, pre_NF.device)
        return SparseCodes(torch.relu(pick(cols, offsets)), cols, offsets, pre_NF.shape[-1])


CANDIDATES_PER_ROW = 4
"""batch_top's shortlist: each row's CANDIDATES_PER_ROW * (n_keep / rows) largest values."""


def batch_top(scores_NF: torch.Tensor, n_keep: int,
              activate: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The n_keep largest entries of acts = activate(scores_NF) over the whole batch: (values, flat
    indices), unsorted. `activate` maps (N, x) rows to rows and never reverses an order within a row
    (ReLU, a mask per row; default: none), so it is applied to the shortlist alone, not to all N x F.

    Exactly the flat top-n_keep, found faster: each row's top c = CANDIDATES_PER_ROW x (n_keep / N)
    entries form a shortlist, and the batch's top n_keep is taken from it. That is the flat top-n_keep
    unless some row has more than c entries in it, i.e. unless a row's c-th candidate is still kept;
    then (rarely) the flat top-k of the whole batch is taken instead."""
    activate = activate or (lambda v: v)
    N, F = scores_NF.shape
    c = min(F, CANDIDATES_PER_ROW * -(-n_keep // max(N, 1)))
    if c >= F or n_keep >= N * c:
        return activate(scores_NF).flatten().topk(n_keep, sorted=False)
    cand_scores, cand_cols = scores_NF.topk(c, dim=-1, sorted=True)
    cand_values = activate(cand_scores)
    values, pick = cand_values.flatten().topk(n_keep, sorted=False)
    last, smallest_kept = cand_values[:, -1], values.min()
    if bool(((last > smallest_kept) | ((last == smallest_kept) & (smallest_kept > 0))).any()):
        return activate(scores_NF).flatten().topk(n_keep, sorted=False)  # a row may hold more than c of the top
    rows = torch.div(pick, c, rounding_mode="floor")
    return values, rows * F + cand_cols.flatten()[pick]


class BatchTopK(Activation):
    """Top k*N over a batch while training; a fixed threshold at inference.

    The threshold is an exponential moving average of the smallest activation kept in each
    training batch, so that at inference the mean L0 stays close to k.
    """

    calibrated = True

    def __init__(self, k: int, d_sae: int, ema_decay: float = 0.99):
        super().__init__()
        self.k = k
        self.ema_decay = ema_decay
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.register_buffer("threshold_initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None, budget: int | None = None) -> torch.Tensor:
        """`budget`: activations kept over the batch; None: k per counted row. A row that stands for
        several tokens (a crosscoder's window) passes k times the tokens it holds."""
        if not self.training:
            return pre_NF * (pre_NF > self.threshold).to(pre_NF.dtype)
        values, idx = self._select(pre_NF, mask_N, budget)
        out = torch.zeros_like(pre_NF).flatten().scatter(0, idx, values).view_as(pre_NF)
        self._update_threshold(values)
        return out

    def sparse(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None, pick: Pick, budget: int | None = None) -> SparseCodes:
        """The training-time codes of `forward` in compressed rows, their values from `pick`."""
        N, F = pre_NF.shape
        with torch.no_grad():
            values, idx = self._select(pre_NF, mask_N, budget)
            self._update_threshold(values)
            idx = idx.sort().values  # compressed rows: entries in row order
            rows, cols = torch.div(idx, F, rounding_mode="floor"), idx % F
            offsets = offsets_from_rows(rows, N)
        kept = torch.relu(pick(cols, offsets))
        if mask_N is not None:
            kept = kept * mask_N[rows].to(kept.dtype)
        return SparseCodes(kept, cols, offsets, F)

    def _select(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None, budget: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training-time selection: (values, flat indices) of the batch's top activations."""
        return batch_top(pre_NF, self._n_keep(pre_NF, mask_N, budget), lambda v: self._masked_acts(v, mask_N))

    @staticmethod
    def _masked_acts(pre_NX: torch.Tensor, mask_N: torch.Tensor | None) -> torch.Tensor:
        """ReLU, and zero on excluded rows: over all N x F pre-activations or a shortlist of each row's."""
        acts_NX = torch.relu(pre_NX)
        if mask_N is not None:  # excluded tokens take no share of the batch budget
            m = mask_N.unsqueeze(-1).to(acts_NX.dtype)
            acts_NX = acts_NX * m if acts_NX.requires_grad else acts_NX.mul_(m)
        return acts_NX

    def _n_keep(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None, budget: int | None) -> int:
        n_tokens = int(mask_N.sum()) if mask_N is not None else pre_NF.shape[0]
        n_keep = self.k * max(n_tokens, 1) if budget is None else max(int(budget), 1)
        return min(n_keep, pre_NF.numel())

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {"threshold": self.threshold}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.threshold.copy_(tensors["threshold"])
        self.threshold_initialised.fill_(True)

    @torch.no_grad()
    def calibrate(self, pre_batches: list[tuple]) -> None:
        """Set the threshold to the mean, over batches, of the smallest activation batch top-k keeps.

        Each entry is (pre_NF, mask_N) or (pre_NF, mask_N, budget), as in `forward`. The running
        average lags while the encoder is still changing (in a short run it never catches up);
        calibrating on final-weight batches makes inference L0 match k."""
        smallest = []
        for pre_NF, mask_N, *budget in pre_batches:
            kept = self._select(pre_NF, mask_N, budget[0] if budget else None)[0]
            if (kept > 0).any():
                smallest.append(kept[kept > 0].min().float())
        if smallest:
            self.threshold.fill_(torch.stack(smallest).mean())
            self.threshold_initialised.fill_(True)

    @torch.no_grad()
    def _update_threshold(self, kept: torch.Tensor) -> None:
        positive = kept[kept > 0]
        if positive.numel() == 0:
            return
        smallest = positive.min().float()
        if not bool(self.threshold_initialised):
            self.threshold.fill_(smallest)
            self.threshold_initialised.fill_(True)
        else:
            self.threshold.mul_(self.ema_decay).add_((1 - self.ema_decay) * smallest)


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    """The kernel K(u) = 1[|u| < 1/2] of the straight-through estimators."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    """f = pre * H(pre - theta). d f / d pre = H(pre - theta); d f / d theta is the pseudo-derivative
    -(theta / eps) K((pre - theta) / eps) (Rajamanoharan et al. 2024, eq. 11)."""

    @staticmethod
    def forward(ctx, pre_NF, theta_F, eps):
        ctx.save_for_backward(pre_NF, theta_F)
        ctx.eps = eps
        return pre_NF * (pre_NF > theta_F).to(pre_NF.dtype)

    @staticmethod
    def backward(ctx, grad_NF):
        pre_NF, theta_F = ctx.saved_tensors
        grad_pre = grad_NF * (pre_NF > theta_F).to(grad_NF.dtype)
        grad_theta = (grad_NF * -(theta_F / ctx.eps) * _rectangle((pre_NF - theta_F) / ctx.eps)).sum(0)
        return grad_pre, grad_theta, None


class _StepFn(torch.autograd.Function):
    """H(pre - theta), with d H / d theta = -(1 / eps) K((pre - theta) / eps) and no gradient to pre."""

    @staticmethod
    def forward(ctx, pre_NF, theta_F, eps):
        ctx.save_for_backward(pre_NF, theta_F)
        ctx.eps = eps
        return (pre_NF > theta_F).to(pre_NF.dtype)

    @staticmethod
    def backward(ctx, grad_NF):
        pre_NF, theta_F = ctx.saved_tensors
        grad_theta = (grad_NF * -(1.0 / ctx.eps) * _rectangle((pre_NF - theta_F) / ctx.eps)).sum(0)
        return None, grad_theta, None


class JumpReLU(Activation):
    """Per-latent thresholds theta = exp(log_theta), learned with straight-through estimators of
    bandwidth eps. The sparsity penalty is on L0 = sum_i H(pre_i - theta_i) (see `SAE.loss_terms`).

    Thresholds start where each latent fires on a fraction k / F of a data sample (`init_from_sample`),
    so training starts at the wanted L0 instead of half the dictionary: with a small window the
    thresholds move slowly, and a dense start would need many steps to become sparse.
    """

    fits_to_data = True

    def __init__(self, d_sae: int, k: int, bandwidth: float = 2.0, init_threshold: float = 0.01):
        super().__init__()
        self.k, self.bandwidth = k, bandwidth
        self.log_threshold = nn.Parameter(torch.full((d_sae,), math.log(init_threshold)))

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None) -> torch.Tensor:
        return _JumpReLUFn.apply(pre_NF, self.threshold, self.bandwidth)

    def l0_N(self, pre_NF: torch.Tensor) -> torch.Tensor:
        """Active latents per token, differentiable in the thresholds (straight-through)."""
        return _StepFn.apply(pre_NF, self.threshold, self.bandwidth).sum(-1)

    @torch.no_grad()
    def init_from_sample(self, pre_NF: torch.Tensor) -> None:
        """theta_i = the (1 - k/F) quantile of latent i's pre-activations (at least 1e-3)."""
        n = pre_NF.shape[0]
        rank = min(n, max(1, round(n * (1.0 - self.k / pre_NF.shape[-1]))))
        theta_F = pre_NF.float().kthvalue(rank, dim=0).values.clamp_min(1e-3)
        self.log_threshold.copy_(theta_F.log())

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {"threshold": self.threshold.detach()}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.log_threshold.copy_(tensors["threshold"].clamp_min(1e-12).log())


def make_activation(name: str, k: int, d_sae: int, bandwidth: float = 2.0) -> Activation:
    if name == "relu":
        return ReLU()
    if name == "topk":
        return TopK(k)
    if name == "batchtopk":
        return BatchTopK(k, d_sae)
    if name == "jumprelu":
        return JumpReLU(d_sae, k, bandwidth)
    raise ValueError(f"unknown activation {name!r}; known: relu, topk, batchtopk, jumprelu")
