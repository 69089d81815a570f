"""Consistency: the change of codes is measured only inside documents and is scale-free."""

from __future__ import annotations

import pytest
import torch

from tsae_core import losses
from tsae_core.sae import LossContext, SAEConfig, SAEOutput
from tsae_core.variants.registry import build_sae


def _step_change(T=8, at=4):
    """One sequence whose codes are constant, except for a jump between positions at-1 and at."""
    f = torch.zeros(1, T, 3)
    f[0, :at, 0] = 1.0
    f[0, at:, 1] = 2.0
    return f


def test_pairs_across_a_document_boundary_are_ignored():
    f = _step_change()
    mask = torch.ones(1, 8, dtype=torch.bool)
    one_doc = torch.zeros(1, 8, dtype=torch.bool)
    one_doc[0, 0] = True
    two_docs = one_doc.clone()
    two_docs[0, 4] = True  # the jump is exactly where the second document starts
    assert losses.temporal_consistency(f, one_doc, mask, window=2).item() > 0.1
    assert losses.temporal_consistency(f, two_docs, mask, window=2).item() == pytest.approx(0.0, abs=1e-7)


def test_special_tokens_never_pair():
    f = _step_change()
    doc = torch.zeros(1, 8, dtype=torch.bool)
    doc[0, 0] = True
    mask = torch.ones(1, 8, dtype=torch.bool)
    mask[0, 3:5] = False  # the two tokens around the jump are special (e.g. BOS/EOS)
    # with window 1 every straddling pair touches a special token
    assert losses.temporal_consistency(f, doc, mask, window=1).item() == pytest.approx(0.0, abs=1e-7)
    # with window 3, (2, 5) straddles the jump and counts
    assert losses.temporal_consistency(f, doc, mask, window=3).item() > 0


def test_value_is_the_relative_change_and_scale_free():
    f = _step_change()
    doc = torch.zeros(1, 8, dtype=torch.bool)
    doc[0, 0] = True
    mask = torch.ones(1, 8, dtype=torch.bool)
    # window 1: 7 pairs, one of which changes: |1-0| + |0-2| = 3 over a total mass of 1+1 (x3 pairs) ...
    a = f[:, :-1]
    b = f[:, 1:]
    expected = (a - b).abs().sum() / (a.abs() + b.abs()).sum()
    got = losses.temporal_consistency(f, doc, mask, window=1)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.temporal_consistency(10 * f, doc, mask, window=1).item() == pytest.approx(got.item(), rel=1e-6)
    assert 0 <= got.item() <= 1


def test_subset_fraction_penalises_only_the_slow_prefix():
    cfg = SAEConfig(architecture="consistency", activation="topk", d_in=4, d_sae=10, k=2,
                    options={"window": 1, "coefficient": 1.0, "subset_fraction": 0.2})
    sae = build_sae(cfg)
    f = torch.zeros(1, 6, 10)
    f[0, ::2, 5] = 1.0  # latent 5 flickers: outside the slow prefix (latents 0, 1)
    f[0, :, 0] = 1.0  # latent 0 is constant
    x = torch.zeros(1, 6, 4)
    out = SAEOutput(f, x, f, x, x)
    doc = torch.zeros(1, 6, dtype=torch.bool)
    doc[0, 0] = True
    ctx = LossContext(torch.ones(1, 6, dtype=torch.bool), doc)
    assert sae.loss_terms(out, ctx)["consistency"].item() == pytest.approx(0.0, abs=1e-7)
    f[0, ::2, 1] = 1.0  # a flicker inside the slow prefix is penalised
    assert sae.loss_terms(out, ctx)["consistency"].item() > 0.1


def _dense_reference(f, doc, mask, window, power):
    num = den = 0.0
    for delta in range(1, window + 1):
        valid = losses.same_document_pairs(doc, mask, delta).unsqueeze(-1).float()
        a, b = f[:, :-delta], f[:, delta:]
        num = num + ((a - b).abs().pow(power) * valid).sum()
        den = den + ((a.pow(power) + b.pow(power)) * valid).sum()
    return num / den.detach()


@pytest.mark.parametrize("power", [1, 2])
def test_sparse_computation_equals_the_dense_definition_with_gradients(power):
    gen = torch.Generator().manual_seed(power)
    f = torch.relu(torch.randn(3, 20, 30, generator=gen) - 1.2)  # sparse, non-negative codes
    doc = torch.rand(3, 20, generator=gen) < 0.15
    mask = torch.rand(3, 20, generator=gen) > 0.1
    f1, f2 = f.clone().requires_grad_(), f.clone().requires_grad_()
    got = losses.temporal_consistency(f1, doc, mask, window=5, power=power)
    want = _dense_reference(f2, doc, mask, window=5, power=power)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    want.backward()
    assert torch.allclose(f1.grad, f2.grad, atol=1e-6)


@pytest.mark.parametrize("architecture, options", [
    ("consistency", {"window": 1, "coefficient": 1.0}),
    ("conv", {"buffer": 1, "scales": [2], "coefficient": 1.0}),
])
def test_the_term_can_make_a_latent_appear_at_the_next_position(architecture, options):
    """Latent 0 fires at positions 0-1 and not at 2-3 (TopK picked latent 1 there). The persistence term
    asks for latent 0 at 2-3 too: with the straight-through gradient its pre-activation there is raised
    (a negative gradient); on the codes alone (`gradient: codes`, the earlier formulation) the pull lands
    on a zeroed code and nothing reaches it."""
    def grads(gradient):
        sae = build_sae(SAEConfig(architecture=architecture, activation="topk", d_in=4, d_sae=3, k=1,
                                  options={**options, "gradient": gradient}))
        pre = torch.tensor([[[2.0, 1.0, -1.0], [2.0, 1.0, -1.0], [0.5, 1.5, -1.0], [0.5, 1.5, -1.0]]], requires_grad=True)
        f = sae.activation(pre.reshape(-1, 3)).view(1, 4, 3)
        x = torch.zeros(1, 4, 4)
        doc = torch.zeros(1, 4, dtype=torch.bool)
        doc[0, 0] = True
        term = next(v for k, v in sae.loss_terms(SAEOutput(f, x, pre, x, x), LossContext(torch.ones(1, 4, dtype=torch.bool), doc)).items()
                    if k in ("consistency", "hierarchy"))
        (g,) = torch.autograd.grad(term, pre)
        return g[0]

    straight, codes = grads("straight_through"), grads("codes")
    assert straight[2, 0] < -1e-3, "the pull to make latent 0 persist reaches its pre-activation where TopK zeroed it"
    assert straight[1, 0] > 0, "and the code it persists from is still asked to agree"
    assert codes[2, 0] == 0 and codes[3, 0] == 0, "through the codes alone nothing reaches a zeroed latent"
    assert straight[:, 2].abs().max() == 0, "a latent inactive on both sides of every pair gets no pull"
