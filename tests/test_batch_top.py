"""BatchTopK's selection: the shortlist path keeps exactly the codes a flat top-(k N) keeps."""

from __future__ import annotations

import pytest
import torch

from tsae_core.activations import BatchTopK, batch_top


def _flat(acts, n_keep):
    out = torch.zeros_like(acts).flatten()
    values, idx = acts.flatten().topk(n_keep, sorted=False)
    return out.scatter(0, idx, values).view_as(acts)


def _shortlist(acts, n_keep):
    values, idx = batch_top(acts, n_keep)
    return torch.zeros_like(acts).flatten().scatter(0, idx, values).view_as(acts)


@pytest.mark.parametrize("case", ["random", "skewed_row", "few_positive", "ties", "one_row", "budget_all"])
def test_shortlist_keeps_exactly_the_flat_top(case):
    g = torch.Generator().manual_seed(0)
    acts = torch.relu(torch.randn(256, 512, generator=g))
    n_keep = 8 * 256
    if case == "skewed_row":  # one token holds far more than its share: the fallback must take over
        acts[3] += 10.0
    elif case == "few_positive":  # fewer positive entries than the budget: zeros fill it
        acts = torch.relu(torch.randn(256, 512, generator=g) - 3.0)
    elif case == "ties":
        acts = torch.round(acts * 4) / 4
    elif case == "one_row":
        acts, n_keep = acts[:1], 8
    elif case == "budget_all":
        n_keep = acts.numel()
    want, got = _flat(acts, n_keep), _shortlist(acts, n_keep)
    assert torch.equal(want.flatten().sort().values, got.flatten().sort().values)
    if case != "ties":  # with ties at the boundary either equal entry is a valid top-k
        assert torch.equal(want, got)
    assert int((got != 0).sum()) == int((want != 0).sum())


def test_gradients_flow_to_the_kept_codes_as_with_the_flat_top():
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(64, 256, generator=g, requires_grad=True)
    weights = torch.randn(64, 256, generator=g)
    _flat(torch.relu(pre), 4 * 64).mul(weights).sum().backward()
    want = pre.grad.clone()
    pre.grad = None
    _shortlist(torch.relu(pre), 4 * 64).mul(weights).sum().backward()
    assert torch.allclose(pre.grad, want)


def test_batchtopk_training_forward_keeps_k_per_counted_token():
    act = BatchTopK(k=4, d_sae=128).train()
    g = torch.Generator().manual_seed(2)
    pre = torch.randn(50, 128, generator=g)
    mask = torch.ones(50, dtype=torch.bool)
    mask[:10] = False
    out = act(pre, mask)
    assert int((out != 0).sum()) == 4 * 40 and bool((out[:10] == 0).all())
    assert torch.equal(out, _flat(torch.relu(pre) * mask[:, None], 4 * 40))


@pytest.mark.parametrize("case", ["random", "few_positive", "skewed_row"])
def test_activation_on_the_shortlist_keeps_what_it_keeps_on_every_entry(case):
    """ReLU and the token mask applied to each row's shortlist only (what BatchTopK does) keep the
    entries the flat top-(k N) of relu(pre) x mask keeps."""
    g = torch.Generator().manual_seed(1)
    pre = torch.randn(128, 512, generator=g) - (3.0 if case == "few_positive" else 0.0)
    if case == "skewed_row":
        pre[5] += 10.0
    mask = torch.rand(128, generator=g) > 0.2
    activate = lambda v: torch.relu(v) * mask.unsqueeze(-1)  # noqa: E731
    n_keep = 8 * int(mask.sum())
    values, idx = batch_top(pre, n_keep, activate)
    got = torch.zeros_like(pre).flatten().scatter(0, idx, values).view_as(pre)
    torch.testing.assert_close(got, _flat(activate(pre), n_keep), rtol=0, atol=0)
