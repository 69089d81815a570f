"""Ground-truth recovery metrics on planted decoders and codes."""

import math

import pytest
import torch

from tsae_core.metrics.ground_truth import GroundTruthMetrics, decoder_match, feature_groups

G, D = 12, 16
KINDS = ["fast"] * 5 + ["slow"] * 4 + ["positional"] * 3
RATES = torch.tensor([0.05, 0.02, 0.005, 0.002, 0.03, 0.06, 0.004, 0.02, 0.001, 0.1, 0.1, 0.1])


def _directions(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(G, D, generator=g)
    return d / d.norm(dim=-1, keepdim=True)


def _codes(B=8, T=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    fire = torch.rand(B, T, G, generator=g) < 0.1
    return fire * (0.5 + torch.rand(B, T, G, generator=g))


def _planted_decoder(dirs, n_extra=20, seed=2):
    """True directions (scaled, permuted) among random extra latents; returns W_dec and latent of each g."""
    g = torch.Generator().manual_seed(seed)
    F = G + n_extra
    perm = torch.randperm(F, generator=g)
    W = torch.randn(F, D, generator=g) * 0.1  # random extras, far from every true direction
    W[perm[:G]] = dirs * 3.0
    return W, perm[:G]


def test_decoder_match_finds_planted_latents():
    dirs = _directions()
    W, latent_of_g = _planted_decoder(dirs)
    best_cos, best_latent = decoder_match(W, dirs)
    assert torch.allclose(best_cos, torch.ones(G, dtype=torch.float64), atol=1e-6)
    assert torch.equal(best_latent, latent_of_g)


def test_perfect_recovery():
    dirs = _directions()
    W, latent_of_g = _planted_decoder(dirs)
    codes = _codes()
    feats = torch.zeros(*codes.shape[:2], W.shape[0])
    feats[..., latent_of_g] = codes * 2.0  # scaled activations: correlation is still 1
    gt = GroundTruthMetrics(W, dirs, KINDS, RATES, threshold=0.9, rare_rate=0.01)
    gt.update(feats, codes)
    r = gt.result()
    assert r["threshold"] == 0.9
    for group in [r["overall"], *r["by_kind"].values()]:
        assert group["mmcs"] == pytest.approx(1.0, abs=1e-6)
        assert group["frac_recovered"] == 1.0
        assert group["act_corr"] == pytest.approx(1.0, abs=1e-9)
    assert r["overall"]["n_features"] == G
    assert r["true_l0"] == pytest.approx(float((codes != 0).sum(-1).double().mean()))


def test_correlation_matches_numpy_and_streams():
    dirs = _directions()
    W, latent_of_g = _planted_decoder(dirs)
    codes = _codes(seed=4)
    g = torch.Generator().manual_seed(5)
    feats = torch.relu(torch.randn(*codes.shape[:2], W.shape[0], generator=g))
    feats[..., latent_of_g] += codes
    mask = torch.rand(codes.shape[:2], generator=g) > 0.1
    one = GroundTruthMetrics(W, dirs, KINDS, RATES)
    one.update(feats, codes, mask)
    many = GroundTruthMetrics(W, dirs, KINDS, RATES)
    for lo in range(0, 8, 3):
        many.update(feats[lo : lo + 3], codes[lo : lo + 3], mask[lo : lo + 3])
    a = feats[mask][:, latent_of_g].double()
    b = codes[mask].double()
    want = torch.stack([torch.corrcoef(torch.stack([a[:, i], b[:, i]]))[0, 1] for i in range(G)])
    assert torch.allclose(one.activation_correlation(), want, atol=1e-9)
    assert torch.allclose(many.activation_correlation(), want, atol=1e-9)
    assert one.result()["overall"]["act_corr"] == pytest.approx(float(want.mean()), abs=1e-9)


def test_random_decoder_recovers_little():
    dirs = _directions()
    W = torch.randn(40, D, generator=torch.Generator().manual_seed(9))
    gt = GroundTruthMetrics(W, dirs, KINDS, RATES)
    codes = _codes()
    gt.update(torch.relu(torch.randn(*codes.shape[:2], 40)), codes)
    r = gt.result()
    assert r["overall"]["frac_recovered"] == 0.0
    assert r["overall"]["mmcs"] < 0.75
    assert abs(r["overall"]["act_corr"]) < 0.1


def test_rare_split_and_never_firing_features():
    groups = feature_groups(KINDS, RATES, rare_rate=0.01)
    assert groups["rare"] == [2, 3, 6, 8]
    assert groups["rare_fast"] == [2, 3]
    assert groups["rare_slow"] == [6, 8]
    assert groups["frequent_fast"] == [0, 1, 4]
    assert "rare_positional" not in groups  # empty groups are omitted
    assert groups["positional"] == [9, 10, 11]

    dirs = _directions()
    W, latent_of_g = _planted_decoder(dirs)
    codes = _codes()
    codes[..., 3] = 0  # a feature that never fires in the eval data
    feats = torch.zeros(*codes.shape[:2], W.shape[0])
    feats[..., latent_of_g] = codes
    feats[..., latent_of_g[2]] = 0  # a matched latent that never fires: correlation 0
    gt = GroundTruthMetrics(W, dirs, KINDS, RATES, rare_rate=0.01)
    gt.update(feats, codes)
    corr = gt.activation_correlation()
    assert math.isnan(corr[3]) and corr[2] == 0.0
    r = gt.result()
    assert r["by_kind"]["rare_fast"]["n_features"] == 2
    assert r["by_kind"]["rare_fast"]["act_corr"] == 0.0  # feature 3 excluded, feature 2 scores 0
    assert r["by_kind"]["frequent_fast"]["act_corr"] == pytest.approx(1.0)
    assert set(r["by_kind"]) == set(groups)


def test_frac_recovered_threshold():
    dirs = _directions()
    W = dirs.clone()
    noise = torch.randn(G, D, generator=torch.Generator().manual_seed(3))
    noise -= (noise * dirs).sum(-1, keepdim=True) * dirs
    noise /= noise.norm(dim=-1, keepdim=True)
    angles = torch.linspace(0.0, 1.2, G)  # cos from 1 down to cos(1.2) ≈ 0.36
    W = torch.cos(angles)[:, None] * dirs + torch.sin(angles)[:, None] * noise
    best_cos, _ = decoder_match(W, dirs)
    gt = GroundTruthMetrics(W, dirs, KINDS, RATES, threshold=0.9)
    gt.update(torch.zeros(1, 4, G), torch.zeros(1, 4, G))
    want = float((best_cos >= 0.9).double().mean())
    assert gt.result()["overall"]["frac_recovered"] == pytest.approx(want)
    assert 0 < want < 1
    assert math.isnan(gt.result()["overall"]["act_corr"])  # nothing fired
