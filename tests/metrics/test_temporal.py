"""TemporalMetrics against brute-force computations and planted temporal structure."""

import math

import numpy as np
import pytest
import torch

import tsae_core.metrics.temporal as temporal
from tsae_core.metrics.temporal import TemporalMetrics, pair_validity


def _brute_force(f, doc_start, mask, K):
    """Per-latent statistics by explicit loops over valid pairs (the definitions, written out)."""
    f, mask = f.double().numpy(), mask.numpy()
    doc = doc_start.long().cumsum(1).numpy()
    B, T, F = f.shape
    pairs = {
        k: [(b, t) for b in range(B) for t in range(T - k) if mask[b, t] and mask[b, t + k] and doc[b, t] == doc[b, t + k]]
        for k in range(1, K + 1)
    }
    auto = np.full((F, K), np.nan)
    for k, ps in pairs.items():
        if len(ps) > 1:
            a = np.array([f[b, t] for b, t in ps])
            c = np.array([f[b, t + k] for b, t in ps])
            for i in range(F):
                if a[:, i].std() > 0 and c[:, i].std() > 0:
                    auto[i, k - 1] = np.corrcoef(a[:, i], c[:, i])[0, 1]
    fires, runs = np.zeros(F), np.zeros(F)
    for b in range(B):
        for t in range(T):
            if not mask[b, t]:
                continue
            on = f[b, t] != 0
            fires += on
            cont = t > 0 and mask[b, t - 1] and doc[b, t - 1] == doc[b, t]
            runs += on & ~(cont & (f[b, t - 1] != 0)) if cont else on
    n_tok = mask.sum()
    p = fires / n_tok
    a1 = np.array([f[b, t] for b, t in pairs[1]])
    c1 = np.array([f[b, t + 1] for b, t in pairs[1]])
    za, zc = a1 != 0, c1 != 0
    mi = np.zeros(F)
    for i in range(F):
        for x in (0, 1):
            for y in (0, 1):
                pxy = np.mean((za[:, i] == x) & (zc[:, i] == y))
                px, py = np.mean(za[:, i] == x), np.mean(zc[:, i] == y)
                if pxy > 0:
                    mi[i] += pxy * math.log2(pxy / (px * py))
    smooth = np.abs(c1 - a1).mean(0) / np.abs(f[mask]).mean(0)
    return {
        "autocorr": auto,
        "mean_run": fires / runs,
        "ratio": fires / runs * (1 - p),
        "mi": mi,
        "smooth": smooth,
        "fires": fires,
    }


def _random_case(seed=0, B=3, T=30, F=6):
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(B, T, F, generator=g) < torch.linspace(0.15, 0.7, F)
    f = on * torch.rand(B, T, F, generator=g)
    doc_start = torch.rand(B, T, generator=g) < 0.1
    doc_start[:, 0] = True
    mask = ~doc_start & (torch.rand(B, T, generator=g) > 0.05)
    return f, doc_start, mask


@pytest.mark.parametrize("dense", [False, True])
def test_matches_brute_force(dense, monkeypatch):
    monkeypatch.setattr(temporal, "DENSE_FRACTION", 0.0 if dense else 2.0)  # both code paths
    f, doc_start, mask = _random_case()
    K = 5
    tm = TemporalMetrics(f.shape[-1], max_lag=K, min_fires=1)
    tm.update(f, doc_start, mask)
    pl = tm.result()["per_latent"]
    want = _brute_force(f, doc_start, mask, K)
    np.testing.assert_allclose(np.array(pl["autocorr_lag_FK"], dtype=float), want["autocorr"], atol=1e-9)
    np.testing.assert_allclose(pl["mean_run_length_F"], want["mean_run"], rtol=1e-9)
    np.testing.assert_allclose(pl["run_length_ratio_F"], want["ratio"], rtol=1e-9)
    np.testing.assert_allclose(pl["mutual_information_F"], want["mi"], atol=1e-9)
    np.testing.assert_allclose(pl["smoothness_F"], want["smooth"], rtol=1e-9)
    np.testing.assert_allclose(pl["fires_F"], want["fires"])


def test_streaming_equals_one_shot():
    f, doc_start, mask = _random_case(seed=1, B=6)
    one = TemporalMetrics(f.shape[-1], max_lag=4, min_fires=1)
    one.update(f, doc_start, mask)
    many = TemporalMetrics(f.shape[-1], max_lag=4, min_fires=1)
    for lo in (0, 2, 5):
        hi = {0: 2, 2: 5, 5: 6}[lo]
        many.update(f[lo:hi], doc_start[lo:hi], mask[lo:hi])
    a, b = one.result()["per_latent"], many.result()["per_latent"]
    for key in ("autocorr_lag_FK", "mean_run_length_F", "mutual_information_F", "smoothness_F"):
        np.testing.assert_allclose(np.array(b[key], dtype=float), np.array(a[key], dtype=float), atol=1e-9)


def _runs_and_iid(B=64, T=128, seed=0):
    """Latent 0: constant on blocks of 20 tokens (each block on with p 0.5); latent 1: i.i.d., p 0.2."""
    g = torch.Generator().manual_seed(seed)
    blocks = (torch.rand(B, T // 20 + 1, generator=g) < 0.5) * (0.5 + torch.rand(B, T // 20 + 1, generator=g))
    slow = blocks.repeat_interleave(20, dim=1)[:, :T]
    fast = (torch.rand(B, T, generator=g) < 0.2) * (0.5 + torch.rand(B, T, generator=g))
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, 0] = True
    return torch.stack([slow, fast], -1), doc_start


def test_persistent_and_iid_features_and_their_controls():
    # Long sequences: the control keeps each sequence's rate, so with few blocks per sequence the
    # between-sequence spread of a slow feature's rate would show up as control autocorrelation.
    f, doc_start = _runs_and_iid(B=8, T=1280)
    tm = TemporalMetrics(2, max_lag=8, seed=0)
    tm.update(f, doc_start)
    pl = tm.result(alive_only=False)["per_latent"]
    auto, ctl = np.array(pl["autocorr_lag_FK"]), np.array(pl["autocorr_lag_FK_control"])
    assert auto[0, 0] > 0.9 and abs(ctl[0, 0]) < 0.05
    assert abs(auto[1, 0]) < 0.05 and abs(ctl[1, 0]) < 0.05
    assert auto[0, 7] > 0.5  # still correlated 8 tokens apart
    ratio, ratio_ctl = pl["run_length_ratio_F"], pl["run_length_ratio_F_control"]
    assert pl["mean_run_length_F"][0] > 10 and ratio[0] > 5 and ratio_ctl[0] == pytest.approx(1.0, abs=0.15)
    assert ratio[1] == pytest.approx(1.0, abs=0.05) and ratio_ctl[1] == pytest.approx(1.0, abs=0.05)
    mi, mi_ctl = pl["mutual_information_F"], pl["mutual_information_F_control"]
    assert mi[0] > 0.5 and mi_ctl[0] < 0.01 and mi[1] < 0.01
    assert pl["smoothness_F"][0] < 0.3 * pl["smoothness_F_control"][0]


def test_document_boundaries_are_excluded():
    # Documents of 8 tokens; the latent fires on the last and the first token of each document, so
    # the only adjacent firing pairs straddle a boundary. Counting them would give runs of 2.
    B, T, L = 4, 64, 8
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, ::L] = True
    pos = torch.arange(T) % L
    f = ((pos == 0) | (pos == L - 1)).float().expand(B, T)[..., None].contiguous()
    tm = TemporalMetrics(1, max_lag=3, min_fires=1)
    tm.update(f, doc_start)
    r = tm.result()
    assert r["per_latent"]["mean_run_length_F"][0] == pytest.approx(1.0)
    assert r["autocorr_lag1_mean"] < 0  # within documents, firing at t predicts silence at t+1
    valid = pair_validity(doc_start, torch.ones(B, T, dtype=torch.bool), 3)
    assert not valid[:, L - 1, 0].any() and valid[:, 0, 0].all()


def test_masked_tokens_change_nothing():
    f, doc_start, mask = _random_case(seed=2)
    tm1 = TemporalMetrics(f.shape[-1], max_lag=4, min_fires=1)
    tm1.update(f, doc_start, mask)
    f2 = f.clone()
    f2[~mask] = 3.0
    tm2 = TemporalMetrics(f.shape[-1], max_lag=4, min_fires=1)
    tm2.update(f2, doc_start, mask)
    a, b = tm1.result(), tm2.result()
    assert np.allclose(
        np.array(a["per_latent"]["autocorr_lag_FK"], float), np.array(b["per_latent"]["autocorr_lag_FK"], float), equal_nan=True
    )
    assert a["autocorr_lag1_mean_control"] == pytest.approx(b["autocorr_lag1_mean_control"])


def test_summaries_over_alive_latents_and_relative_smoothness():
    f, doc_start = _runs_and_iid(B=16)
    f = torch.cat([f, torch.zeros(*f.shape[:2], 1)], -1)  # a dead latent
    x = torch.randn(16, 128, 4, generator=torch.Generator().manual_seed(3))
    tm = TemporalMetrics(3, max_lag=6, seed=1)
    tm.update(f, doc_start, acts_BTD=x)
    r = tm.result()
    assert r["n_alive"] == 2 and r["per_latent"]["alive_F"] == [True, True, False]
    auto = np.array(r["per_latent"]["autocorr_lag_FK"], dtype=float)
    assert r["autocorr_lag1_mean"] == pytest.approx(auto[:2, 0].mean())
    assert len(r["autocorr_mean_by_lag"]) == 6 and len(r["autocorr_mean_by_lag_control"]) == 6
    xd = x.double()
    want_change = (xd[:, 1:] - xd[:, :-1]).norm(dim=-1).mean() / xd.norm(dim=-1).mean()
    assert r["input_change"] == pytest.approx(float(want_change), rel=1e-9)
    rel = np.array(r["per_latent"]["smoothness_relative_F"], dtype=float)
    np.testing.assert_allclose(rel[:2], np.array(r["per_latent"]["smoothness_F"][:2]) / float(want_change))
    for key in ("run_length_ratio_mean", "mutual_information_mean", "smoothness_mean", "smoothness_relative_mean"):
        assert math.isfinite(r[key]) and math.isfinite(r[key + "_control"])


def test_control_is_seeded():
    f, doc_start = _runs_and_iid(B=8)
    results = []
    for seed in (0, 0, 1):
        tm = TemporalMetrics(2, max_lag=4, seed=seed)
        tm.update(f, doc_start)
        results.append(tm.result()["autocorr_lag1_mean_control"])
    assert results[0] == results[1] != results[2]


def test_within_document_permutation_moves_unmasked_tokens_within_their_document_only():
    f, doc_start, mask = _random_case(seed=4, B=5, T=50)
    perm = temporal.within_document_permutation(doc_start, mask, torch.Generator().manual_seed(0))
    doc = doc_start.long().cumsum(1)
    rows = torch.arange(5)[:, None]
    assert (perm.sort(1).values == torch.arange(50)).all(), "a permutation of each sequence"
    assert (doc[rows, perm] == doc).all() and (mask[rows, perm] == mask).all()
    assert (perm[~mask] == torch.arange(50).expand(5, 50)[~mask]).all(), "masked tokens stay"
    assert (perm != torch.arange(50)).float().mean() > 0.5, "and the others move"


def test_doc_shuffled_control_keeps_what_documents_share_and_loses_order():
    # latent 0 is constant over each document (on in every other one): the sequence shuffle breaks
    # it, the within-document shuffle cannot; latent 1 persists in runs of 20 inside long documents.
    B, T = 8, 1280
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, ::64] = True
    per_doc = ((doc_start.long().cumsum(1) % 2) == 0).float()
    runs, _ = _runs_and_iid(B=B, T=T)
    tm = TemporalMetrics(2, max_lag=4, seed=0)
    tm.update(torch.stack([per_doc, runs[..., 0]], -1), doc_start)
    r = tm.result(alive_only=False)
    pl = r["per_latent"]
    auto, seq, doc = (np.array(pl[k])[:, 0] for k in ("autocorr_lag_FK", "autocorr_lag_FK_control", "autocorr_lag_FK_doc_shuffled"))
    assert auto[0] == pytest.approx(1.0) and doc[0] == pytest.approx(1.0) and seq[0] < 0.1
    assert auto[1] > 0.9 and doc[1] < 0.4 and abs(seq[1]) < 0.05
    assert r["autocorr_lag1_doc_shuffled_mean"] == pytest.approx(doc.mean())
    assert len(r["autocorr_mean_by_lag_doc_shuffled"]) == 4
