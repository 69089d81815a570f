"""CoreMetrics against direct computations, edge cases and streaming."""

import math

import pytest
import torch

from tsae_core.metrics.core import CoreMetrics


def _batch(B=4, T=16, D=8, F=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g) * 2 + 1.5
    recon = x + 0.5 * torch.randn(B, T, D, generator=g)
    feats = torch.relu(torch.randn(B, T, F, generator=g) - 1.0)
    mask = torch.rand(B, T, generator=g) > 0.2
    return x, recon, feats, mask


def _direct(x, recon, feats, mask):
    x, r, f = x[mask].double(), recon[mask].double(), feats[mask].double()
    err = (x - r).pow(2).sum(-1)
    nx, nr = x.norm(dim=-1), r.norm(dim=-1)
    fired = (f != 0).double()
    return {
        "explained_variance": 1 - err.sum() / (x - x.mean(0)).pow(2).sum(),
        "explained_variance_legacy": (1 - err / (x - x.mean(0)).pow(2).sum(-1)).mean(),
        "mse": (x - r).pow(2).sum(-1).mean(),
        "cossim": ((x * r).sum(-1) / (nx * nr)).mean(),
        "l2_norm_in": nx.mean(),
        "l2_norm_out": nr.mean(),
        "l2_ratio": (nr / nx).mean(),
        "relative_reconstruction_bias": nr.pow(2).mean() / (x * r).sum(-1).mean(),
        "l0": fired.sum(-1).mean(),
        "l1": f.sum(-1).mean(),
        "dead_fraction": (fired.sum(0) == 0).double().mean(),
        "dense_fraction": (fired.mean(0) > 0.1).double().mean(),
        "silent_token_fraction": (fired.sum(-1) == 0).double().mean(),
    }


def _flat(result):
    return {k: v for section in result.values() for k, v in section.items()}


def test_matches_direct_computation():
    x, recon, feats, mask = _batch()
    feats[..., :3] = 0  # some dead latents
    feats[0, :5] = 0  # some tokens with no active latent
    m = CoreMetrics(dense_threshold=0.1)
    m.update(x, recon, feats, mask)
    got = _flat(m.result())
    for name, want in _direct(x, recon, feats, mask).items():
        assert got[name] == pytest.approx(float(want), rel=1e-6, abs=1e-9), name
    assert got["dead_fraction"] == pytest.approx(3 / 32)
    # SAELens's token counts: every position of the batches (no CE/KL batches here); tsae's own, the counted
    assert got["total_tokens_counted"] == int(mask.sum()) < mask.numel()
    assert got["total_tokens_eval_sparsity_variance"] == mask.numel()
    assert got["total_tokens_eval_reconstruction"] == 0
    freq = m.feature_frequencies()
    assert freq.shape == (32,)
    assert torch.allclose(freq, (feats[mask] != 0).double().mean(0))


def test_result_layout_is_saebench_core():
    x, recon, feats, mask = _batch()
    m = CoreMetrics()
    m.update(x, recon, feats, mask)
    r = m.result()
    assert set(r) == {"reconstruction_quality", "shrinkage", "sparsity", "token_stats"}
    assert set(r["reconstruction_quality"]) == {"explained_variance", "explained_variance_legacy", "mse", "cossim"}
    assert set(r["shrinkage"]) == {"l2_norm_in", "l2_norm_out", "l2_ratio", "relative_reconstruction_bias"}
    # SAEBench's four, and tsae's own: the tokens with no active latent
    assert set(r["sparsity"]) == {"l0", "l1", "dead_fraction", "dense_fraction", "silent_token_fraction"}


def test_perfect_reconstruction():
    x, _, feats, mask = _batch()
    m = CoreMetrics()
    m.update(x, x.clone(), feats, mask)
    got = _flat(m.result())
    for name in ("explained_variance", "explained_variance_legacy", "cossim", "l2_ratio", "relative_reconstruction_bias"):
        assert got[name] == pytest.approx(1.0, abs=1e-9), name
    assert got["mse"] == pytest.approx(0.0, abs=1e-12)


def test_predicting_the_global_mean_explains_nothing():
    x, _, feats, _ = _batch(B=3, T=50)
    mask = torch.ones(3, 50, dtype=torch.bool)
    mean = x.reshape(-1, x.shape[-1]).double().mean(0).float()
    m = CoreMetrics()
    for b in range(3):  # streamed: the global mean, not each batch's
        m.update(x[b : b + 1], mean.expand_as(x[b : b + 1]), feats[b : b + 1], mask[b : b + 1])
    assert m.result()["reconstruction_quality"]["explained_variance"] == pytest.approx(0.0, abs=1e-6)


def test_zero_reconstruction_gives_no_nan_except_the_undefined_bias():
    x, _, feats, mask = _batch()
    m = CoreMetrics()
    m.update(x, torch.zeros_like(x), torch.zeros_like(feats), mask)
    got = _flat(m.result())
    assert got["cossim"] == 0.0
    assert got["l2_ratio"] == 0.0
    assert got["l0"] == 0.0 and got["dead_fraction"] == 1.0
    # E<x, x̂> = 0: the bias is undefined and reported as NaN (the JSON writer turns it into null).
    assert math.isnan(got.pop("relative_reconstruction_bias"))
    assert all(math.isfinite(v) for v in got.values())
    assert got["explained_variance"] < 0  # worse than the mean when the mean is far from zero


def test_streaming_equals_one_shot():
    x, recon, feats, mask = _batch(B=6, T=20, seed=3)
    one = CoreMetrics()
    one.update(x, recon, feats, mask)
    many = CoreMetrics()
    for lo, hi in [(0, 1), (1, 4), (4, 6)]:
        many.update(x[lo:hi], recon[lo:hi], feats[lo:hi], mask[lo:hi])
    a, b = _flat(one.result()), _flat(many.result())
    for name in ("explained_variance", "mse", "cossim", "l0", "l1", "l2_ratio", "relative_reconstruction_bias", "dead_fraction"):
        assert b[name] == pytest.approx(a[name], rel=1e-9, abs=1e-12), name
    assert b["total_tokens_counted"] == a["total_tokens_counted"]
    assert b["total_tokens_eval_sparsity_variance"] == a["total_tokens_eval_sparsity_variance"]
    # The legacy number is a mean of per-batch values, so it depends on the batching.
    assert many.n_batches == 3


def test_masked_tokens_are_ignored():
    x, recon, feats, mask = _batch(seed=5)
    m1 = CoreMetrics()
    m1.update(x, recon, feats, mask)
    x2, recon2, feats2 = x.clone(), recon.clone(), feats.clone()
    x2[~mask] = 1e3
    recon2[~mask] = -7.0
    feats2[~mask] = 5.0
    m2 = CoreMetrics()
    m2.update(x2, recon2, feats2, mask)
    assert _flat(m1.result()) == pytest.approx(_flat(m2.result()), rel=1e-12)


def test_large_offset_keeps_precision():
    x, recon, feats, mask = _batch(seed=7)
    shift = 1e4
    m1, m2 = CoreMetrics(), CoreMetrics()
    m1.update(x, recon, feats, mask)
    m2.update(x.double() + shift, recon.double() + shift, feats, mask)
    ev1 = m1.result()["reconstruction_quality"]["explained_variance"]
    ev2 = m2.result()["reconstruction_quality"]["explained_variance"]
    assert ev2 == pytest.approx(ev1, rel=1e-6)


def test_no_tokens_is_an_error():
    m = CoreMetrics()
    with pytest.raises(ValueError):
        m.result()
