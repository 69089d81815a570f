"""Position dependence (η² on the position bin, with its within-document control) and FVU by position."""

import numpy as np
import pytest
import torch

from tsae_core.metrics.core import CoreMetrics
from tsae_core.metrics.position import (
    PositionDependence,
    ReconstructionByPosition,
    position_bin_edges,
    position_bins,
)


def _case(seed=0, B=6, T=40, F=5, D=3):
    g = torch.Generator().manual_seed(seed)
    doc_start = torch.rand(B, T, generator=g) < 0.08
    doc_start[::2, 0] = True  # odd sequences begin inside a document that started 30 tokens earlier
    position = torch.zeros(B, T, dtype=torch.long)
    position[1::2, 0] = 30
    for t in range(1, T):
        position[:, t] = torch.where(doc_start[:, t], 0, position[:, t - 1] + 1)
    f = (torch.rand(B, T, F, generator=g) < 0.4) * torch.rand(B, T, F, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.1
    x = torch.randn(B, T, D, generator=g) + 2
    recon = x + 0.3 * torch.randn(B, T, D, generator=g) * (1 + position[..., None] / 10)
    return f, position, doc_start, mask, x, recon


def test_bins_are_single_positions_then_half_octaves():
    assert position_bin_edges(128) == [*range(16), 16, 23, 32, 45, 64, 91]
    edges = position_bin_edges(4096)
    bins = position_bins(torch.tensor([0, 5, 15, 16, 22, 23, 127, 128, 10**6]), edges).tolist()
    assert bins == [0, 5, 15, 16, 16, 17, 21, 22, len(edges) - 1]


def test_eta_squared_matches_its_definition():
    f, position, doc_start, mask, _, _ = _case()
    pd = PositionDependence(f.shape[-1], min_fires=1)
    pd.update(f, position, doc_start, mask)
    got = pd.per_latent()["position_dependence_F"].numpy()
    bins = position_bins(position, pd.edges)[mask].numpy()
    for i in range(f.shape[-1]):
        v = f[..., i][mask].double().numpy()
        between = sum(len(v[bins == b]) * (v[bins == b].mean() - v.mean()) ** 2 for b in np.unique(bins))
        assert got[i] == pytest.approx(between / ((v - v.mean()) ** 2).sum(), rel=1e-9)


def test_streaming_equals_one_shot_and_control_is_a_within_document_shuffle():
    f, position, doc_start, mask, _, _ = _case(seed=1)
    one = PositionDependence(f.shape[-1], min_fires=1)
    one.update(f, position, doc_start, mask)
    many = PositionDependence(f.shape[-1], min_fires=1)
    many.update(f[:3], position[:3], doc_start[:3], mask[:3])
    many.update(f[3:], position[3:], doc_start[3:], mask[3:])
    a, b = one.per_latent(), many.per_latent()
    np.testing.assert_allclose(a["position_dependence_F"], b["position_dependence_F"], rtol=1e-9)
    # a latent constant within each document keeps its η² under a within-document shuffle
    const = (doc_start.cumsum(1) % 3 == 0).float()[..., None]
    pd = PositionDependence(1, min_fires=1)
    pd.update(const, position, doc_start, mask)
    pl = pd.per_latent()
    assert float(pl["position_dependence_control_F"][0]) == pytest.approx(float(pl["position_dependence_F"][0]), rel=1e-9)


def test_positional_latent_far_above_its_control_and_iid_latent_at_it():
    g = torch.Generator().manual_seed(0)
    B, T = 64, 128
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, ::32] = True
    position = torch.arange(T).repeat(B, 1) % 32
    iid = (torch.rand(B, T, generator=g) < 0.1).float()
    positional = ((position >= 5) & (position < 8) & (torch.rand(B, T, generator=g) < 0.7)).float()
    pd = PositionDependence(2, seed=0)
    pd.update(torch.stack([positional, iid], -1), position, doc_start)
    pl = pd.per_latent()
    eta, ctl = pl["position_dependence_F"].tolist(), pl["position_dependence_control_F"].tolist()
    assert eta[0] > 0.5 and ctl[0] < 0.02
    assert eta[1] < 0.01 and ctl[1] < 0.01 and abs(eta[1] - ctl[1]) < 0.005
    r = pd.result()
    assert r["position_dependence_mean"] == pytest.approx(np.mean(eta))
    assert r["position_bins"] == list(range(16)) + [16, 23]  # positions 0..31


def test_fvu_by_position_matches_definition_and_adds_up_to_explained_variance():
    f, position, doc_start, mask, x, recon = _case(seed=2)
    rp = ReconstructionByPosition(x.shape[-1])
    rp.update(x, recon, position, mask)
    r = rp.result()
    xm, rm = x[mask].double(), recon[mask].double()
    bins = position_bins(position, rp.edges)[mask]
    mean = xm.mean(0)
    err, tot = [], []
    for b in range(len(r["bins"])):
        sel = bins == b
        err.append(float((xm[sel] - rm[sel]).pow(2).sum()))
        tot.append(float((xm[sel] - mean).pow(2).sum()))
        if sel.any():
            assert r["fvu"][b] == pytest.approx(err[-1] / tot[-1], rel=1e-9)
        assert r["n_tokens"][b] == int(sel.sum())
    core = CoreMetrics()
    core.update(x, recon, f, mask)
    ev = core.result()["reconstruction_quality"]["explained_variance"]
    assert 1 - sum(err) / sum(tot) == pytest.approx(ev, rel=1e-6)
    assert r["fvu"][0] < r["fvu"][-1]  # the planted error grows with position
