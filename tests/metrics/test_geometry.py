"""Decoder geometry: max cosine per latent (chunked = dense), its summary, group condition numbers."""

import math

import numpy as np
import pytest
import torch

from tsae_core.metrics.geometry import (
    condition_summary,
    cosine_summary,
    decoder_geometry,
    group_condition_numbers,
    labels_from_groups,
    max_decoder_cosine,
)


def _random_rows(F, D, seed=0):
    return torch.randn(F, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_planted_near_duplicate_has_max_cosine_of_its_twin():
    W = _random_rows(50, 256)
    other = W[1] - (W[1] @ W[0]) / (W[0] @ W[0]) * W[0]  # orthogonal to row 0
    cos = 0.95
    W[1] = cos * W[0] / W[0].norm() + math.sqrt(1 - cos**2) * other / other.norm()
    W *= torch.linspace(0.5, 3, 50)[:, None]  # row norms do not matter
    best, partner = max_decoder_cosine(W)
    assert best[0] == pytest.approx(cos, abs=1e-6) and best[1] == pytest.approx(cos, abs=1e-6)
    assert partner[0] == 1 and partner[1] == 0
    assert best[2:].max() < 0.35  # random directions in 256 dimensions


def test_chunked_equals_dense():
    W = _random_rows(37, 8, seed=1)
    U = W / W.norm(dim=1, keepdim=True)
    dense = (U @ U.T).fill_diagonal_(-2)
    for chunk in (1, 5, 37, 100):
        best, partner = max_decoder_cosine(W, chunk=chunk)
        torch.testing.assert_close(best, dense.max(1).values, rtol=0, atol=1e-6)
        assert (partner == dense.argmax(1)).all()


def test_summary_percentiles_share_and_histogram():
    c = torch.linspace(0, 1, 101, dtype=torch.float64)  # 0.00, 0.01, ..., 1.00
    s = cosine_summary(c)
    assert s["max_decoder_cos_mean"] == pytest.approx(0.5)
    assert s["max_decoder_cos_p50"] == pytest.approx(0.5) and s["max_decoder_cos_p90"] == pytest.approx(0.9)
    assert s["max_decoder_cos_p99"] == pytest.approx(0.99)
    assert s["share_above_0_9"] == pytest.approx(10 / 101)
    assert sum(s["max_decoder_cos_histogram"]["counts"]) == 101


def test_condition_numbers_of_orthonormal_and_near_collinear_groups():
    Q = torch.linalg.qr(_random_rows(16, 16, seed=2)).Q  # orthonormal rows
    W = torch.cat([Q[:4] * 3.0, Q[4:6]])
    theta = 0.01
    W[5] = math.cos(theta) * Q[4] + math.sin(theta) * Q[5]  # nearly collinear with row 4
    labels = np.array([0, 0, 0, 0, 1, 1])
    conds = group_condition_numbers(W, labels)
    assert conds[0] == pytest.approx(1.0, abs=1e-9)
    # two unit rows at angle θ: singular values sqrt(1 ± cos θ)
    assert conds[1] == pytest.approx(math.sqrt((1 + math.cos(theta)) / (1 - math.cos(theta))), rel=1e-6)
    assert conds[1] > 100
    s = condition_summary(conds)
    assert s["n_groups"] == 2 and s["condition_number_max"] == pytest.approx(conds[1])


def test_labels_from_padded_group_table_and_ungrouped_latents():
    groups = torch.tensor([[0, 3, -1], [2, 1, 4]])
    assert labels_from_groups(groups, 6).tolist() == [0, 1, 1, 0, 1, -1]
    conds = group_condition_numbers(_random_rows(6, 4), labels_from_groups(groups, 6))
    assert set(conds) == {0, 1}


def test_decoder_geometry_gives_summary_and_per_latent_arrays():
    W = _random_rows(20, 6, seed=3)
    summary, latents = decoder_geometry(W, labels_F=np.arange(20) // 5)
    assert {"max_decoder_cos_mean", "max_decoder_cos_p90", "share_above_0_9"} <= set(summary)
    assert summary["group_condition"]["n_groups"] == 4
    assert latents["max_decoder_cos"].shape == (20,) and latents["max_decoder_cos_partner"].shape == (20,)
    assert "group_condition" not in decoder_geometry(W)[0]
