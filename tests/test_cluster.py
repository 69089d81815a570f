"""Feature descriptors, clustering, count selection, example contexts and comparison with true kinds."""

import dataclasses
import re

import numpy as np
import pytest
import torch
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from tests.conftest import ci_config
from tsae_core.config import ConfigError
from tsae_core.evals.cluster.report import (
    context_lines,
    descriptor_summary,
    examples_text,
    profile_table,
    selection_table,
    variant_summary,
)
from tsae_core.evals.cluster.run import (
    PositionProfile,
    compare_with_truth,
    embed_2d,
    feature_descriptors,
    fit_clusters,
    latent_kinds,
    position_profile,
    select_clusters,
)
from tsae_core.evals.coactivation import CoFiring, coactivation_embedding
from tsae_core.metrics.temporal import TemporalMetrics
from tsae_core.sources.tinylm import BOS_ID, ByteTokenizer
from tsae_core.top_contexts import TopContexts, token_strings

METHODS = ("kmeans", "agglomerative", "gmm")


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


def _descriptors(f, doc_start, position, max_lag=8, coactivation_dims=4):
    tm = TemporalMetrics(f.shape[-1], max_lag=max_lag, min_fires=5)
    tm.update(f, doc_start)
    per_latent = tm.result()["per_latent"]
    prof = position_profile(f, position, None, n_bins=8, max_position=96)
    firing = CoFiring(f.shape[-1])
    firing.update(f)
    coact = coactivation_embedding(firing.matrix(), coactivation_dims, seed=0)
    return feature_descriptors(per_latent, per_latent["frequency_F"], prof, coactivation_FC=coact)


@pytest.mark.parametrize("method", METHODS)
def test_three_kinds_cluster_apart(method):
    f, doc_start, position, kinds = _planted_activity()
    X, alive = _descriptors(f, doc_start, position)
    assert len(alive) == f.shape[-1]
    assert X.shape == (f.shape[-1], 1 + 8 + 1 + 8 + 4)
    labels = fit_clusters(X, n_clusters=3, method=method, seed=0)
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
    assert len(set(fit_clusters(X[:2], n_clusters=5).tolist())) <= 2
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
    import tsae_core.loading
    from tsae_core.evals.cluster.run import cluster_run_variant
    from tsae_core.io import read_json
    from tsae_core.metrics.geometry import group_condition_numbers

    cfg, store = harvested
    oracle = _OracleSAE(store, cfg.eval.batch_sequences)
    monkeypatch.setattr(tsae_core.loading, "load_sae", lambda *a, **k: oracle)
    run_dir = cfg.run_dir.parent / "cluster_test_run"
    result = cluster_run_variant(cfg, "oracle", store, run_dir, progress=False)
    print(f"oracle SAE on the synthetic eval split: ARI {result['ari']:.3f}, NMI {result['nmi']:.3f}")
    kinds = store.ground_truth().kinds
    alive = result["alive_idx"]
    assert 0 < result["n_alive"] == len(alive) == len(result["labels"]) == len(result["embedding_2d"])
    assert max(alive) < len(kinds)  # the silent extra latents are not described
    assert result["latent_kind"] == [kinds[i] for i in alive]
    assert np.asarray(result["contingency"]["counts"]).sum() == result["n_matched"] == len(alive)
    assert result["n_clusters"] == cfg.cluster.n_clusters
    profile = result["profile"]
    assert sum(profile["n_latents"]) == result["n_alive"] and profile["clusters"] == sorted(set(result["labels"]))
    assert all(0 < r <= 1 for r in profile["mean_firing_rate"])
    assert all(sum(p) == pytest.approx(1.0) for p in profile["position_profile"])
    assert result["examples"] == []  # synthetic data has no tokens
    assert result["ari"] > 0.3 and result["nmi"] > 0.3
    labels_F = np.full(oracle.cfg.d_sae, -1)
    labels_F[alive] = result["labels"]
    want = group_condition_numbers(oracle.W_dec.detach(), labels_F)
    assert result["decoder_condition_number"] == pytest.approx([want.get(c) for c in profile["clusters"]])
    saved = read_json(run_dir / "analysis" / "clusters_oracle.json")
    assert saved["labels"] == result["labels"] and "tsae" in saved


# ---------------------------------------------------------------- count selection and methods
@pytest.mark.parametrize("method", METHODS)
def test_silhouette_selects_the_planted_number_of_clusters(method):
    X, truth = make_blobs(n_samples=240, centers=4, n_features=6, cluster_std=0.6, random_state=3)
    labels, selection = select_clusters(X, [2, 3, 4, 5, 6, 7, 500], method=method, seed=0)
    assert selection["chosen"] == 4 and selection["method"] == method
    scores = selection["silhouette"]
    assert len(scores) == 7 and scores[-1] is None  # 500 clusters of 240 points: not tried
    assert scores[2] == max(s for s in scores if s is not None) > 0.6
    assert adjusted_rand_score(truth, labels) == pytest.approx(1.0)
    sizes = np.bincount(labels)
    assert (np.diff(sizes) <= 0).all()  # numbered by size, largest first


def test_a_single_count_is_used_as_given():
    X, _ = make_blobs(n_samples=90, centers=3, n_features=4, random_state=0)
    labels, selection = select_clusters(X, [5], method="kmeans")
    assert selection["chosen"] == 5 and len(set(labels.tolist())) == 5 and selection["silhouette"][0] > 0


@pytest.mark.parametrize(("override", "key"), [
    ({"cluster.method": "dbscan"}, "cluster.method"),
    ({"cluster.n_clusters": 1}, "cluster.n_clusters"),
    ({"cluster.n_clusters": [2, 1]}, "cluster.n_clusters"),
    ({"cluster.n_clusters": []}, "cluster.n_clusters"),
    ({"cluster.n_clusters": [3, 3]}, "cluster.n_clusters"),
    ({"cluster.n_clusters": "many"}, "cluster.n_clusters"),
    ({"cluster.coactivation_dims": -1}, "cluster.coactivation_dims"),
    ({"cluster.example_contexts": -2}, "cluster.example_contexts"),
    ({"cluster.nclusters": 3}, "cluster.nclusters"),
])
def test_bad_cluster_params_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        ci_config("runs", **override)


def test_cluster_counts_read_as_int_or_list():
    assert ci_config("runs", **{"cluster.n_clusters": [4, 2, 6]}).cluster.candidate_counts() == [4, 2, 6]
    assert ci_config("runs", **{"cluster.n_clusters": 5}).cluster.candidate_counts() == [5]


# ---------------------------------------------------------------- co-activation
def test_coactivation_embedding_groups_latents_that_fire_together():
    g = torch.Generator().manual_seed(0)
    N = 4000
    group_on = torch.rand(N, 2, generator=g) < 0.05  # two events; four latents follow each
    follow = torch.rand(N, 8, generator=g) < 0.9
    f = torch.cat([(group_on[:, [0]] & follow[:, :4]), (group_on[:, [1]] & follow[:, 4:]),
                   torch.rand(N, 4, generator=g) < 0.05], 1).float()  # and four independent latents
    firing = CoFiring(12)
    firing.update(f[:1500, None])
    firing.update(f[1500:, None])
    assert firing.matrix().shape == (N, 12) and firing.matrix().nnz == int(f.sum())
    emb = coactivation_embedding(firing.matrix(), 2, seed=0)  # as many components as groups
    norm = np.linalg.norm(emb, axis=1)
    cos = emb @ emb.T / np.outer(norm, norm)
    assert cos[:4, :4].min() > 0.9 and cos[4:8, 4:8].min() > 0.9 and np.abs(cos[:4, 4:8]).max() < 0.2
    assert norm[:8].min() > 0.8 and norm[8:].max() < 0.3  # independent latents share little


# ---------------------------------------------------------------- example contexts
def _token_batch(B=6, T=20, F=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(B, T, F, generator=g) * (torch.rand(B, T, F, generator=g) < 0.3)
    f[:, 0] = 9.0  # the BOS token is largest, but special: never a context's centre
    f[5] = 0.0  # a sequence where nothing fires
    tokens = torch.randint(ord("a"), ord("z") + 1, (B, T), generator=g)
    tokens[:, 0] = BOS_ID
    special = torch.zeros(B, T, dtype=torch.bool)
    special[:, 0] = True
    doc_start = special.clone()
    tokens[::2, 8], special[::2, 8], doc_start[::2, 9] = BOS_ID, True, True  # a second document, after its BOS
    f[::2, 8] = 9.0
    return f, tokens, doc_start, special


def test_top_contexts_are_the_argmax_positions_with_their_document_window():
    f, tokens, doc_start, special = _token_batch()
    before, after = 4, 2
    top = TopContexts(f.shape[-1], n_top=3, before=before, after=after)
    for lo, hi in ((0, 4), (4, 6)):  # two batches: sequences are numbered across them
        top.update(f[lo:hi], tokens[lo:hi], doc_start[lo:hi], ~special[lo:hi])
    best_BF, pos_BF = f.masked_fill(special[..., None], -torch.inf).max(1)
    for latent in range(f.shape[-1]):
        contexts = top.contexts(latent, ByteTokenizer())
        expected = [b for b in best_BF[:, latent].argsort(descending=True).tolist() if best_BF[b, latent] > 0][:3]
        assert [c["sequence"] for c in contexts] == expected
        for c in contexts:
            b, t = c["sequence"], c["position"]
            assert t == pos_BF[b, latent] and c["activation"] == pytest.approx(float(f[b, t, latent]))
            assert c["tokens"][c["marked"]] == chr(tokens[b, t]) and c["token_ids"][c["marked"]] == tokens[b, t]
            starts = [0, 8] if b % 2 == 0 else [0]  # a document's BOS opens it
            doc_lo, doc_hi = max(i for i in starts if i <= t), min([i for i in starts if i > t] + [20])
            lo, hi = max(t - before, doc_lo), min(t + after + 1, doc_hi)
            assert c["token_ids"] == tokens[b, lo:hi].tolist() and c["marked"] == t - lo
            assert c["activations"] == pytest.approx(f[b, lo:hi, latent].tolist(), abs=1e-4)


def test_token_strings_and_context_lines_are_readable():
    ids = [BOS_ID, ord("a"), ord("\n"), ord("\t"), *"…".encode()]
    assert token_strings(ByteTokenizer(), ids) == ["<bos>", "a", "↵", "⇥", "<0xE2>", "<0x80>", "<0xA6>"]
    text, bars = context_lines({"tokens": ["de", "f", " x"], "activations": [0.0, 2.0, 1.0], "marked": 1, "activation": 2.0})
    assert text == "de⟦f⟧ x" and bars == "  ███▄▄" and len(bars) == len(text)


# ---------------------------------------------------------------- the stage on a language-model-like source
class _TokenStore:
    """The harvested synthetic store as a language-model source would look: byte tokens (letters a–e,
    BOS at special positions) in every batch, and no ground truth."""

    def __init__(self, store):
        self._store, self.context_size = store, store.context_size

    def ground_truth(self):
        return None

    def split(self, name):
        return self

    def batches(self, batch_sequences, shuffle=False):
        g = torch.Generator().manual_seed(0)
        for b in self._store.split("eval").batches(batch_sequences, shuffle=shuffle):
            letters = torch.randint(ord("a"), ord("e") + 1, b.special_BT.shape, generator=g)
            yield dataclasses.replace(b, tokens_BT=torch.where(b.special_BT, BOS_ID, letters))


def test_language_model_clustering_has_examples_and_prints_no_nan(harvested, monkeypatch, tmp_path):
    import tsae_core.loading
    from tsae_core.evals.cluster.run import cluster_run_variant

    cfg, store = harvested
    cfg = ci_config(cfg.run_dir.parent, **{"cluster.n_clusters": [2, 3, 4], "cluster.method": "agglomerative"})
    monkeypatch.setattr(tsae_core.loading, "load_sae", lambda *a, **k: _OracleSAE(store, cfg.eval.batch_sequences))
    result = cluster_run_variant(cfg, "oracle", _TokenStore(store), tmp_path, tokenizer=ByteTokenizer(), progress=False)
    assert not result["has_ground_truth"] and result["ari"] is None and result["nmi"] is None
    assert result["selection"]["chosen"] in (2, 3, 4) and result["n_clusters"] == result["selection"]["chosen"]
    labels = dict(zip(result["alive_idx"], result["labels"]))
    assert [g["cluster"] for g in result["examples"]] == result["profile"]["clusters"]
    for group in result["examples"]:
        assert 1 <= len(group["latents"]) <= cfg.cluster.example_latents
        for latent in group["latents"]:
            assert labels[latent["latent"]] == group["cluster"] and 1 <= len(latent["contexts"]) <= cfg.cluster.example_contexts
            for c in latent["contexts"]:
                assert c["activations"][c["marked"]] == pytest.approx(c["activation"], abs=1e-4)
                assert c["tokens"][c["marked"]] in "abcde"
    shown = "\n".join([descriptor_summary(result), variant_summary(result), selection_table({"oracle": result}).to_string(),
                       profile_table(result).to_string(), examples_text(result)])
    assert "⟦" in shown and not re.search(r"\bnan\b|\bNone\b", shown, flags=re.IGNORECASE), shown
