"""Orthogonality: free up to the allowed sharing alpha, penalised above; groups follow co-activation."""

from __future__ import annotations

import math

import pytest
import torch

from tsae_core import losses
from tsae_core.sae import LossContext, SAEConfig, SAEOutput
from tsae_core.variants.orthogonal import _pad_groups, balanced_coactivation_order
from tsae_core.variants.registry import build_sae


def _pair(cos: float) -> torch.Tensor:
    return torch.tensor([[1.0, 0.0], [cos, math.sqrt(1 - cos**2)]])


def test_penalty_is_zero_for_orthogonal_rows_and_below_alpha_and_positive_above():
    groups = torch.tensor([[0, 1]])
    assert losses.grouped_orthogonality(torch.eye(4)[:2], groups, alpha=0.0).item() == 0.0
    assert losses.grouped_orthogonality(_pair(0.3), groups, alpha=0.3).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.grouped_orthogonality(_pair(-0.2), groups, alpha=0.3).item() == pytest.approx(0.0, abs=1e-7)
    above = losses.grouped_orthogonality(_pair(0.5), groups, alpha=0.3).item()
    assert above == pytest.approx((0.5 - 0.3) ** 2, rel=1e-4)
    assert losses.grouped_orthogonality(_pair(0.8), groups, alpha=0.3).item() > above


def test_only_pairs_inside_a_group_count_and_padding_is_ignored():
    W = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1 coincide
    apart = torch.tensor([[0, 2], [1, -1]])
    together = torch.tensor([[0, 1], [2, -1]])
    assert losses.grouped_orthogonality(W, apart, alpha=0.1).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.grouped_orthogonality(W, together, alpha=0.1).item() == pytest.approx(0.81, rel=1e-4)


def test_coactivating_latents_end_up_in_one_group():
    gen = torch.Generator().manual_seed(0)
    n_clusters, size, tokens = 8, 16, 4000
    cluster_of = torch.randperm(n_clusters * size, generator=gen) % n_clusters  # latents shuffled among clusters
    active_token_cluster = torch.randint(0, n_clusters, (tokens,), generator=gen)
    fired_NF = (active_token_cluster[:, None] == cluster_of[None, :]).float()
    fired_NF *= (torch.rand(fired_NF.shape, generator=gen) < 0.7).float()  # noisy co-firing
    sketch = fired_NF.T @ torch.randn(tokens, 32, generator=gen)
    groups = _pad_groups(balanced_coactivation_order(sketch, size), size)
    purity = [torch.bincount(cluster_of[g], minlength=n_clusters).max().item() / size for g in groups]
    assert min(purity) == 1.0, purity


def test_groups_have_bounded_size_and_cover_every_latent_once():
    sketch = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    groups = _pad_groups(balanced_coactivation_order(sketch, 16), 16)
    members = groups[groups >= 0]
    assert groups.shape[1] == 16 and sorted(members.tolist()) == list(range(100))


def test_condition_numbers_are_reported():
    sae = build_sae(SAEConfig(architecture="orthogonal", activation="topk", d_in=16, d_sae=32, k=2,
                              options={"group_size": 8}))
    sae.reset_parameters(torch.Generator().manual_seed(0))
    report = sae.extra_metrics()["orthogonal_groups"]
    assert report["n_groups"] == 4 and len(report["condition_numbers"]) == 4
    assert all(c >= 1.0 for c in report["condition_numbers"])
    with torch.no_grad():  # make one group's rows nearly collinear: its condition number explodes
        g = sae.groups[0]
        sae.W_dec[g] = sae.W_dec[g[0]] + 1e-3 * torch.randn(8, 16)
    assert sae.extra_metrics()["orthogonal_groups"]["condition_number_max"] > 100


def _decoder_gradient_share(sae, batch) -> float:
    """||d orthogonality / d W_dec|| over ||d recon / d W_dec|| on one batch."""
    out = sae(batch.acts_BTD, batch.mask_BT, batch.doc_start_BT)
    terms = sae.loss_terms(out, LossContext(batch.mask_BT, batch.doc_start_BT))
    (g_orth,) = torch.autograd.grad(terms["orthogonality"], sae.W_dec, retain_graph=True)
    (g_recon,) = torch.autograd.grad(terms["recon"], sae.W_dec)
    return float(g_orth.norm() / g_recon.norm())


def test_the_penalty_is_not_drowned_by_its_group_mean(harvested):
    """Each latent answers for its most similar group partner (OrtSAE's max), not for the mean over 31
    partners, most of them near-orthogonal: that mean made the term ~3% of the decoder's gradient on
    the default (0.044 against a reconstruction of 4.88), too little to move anything."""
    _, store = harvested
    batch = next(store.split("train").batches(8))
    shares = {}
    for reduction in ("max", "mean"):
        sae = build_sae(SAEConfig(architecture="orthogonal", activation="topk", d_in=store.d_in, d_sae=64, k=4,
                                  activation_scaling_factor=store.scaling_factor,
                                  options={"group_size": 16, "reduction": reduction}))
        sae.reset_parameters(torch.Generator().manual_seed(0))
        shares[reduction] = _decoder_gradient_share(sae, batch)
    assert shares["max"] > 5 * shares["mean"], shares


def test_ortsae_mode_redraws_random_chunks_every_step():
    sae = build_sae(SAEConfig(architecture="orthogonal", activation="topk", d_in=8, d_sae=64, k=4,
                              options={"mode": "ortsae", "group_size": 16, "alpha": 0.0}))
    x = torch.zeros(1, 4, 8)
    f = torch.zeros(1, 4, 64)
    seen = []
    for step in range(3):
        sae.after_step(SAEOutput(f, x, f, x, x), LossContext(torch.ones(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool),
                                                             step=step))
        seen.append(sae.groups.clone())
        assert sorted(sae.groups.flatten().tolist()) == list(range(64))
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
