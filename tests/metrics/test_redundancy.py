"""Cross-position redundancy against a dense computation and on a planted concept split by position."""

import numpy as np
import pytest
import torch

import tsae_core.metrics.redundancy as redundancy
from tsae_core.metrics.redundancy import CrossPositionRedundancy
from tsae_core.metrics.temporal import pair_validity


def _sparse_codes(B, T, F, rate, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, T, F, generator=g) < rate) * (0.2 + torch.rand(B, T, F, generator=g))


def _documents(B, T, every):
    doc_start = torch.zeros(B, T, dtype=torch.bool)
    doc_start[:, ::every] = True
    return doc_start


def _dense_correlations(f, doc_start, mask, K):
    """r[i, j, δ−1] over valid pairs, by numpy on the dense codes (the definition, written out)."""
    valid = pair_validity(doc_start, mask, K).numpy()
    F = f.shape[-1]
    r = np.full((F, F, K), np.nan)
    for k in range(1, K + 1):
        sel = valid[:, : f.shape[1] - k, k - 1]
        a, b = f[:, :-k].double().numpy()[sel], f[:, k:].double().numpy()[sel]
        for i in range(F):
            for j in range(F):
                if i != j and a[:, i].std() > 0 and b[:, j].std() > 0:
                    r[i, j, k - 1] = np.corrcoef(a[:, i], b[:, j])[0, 1]
    return r


@pytest.mark.parametrize("block_entries", [1 << 22, 7])  # one block; blocks of one latent row
def test_per_latent_maxima_match_the_dense_computation(monkeypatch, block_entries):
    monkeypatch.setattr(redundancy, "BLOCK_ENTRIES", block_entries)
    f = _sparse_codes(4, 48, 6, 0.3, seed=0)
    doc_start = _documents(4, 48, 12)
    mask = torch.rand(4, 48, generator=torch.Generator().manual_seed(1)) > 0.1
    cr = CrossPositionRedundancy(6, max_lag=3, min_fires=1, n_top=5)
    cr.update(f, doc_start, mask)
    pl, res = cr.per_latent(), cr.result()
    r = _dense_correlations(f, doc_start, mask, 3)
    either_role = np.fmax(np.nanmax(r, axis=1), np.nanmax(r, axis=0))  # (F, K): i first or second
    np.testing.assert_allclose(pl["redundancy_FK"], np.clip(either_role, 0, None), atol=1e-9)
    np.testing.assert_allclose(pl["redundancy_F"], np.clip(either_role.max(1), 0, None), atol=1e-9)
    best = sorted(((r[i, j, k], i, j, k + 1) for i in range(6) for j in range(6) for k in range(3) if i != j), reverse=True)
    top = res["top_pairs"][0]
    assert (top["i"], top["j"], top["lag"]) == best[0][1:] and top["corr"] == pytest.approx(best[0][0])
    assert res["score"] == pytest.approx(pl["redundancy_F"].mean())


def _planted_split(B=96, T=128, F=40, seed=0):
    """Sparse random latents, and one concept written into latent A at t and latent B at t+2."""
    g = torch.Generator().manual_seed(seed)
    f = _sparse_codes(B, T, F, 0.03, seed)
    doc_start = _documents(B, T, 32)
    concept = (torch.rand(B, T, generator=g) < 0.05) * (0.5 + torch.rand(B, T, generator=g))
    A, Bl = 5, 17
    f[..., A] = concept
    f[..., Bl] = 0
    same_doc = doc_start.long().cumsum(1)[:, 2:] == doc_start.long().cumsum(1)[:, :-2]
    f[:, 2:, Bl] = concept[:, :-2] * same_doc  # the concept's second half stays within its document
    return f, doc_start, concept, same_doc, A, Bl


def test_a_concept_split_across_positions_is_the_top_pair():
    f, doc_start, concept, same_doc, A, Bl = _planted_split()
    cr = CrossPositionRedundancy(f.shape[-1], max_lag=4, seed=0)
    cr.update(f[:48], doc_start[:48])
    cr.update(f[48:], doc_start[48:])
    res, pl = cr.result(), cr.per_latent()
    top = res["top_pairs"][0]
    assert (top["i"], top["j"], top["lag"]) == (A, Bl, 2) and top["corr"] > 0.99
    assert top["co_fires"] == int(((concept[:, :-2] > 0) & same_doc).sum())
    assert all(p["corr"] < 0.2 for p in res["top_pairs"][1:]), "the random latents are not redundant"
    assert pl["partner_F"][A] == Bl and pl["partner_F"][Bl] == A and pl["lag_F"][A] == 2
    # shuffled within documents, the split is gone
    assert pl["redundancy_F"][A] > 0.99 and pl["redundancy_control_F"][A] < 0.2 and pl["redundancy_control_F"][Bl] < 0.2
    assert res["control"] < 0.2 and res["score"] > res["control"]
    assert res["score_by_lag"][1] > res["score_by_lag"][0] and len(res["control_by_lag"]) == 4
    assert res["n_alive"] == f.shape[-1] and not res["truncated"] and res["n_tokens"] == f.shape[0] * f.shape[1]


def test_masked_tokens_and_document_boundaries_break_pairs():
    # latent 1 fires two tokens after latent 0, but each time across a document boundary (6 -> next
    # document's 0) or onto a masked token (3 -> 5): no valid pair links them
    B, T = 16, 64
    doc_start = _documents(B, T, 8)
    f = torch.zeros(B, T, 2)
    f[:, 6::8, 0], f[:, 8::8, 1] = 1.0, 1.0
    f[:, 3::8, 0], f[:, 5::8, 1] = 0.5, 0.5
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[:, 5::8] = False

    def score(doc_start, mask):
        cr = CrossPositionRedundancy(2, max_lag=2, min_fires=1)
        cr.update(f, doc_start, mask)
        return cr.per_latent()["redundancy_FK"][:, 1].max()

    assert score(doc_start, mask) < 0.05
    assert score(_documents(B, T, T), torch.ones(B, T, dtype=torch.bool)) > 0.9  # one long document, nothing masked


def test_a_code_beyond_the_co_firing_budget_uses_the_first_sequences():
    f = _sparse_codes(8, 32, 10, 0.3, seed=3)
    doc_start = _documents(8, 32, 32)
    full = CrossPositionRedundancy(10, max_lag=2, min_fires=1)
    full.update(f, doc_start)
    events_per_sequence = full.co_firing / 8
    cut = CrossPositionRedundancy(10, max_lag=2, min_fires=1, max_co_firing=3.5 * events_per_sequence)
    cut.update(f[:4], doc_start[:4])
    cut.update(f[4:], doc_start[4:])
    res = cut.result()
    assert res["truncated"] and 0 < res["n_tokens"] < 8 * 32 and res["co_firing_events"] <= 3.5 * events_per_sequence
    first = CrossPositionRedundancy(10, max_lag=2, min_fires=1)
    first.update(f[: res["n_tokens"] // 32], doc_start[: res["n_tokens"] // 32])
    assert res["score"] == pytest.approx(first.result()["score"])


def test_a_code_whose_first_sequence_is_beyond_the_budget_gives_no_score_rather_than_an_error():
    f = _sparse_codes(2, 32, 10, 0.5, seed=4)
    cr = CrossPositionRedundancy(10, max_lag=2, min_fires=1, max_co_firing=10)
    cr.update(f, _documents(2, 32, 32))
    res = cr.result()
    assert res["truncated"] and res["n_tokens"] == 0 and res["n_alive"] == 0 and res["top_pairs"] == []
    assert np.isnan(res["score"]) and np.isnan(res["control"])
