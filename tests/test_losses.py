"""Loss terms and activation functions against direct computations."""

import torch

from tsae_core import losses
from tsae_core.activations import BatchTopK, TopK


def test_reconstruction_is_masked_mean_of_squared_norm():
    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    mask = torch.tensor([True] * 7 + [False] * 3)
    expected = ((x[:7] - r[:7]) ** 2).sum(-1).mean()
    assert torch.allclose(losses.reconstruction(x, r, mask), expected, rtol=1e-6)


def test_fvu_zero_for_perfect_and_one_for_mean():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(50, dtype=torch.bool)
    assert losses.fraction_unexplained(x, x, mask) < 1e-10
    mean = x.mean(0, keepdim=True).expand_as(x)
    assert abs(float(losses.fraction_unexplained(x, mean, mask)) - 1.0) < 1e-5


def test_l1_is_weighted_by_decoder_norm():
    f = torch.tensor([[1.0, 2.0, 0.0]])
    W = torch.tensor([[3.0, 4.0], [0.0, 0.5], [10.0, 0.0]])  # norms 5, 0.5, 10
    assert torch.allclose(losses.l1_decoder_weighted(f, W, torch.tensor([True])), torch.tensor(5.0 + 1.0))


def test_aux_k_zero_without_dead_latents_and_positive_with():
    g = torch.Generator().manual_seed(2)
    resid, pre, W = torch.randn(32, 6, generator=g), torch.randn(32, 12, generator=g), torch.randn(12, 6, generator=g)
    mask = torch.ones(32, dtype=torch.bool)
    assert losses.aux_k(resid, pre, torch.zeros(12, dtype=torch.bool), W, 3, mask) == 0
    dead = torch.zeros(12, dtype=torch.bool)
    dead[:4] = True
    pre = pre.requires_grad_()
    loss = losses.aux_k(resid, pre, dead, W, 3, mask)
    assert loss > 0
    loss.backward()
    assert pre.grad[:, 4:].abs().sum() == 0, "only dead latents receive AuxK gradient"
    assert pre.grad[:, :4].abs().sum() > 0


def test_aux_k_is_in_the_units_of_reconstruction():
    """aux_k_coefficient weighs AuxK against reconstruction as alpha in the paper's
    L = ||x - x_hat||^2 + alpha ||e - e_hat||^2: dead latents that explain nothing leave E||e||^2,
    and scaling the data by c scales AuxK by c^2, like the reconstruction loss (a Var(e)-normalised
    AuxK stays at 1 and makes alpha act as alpha / Var(e), far too weak at E||x||^2 = d_in)."""
    g = torch.Generator().manual_seed(5)
    resid, pre, W = 3.0 * torch.randn(32, 6, generator=g), torch.randn(32, 12, generator=g), torch.randn(12, 6, generator=g)
    mask, dead = torch.ones(32, dtype=torch.bool), torch.ones(12, dtype=torch.bool)
    silent = losses.aux_k(resid, pre, dead, torch.zeros(12, 6), 3, mask)
    assert torch.allclose(silent, losses.reconstruction(resid, torch.zeros_like(resid), mask))
    base = losses.aux_k(resid, pre, dead, W, 3, mask)
    assert torch.allclose(losses.aux_k(10.0 * resid, 10.0 * pre, dead, W, 3, mask), 100.0 * base, rtol=1e-4)


def test_topk_keeps_exactly_k_positive():
    pre = torch.randn(20, 50, generator=torch.Generator().manual_seed(3)) + 3.0
    f = TopK(5)(pre)
    assert ((f > 0).sum(-1) == 5).all()
    top = pre.topk(5, dim=-1).values
    assert torch.allclose(f.sort(-1, descending=True).values[:, :5], top)


def test_batchtopk_budget_and_threshold():
    act = BatchTopK(k=4, d_sae=50)
    act.train()
    g = torch.Generator().manual_seed(4)
    for _ in range(300):
        pre = torch.randn(64, 50, generator=g)
        f = act(pre)
        assert int((f > 0).sum()) == 4 * 64  # k per token on average over the batch
    act.eval()
    l0 = (act(torch.randn(4096, 50, generator=g)) > 0).sum(-1).float().mean()
    assert 3.0 < float(l0) < 5.0, "the inference threshold keeps L0 near k"


def test_batchtopk_ignores_masked_tokens():
    act = BatchTopK(k=2, d_sae=10)
    act.train()
    pre = torch.rand(8, 10)
    pre[4:] += 100.0  # masked tokens with huge activations must not take the budget
    mask = torch.tensor([True] * 4 + [False] * 4)
    f = act(pre, mask)
    assert (f[4:] == 0).all() and int((f[:4] > 0).sum()) == 8


def test_batchtopk_calibration_matches_k_at_inference():
    act = BatchTopK(k=3, d_sae=40)
    g = torch.Generator().manual_seed(5)
    act.threshold.fill_(10.0)  # a stale running average far from the truth
    act.calibrate([(torch.randn(256, 40, generator=g), None) for _ in range(8)])
    act.eval()
    l0 = (act(torch.randn(4096, 40, generator=g)) > 0).sum(-1).float().mean()
    assert 2.7 < float(l0) < 3.3
