"""The SAE encoder's product, pre = (x - b) W + c, with the backward it needs.

Written as `(x - b_dec) @ W_enc + b_enc`, autograd computes the gradient of the centred input
x - b_dec, a full (N, F) x (F, D) product, only to sum it over tokens into b_dec's gradient. The
data x needs none. Here b_dec's gradient is -W g with g the column sums of dL/dpre: a matrix-vector
product, which saves a fifth of a dense training step's FLOPs. The forward is unchanged (the input is
centred before the product, which keeps its precision where the mean dominates the activations),
and x's gradient is still computed when x requires one.
"""

from __future__ import annotations

import torch


class _CenteredLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_ND, b_D, W_DF, c_F):
        x_c = x_ND - b_D
        ctx.save_for_backward(x_c, W_DF)
        return torch.addmm(c_F, x_c, W_DF)

    @staticmethod
    def backward(ctx, g_NF):
        x_c, W_DF = ctx.saved_tensors
        # under autocast the forward product ran in the low precision; its gradients do too, as autograd's would
        dt = g_NF.dtype
        grad_x = grad_b = grad_W = grad_c = None
        acc = torch.promote_types(dt, torch.float32)  # reductions in at least float32
        col_sums = g_NF.sum(0, dtype=acc) if ctx.needs_input_grad[1] or ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[0]:
            grad_x = (g_NF @ W_DF.to(dt).t()).to(x_c.dtype)
        if ctx.needs_input_grad[1]:
            grad_b = -(W_DF.to(acc) @ col_sums).to(x_c.dtype)
        if ctx.needs_input_grad[2]:
            grad_W = (x_c.to(dt).t() @ g_NF).to(W_DF.dtype)
        if ctx.needs_input_grad[3]:
            grad_c = col_sums.to(W_DF.dtype)
        return grad_x, grad_b, grad_W, grad_c


def centered_linear(x: torch.Tensor, b_D: torch.Tensor, W_DF: torch.Tensor, c_F: torch.Tensor) -> torch.Tensor:
    """(x - b) W + c over the last dimension of x (any leading shape)."""
    lead = x.shape[:-1]
    return _CenteredLinear.apply(x.reshape(-1, x.shape[-1]), b_D, W_DF, c_F).view(*lead, W_DF.shape[1])
