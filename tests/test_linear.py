"""The encoder product's own backward equals autograd's on the plain expression (x - b) W + c."""

from __future__ import annotations

import pytest
import torch

from tsae_core.linear import centered_linear


def _params(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, generator=g, dtype=dtype) + 3.0  # a large common mean, as residual streams have
    b, W, c = (torch.randn(*s, generator=g, dtype=dtype).requires_grad_() for s in ((6,), (6, 9), (9,)))
    return x, b, W, c


@pytest.mark.parametrize("x_grad", [False, True])
def test_centered_linear_matches_autograd(x_grad):
    x, b, W, c = _params(torch.float64)
    x.requires_grad_(x_grad)
    upstream = torch.randn(2, 5, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours = centered_linear(x, b, W, c)
    plain = (x - b) @ W + c
    torch.testing.assert_close(ours, plain)
    inputs = (x, b, W, c) if x_grad else (b, W, c)
    g_ours = torch.autograd.grad(ours, inputs, upstream)
    g_plain = torch.autograd.grad(plain, inputs, upstream)
    for a, e in zip(g_ours, g_plain):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, e)


def test_centered_linear_under_autocast_gives_float32_gradients():
    """Under bf16 autocast the product runs in bf16 and the parameters' gradients come back in their
    own dtype (float32), close to the float32 ones."""
    x, b, W, c = _params(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = centered_linear(x, b, W, c)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().pow(2).sum(), (b, W, c))
    exact = torch.autograd.grad(((x - b) @ W + c).pow(2).sum(), (b, W, c))
    for a, e in zip(grads, exact):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, e, rtol=0.05, atol=0.05 * float(e.abs().max()))
