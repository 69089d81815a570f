"""Activation functions of the SAE family: pre-activations (..., F) -> sparse codes (..., F).

relu       f = max(pre, 0)                                  (sparsity from an L1 penalty)
topk       keep the k largest pre-activations per token, relu'd
batchtopk  keep the k*N largest over the N tokens of a batch during training; at inference a
           single learned threshold theta: f = pre * 1[pre > theta]  (Bussmann et al. 2024)
"""

from __future__ import annotations

import torch
from torch import nn


class ReLU(nn.Module):
    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None) -> torch.Tensor:
        return torch.relu(pre_NF)


class TopK(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None) -> torch.Tensor:
        values_NK, idx_NK = pre_NF.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre_NF).scatter(-1, idx_NK, torch.relu(values_NK))


class BatchTopK(nn.Module):
    """Top k*N over a batch while training; a fixed threshold at inference.

    The threshold is an exponential moving average of the smallest activation kept in each
    training batch, so that at inference the mean L0 stays close to k.
    """

    def __init__(self, k: int, d_sae: int, ema_decay: float = 0.99):
        super().__init__()
        self.k = k
        self.ema_decay = ema_decay
        self.register_buffer("threshold", torch.zeros(d_sae))
        self.register_buffer("threshold_initialised", torch.zeros((), dtype=torch.bool))

    def forward(self, pre_NF: torch.Tensor, mask_N: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training:
            return pre_NF * (pre_NF > self.threshold).to(pre_NF.dtype)
        acts_NF = torch.relu(pre_NF)
        if mask_N is not None:  # excluded tokens take no share of the batch budget
            acts_NF = acts_NF * mask_N.unsqueeze(-1).to(acts_NF.dtype)
        n_tokens = int(mask_N.sum()) if mask_N is not None else acts_NF.shape[0]
        flat = acts_NF.flatten()
        values, idx = flat.topk(min(self.k * max(n_tokens, 1), flat.numel()), sorted=False)
        out = torch.zeros_like(flat).scatter(0, idx, values).view_as(acts_NF)
        self._update_threshold(values)
        return out

    @torch.no_grad()
    def calibrate(self, pre_batches: list[tuple[torch.Tensor, torch.Tensor | None]]) -> None:
        """Set the threshold to the mean, over batches, of the smallest activation batch top-k keeps.

        The running average lags while the encoder is still changing (in a short run it never
        catches up); calibrating on final-weight batches makes inference L0 match k."""
        smallest = []
        for pre_NF, mask_N in pre_batches:
            acts_NF = torch.relu(pre_NF) if mask_N is None else torch.relu(pre_NF) * mask_N.unsqueeze(-1).to(pre_NF.dtype)
            n_tokens = int(mask_N.sum()) if mask_N is not None else acts_NF.shape[0]
            kept = acts_NF.flatten().topk(min(self.k * max(n_tokens, 1), acts_NF.numel()), sorted=False).values
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


def make_activation(name: str, k: int, d_sae: int) -> nn.Module:
    if name == "relu":
        return ReLU()
    if name == "topk":
        return TopK(k)
    if name == "batchtopk":
        return BatchTopK(k, d_sae)
    raise ValueError(f"unknown activation {name!r}; known: relu, topk, batchtopk")
