"""Feature descriptors, clustering and comparison with true kinds on planted latents."""

import numpy as np
import pytest
import torch

from tsae_core.cluster import (
    PositionProfile,
    cluster_features,
    compare_with_truth,
    embed_2d,
    feature_descriptors,
    latent_kinds,
    position_profile,
)
from tsae_core.metrics.temporal import TemporalMetrics


def _planted_activity(n_per_kind=12, B=32, T=128, seed=0):
    """Latents of three kinds: slow (blocks of 12–30 tokens), fast (i.i.d.), positional (a 6-token window)."""
    g = torch.Generator().manual_seed(seed)
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, 0] = True
    cut = torch.randint(48, 96, (B,), generator=g)
    doc_start[torch.arange(B), cut] = True
    doc_id = doc_start.long().cumsum(1)
    first = torch.where(doc_id == 1, 0, cut[:, None])
    position = torch.arange(T)[None] - first
    cols, kinds = [], []
    for _ in range(n_per_kind):
        L = int(torch.randint(12, 31, (1,), generator=g))
        on = torch.rand(B, T // L + 1, generator=g) < 0.3
        cols.append(on.repeat_interleave(L, 1)[:, :T].float())
        kinds.append("slow")
    for _ in range(n_per_kind):
        cols.append((torch.rand(B, T, generator=g) < 0.03 + 0.1 * torch.rand(1, generator=g)).float())
        kinds.append("fast")
    for _ in range(n_per_kind):
        s = int(torch.randint(0, 40, (1,), generator=g))
        window = (position >= s) & (position < s + 6)
        cols.append((window & (torch.rand(B, T, generator=g) < 0.6)).float())
        kinds.append("positional")
    f = torch.stack(cols, -1) * (0.5 + torch.rand(B, T, len(cols), generator=g))
    return f, doc_start, position, kinds


def _descriptors(f, doc_start, position, max_lag=8):
    tm = TemporalMetrics(f.shape[-1], max_lag=max_lag, min_fires=5)
    tm.update(f, doc_start)
    per_latent = tm.result()["per_latent"]
    prof = position_profile(f, position, None, n_bins=8, max_position=96)
    return feature_descriptors(per_latent, per_latent["frequency_F"], prof)


def test_three_kinds_cluster_apart():
    f, doc_start, position, kinds = _planted_activity()
    X, alive = _descriptors(f, doc_start, position)
    assert len(alive) == f.shape[-1]
    assert X.shape == (f.shape[-1], 1 + 8 + 1 + 8)
    labels = cluster_features(X, n_clusters=3, seed=0)
    cmp = compare_with_truth(labels, [kinds[i] for i in alive])
    assert cmp["adjusted_rand_index"] > 0.8
    assert cmp["normalized_mutual_information"] > 0.8
    assert cmp["contingency"]["kinds"] == ["fast", "positional", "slow"]
    assert np.asarray(cmp["contingency"]["counts"]).sum() == cmp["n_matched"] == len(kinds)
    coords = embed_2d(X, seed=0)
    assert coords.shape == (len(alive), 2) and np.isfinite(coords).all()


def test_contingency_counts_matched_latents_only():
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    kinds = ["slow", "slow", "fast", "unmatched", "fast", "slow", "unmatched"]
    cmp = compare_with_truth(labels, kinds)
    assert cmp["contingency"]["kinds"] == ["fast", "slow"] and cmp["contingency"]["clusters"] == [0, 1, 2]
    assert cmp["contingency"]["counts"] == [[0, 2], [1, 0], [1, 1]]
    assert np.asarray(cmp["contingency"]["counts"]).sum() == cmp["n_matched"] == 5
    assert cmp["unmatched_per_cluster"] == [0, 1, 1] and cmp["n_unmatched"] == 2
    assert cmp["purity_per_cluster"] == pytest.approx([1.0, 1.0, 0.5])
    assert cmp["purity"] == pytest.approx(4 / 5)


def test_latent_kinds_by_decoder_cosine():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(3, 8, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    W = torch.stack([dirs[2] * 2.0, torch.randn(8, generator=g), dirs[0] + 0.01 * torch.randn(8, generator=g)])
    kinds = latent_kinds(W, dirs, ["fast", "slow", "positional"], threshold=0.9)
    assert kinds == ["positional", "unmatched", "fast"]


def test_position_profile_streams_and_corrects_for_occupancy():
    B, T, F = 4, 16, 2
    position = torch.arange(T).expand(B, T) % 8  # every bin equally occupied... then a masked half
    f = torch.zeros(B, T, F)
    f[..., 0] = 1.0  # fires everywhere: a flat profile
    f[..., 1] = (position < 2).float()  # fires only in the first bin
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 12:] = False  # fewer tokens in late bins must not tilt latent 0's profile
    prof = PositionProfile(F, n_bins=4, max_position=8)
    prof.update(f[:2], position[:2], mask[:2])
    prof.update(f[2:], position[2:], mask[2:])
    got = prof.result()
    np.testing.assert_allclose(got, position_profile(f, position, mask, n_bins=4, max_position=8))
    np.testing.assert_allclose(got[0], [0.25] * 4)
    np.testing.assert_allclose(got[1], [1.0, 0, 0, 0])


def test_dead_latents_are_left_out_and_small_inputs_work():
    f, doc_start, position, _ = _planted_activity(n_per_kind=3)
    f[..., 0] = 0
    X, alive = _descriptors(f, doc_start, position, max_lag=4)
    assert 0 not in alive and len(alive) == f.shape[-1] - 1
    assert np.isfinite(X).all()
    assert len(set(cluster_features(X[:2], n_clusters=5).tolist())) <= 2
    assert embed_2d(X[:1]).shape == (1, 2)


class _OracleSAE(torch.nn.Module):
    """Decoder = the true directions plus random extra rows; features = the true codes (extras silent)."""

    def __init__(self, store, batch_sequences, n_extra=8):
        super().__init__()
        truth = store.ground_truth()
        G, D = truth.directions_GD.shape
        extra = torch.randn(n_extra, D, generator=torch.Generator().manual_seed(0))
        self.W_dec = torch.nn.Parameter(torch.cat([truth.directions_GD, extra]))
        self.cfg = type("Cfg", (), {"d_sae": G + n_extra})()
        self._queue = list(store.split("eval").batches(batch_sequences, shuffle=False))
        self.n_extra = n_extra

    def decoder_directions(self):
        return self.W_dec

    def forward(self, x_BTD, mask_BT=None, doc_start_BT=None, position_BT=None):
        batch = self._queue.pop(0)
        assert torch.equal(batch.acts_BTD.to(x_BTD.dtype), x_BTD)
        codes = batch.true_codes_BTG.float()
        features = torch.cat([codes, torch.zeros(*codes.shape[:2], self.n_extra)], -1)
        return type("Out", (), {"features": features})()


def test_cluster_run_variant_on_a_harvested_run(harvested, monkeypatch):
    import tsae_core.sae
    from tsae_core.cluster import cluster_run_variant
    from tsae_core.io import read_json
    from tsae_core.metrics.geometry import group_condition_numbers

    cfg, store = harvested
    oracle = _OracleSAE(store, cfg.eval.batch_sequences)
    monkeypatch.setattr(tsae_core.sae, "load_sae", lambda *a, **k: oracle)
    run_dir = cfg.run_dir.parent / "cluster_test_run"
    result = cluster_run_variant(cfg, "oracle", store, run_dir, progress=False)
    kinds = store.ground_truth().kinds
    alive = result["alive_idx"]
    assert 0 < result["n_alive"] == len(alive) == len(result["labels"]) == len(result["embedding_2d"])
    assert max(alive) < len(kinds)  # the silent extra latents are not described
    assert result["latent_kind"] == [kinds[i] for i in alive]
    assert np.asarray(result["contingency"]["counts"]).sum() == result["n_matched"] == len(alive)
    assert result["n_clusters"] == cfg.cluster.n_clusters
    profile = result["profile"]
    assert sum(profile["n_latents"]) == result["n_alive"] and profile["clusters"] == sorted(set(result["labels"]))
    assert all(0 < r <= 1 for r in profile["median_firing_rate"])
    assert np.isfinite(result["ari"]) and np.isfinite(result["nmi"])
    labels_F = np.full(oracle.cfg.d_sae, -1)
    labels_F[alive] = result["labels"]
    want = group_condition_numbers(oracle.W_dec.detach(), labels_F)
    assert result["decoder_condition_number"] == pytest.approx([want.get(c) for c in profile["clusters"]])
    saved = read_json(run_dir / "analysis" / "clusters_oracle.json")
    assert saved["labels"] == result["labels"] and "tsae" in saved
