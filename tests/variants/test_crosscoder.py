"""Temporal crosscoder: windows tile each document from its start and never mix two documents; a
token's outputs depend on its own window only; the sparsity budget is k per counted token."""

from __future__ import annotations

import pytest
import torch

from tests.variants.causality import assert_round_trip, earlier_document_influence
from tsae_core.evals.core import evaluate_variant
from tsae_core.sae import LossContext, SAEConfig
from tsae_core.sequence import document_ids
from tsae_core.train import train_variant
from tsae_core.variants.crosscoder import window_layout
from tsae_core.variants.registry import build_sae

D = 8


def _sae(activation="topk", k=2, T=4, d_sae=32):
    return build_sae(SAEConfig(architecture="crosscoder", activation=activation, d_in=D, d_sae=d_sae, k=k, options={"T": T},
                               aux_k_coefficient=1 / 32, aux_k=4))


def _data(B=3, T=16, starts=(0, 5, 11), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g)
    d = torch.zeros(B, T, dtype=torch.bool)
    d[:, list(starts)] = True
    return x, d, g


def test_windows_tile_each_document_from_its_start_and_never_hold_two():
    _, d, _ = _data(starts=(0, 2, 5, 11))  # documents of 2, 3, 6 and 5 tokens
    lay = window_layout(d, None, 4)
    doc = document_ids(d)
    for r in lay.row_BT.unique():
        in_row = lay.row_BT == r
        assert doc[in_row].unique().numel() == 1, "a window holds one document"
        assert lay.slot_BT[in_row].unique().numel() == int(in_row.sum()), "one token per slot"
    # windows [0-1] [2-4] [5-8][9-10] [11-14][15]
    assert lay.slot_BT[0].tolist() == [0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 1, 0, 1, 2, 3, 0]
    assert (lay.row_BT[0] - lay.row_BT[0, 0]).tolist() == [0, 0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 4, 4, 4, 4, 5]


def test_a_sequence_that_begins_inside_a_document_continues_its_tiling():
    sae = _sae()
    x, _, _ = _data(B=1, T=10, starts=(0,))
    whole = torch.zeros(1, 10, dtype=torch.bool)
    whole[0, 0] = True
    a = sae(x, None, whole)
    tail = sae(x[:, 6:], None, torch.zeros(1, 4, dtype=torch.bool), torch.arange(6, 10)[None])
    assert tail.extras["slot_BT"][0].tolist() == [2, 3, 0, 1], "positions 6..9 keep their slots"
    assert torch.allclose(tail.recon[:, 2:], a.recon[:, 8:], atol=1e-6), "window [8, 12) is the same window"


def test_a_language_model_context_continues_the_tiling_from_its_first_counted_token():
    """A language model's contexts begin with a BOS (special, stored position 0) whatever document
    follows. A document that runs from one context into the next keeps its tiling there: the token at
    document position p sits in window p // T, read from the first counted token, not from the BOS."""
    sae = _sae()
    T_ctx = 8
    x = torch.randn(1, 2 * (T_ctx - 1), D, generator=torch.Generator().manual_seed(0))  # one document, split below
    doc_position = torch.arange(2 * (T_ctx - 1))
    contexts, layouts = [], []
    for lo in (0, T_ctx - 1):  # context 1: BOS + positions 0..6; context 2: BOS + positions 7..13 (mid-document)
        body = slice(lo, lo + T_ctx - 1)
        xs = torch.cat([torch.zeros(1, 1, D), x[:, body]], 1)
        doc_start = torch.zeros(1, T_ctx, dtype=torch.bool)
        doc_start[0, 1] = lo == 0
        position = torch.cat([torch.zeros(1), doc_position[body].float()])[None].long()
        mask = torch.ones(1, T_ctx, dtype=torch.bool)
        mask[0, 0] = False  # the BOS
        contexts.append((xs, mask, doc_start, position))
        layouts.append(window_layout(doc_start, position, 4, mask))
    slots = torch.cat([layouts[0].slot_BT[0, 1:], layouts[1].slot_BT[0, 1:]])
    assert slots.tolist() == (doc_position % 4).tolist(), "every token sits at its document position's slot"
    second = layouts[1]
    rows = second.row_BT[0, 1:]
    blocks = doc_position[T_ctx - 1:] // 4  # positions 7..13: windows 1 (7), 2 (8..11), 3 (12, 13)
    assert all((rows[i] == rows[j]) == (blocks[i] == blocks[j]) for i in range(len(rows)) for j in range(len(rows)))
    out = sae(*contexts[1])
    assert out.extras["slot_BT"][0, 1:].tolist() == (doc_position[T_ctx - 1:] % 4).tolist()


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
@torch.no_grad()
def test_outputs_at_a_token_depend_on_its_own_window_only(activation):
    sae = _sae(activation).eval()  # batchtopk: the inference threshold (training couples the batch)
    x, d, g = _data(starts=(0, 2, 5, 11))
    assert earlier_document_influence(sae, x, d, g) <= 1e-6
    a = sae(x, None, d)

    def changed(positions, at):
        x2 = x.clone()
        x2[:, positions] = torch.randn(x2[:, positions].shape, generator=g) * 3
        b = sae(x2, None, d)
        return max(float((a.recon[:, at] - b.recon[:, at]).abs().max()), float((a.features[:, at] - b.features[:, at]).abs().max()))

    assert changed(list(range(11, 16)), at=list(range(0, 11))) <= 1e-6, "a later document is invisible"
    assert changed([2, 3], at=[0, 1]) <= 1e-6 and changed([0, 1], at=[2, 3, 4]) <= 1e-6, "short documents share no window"
    assert changed([9, 10], at=[5, 6, 7, 8]) <= 1e-6, "the document's next window is invisible"
    assert changed([5], at=[9, 10]) <= 1e-6, "the document's previous window is invisible"
    assert changed([8], at=[5]) > 1e-3, "a later token of the window is read (the crosscoder is not causal)"
    assert changed([5], at=[8]) > 1e-3


def test_topk_spends_k_per_counted_token_of_each_window():
    sae = _sae("topk", k=2)
    x, d, _ = _data()
    mask = ~d  # document starts are special tokens (BOS): they neither count nor get a budget
    out = sae(x, mask, d)
    e = out.extras
    assert torch.equal((e["window_code"] != 0).sum(-1), 2 * e["window_tokens"].long())
    stats = sae.output_statistics()
    stats.update(out, mask)
    r = stats.result()
    assert r["l0_sparse"] == pytest.approx(2.0)
    assert r["l0_token_view"] == pytest.approx(float((out.features[mask] != 0).sum(-1).float().mean()))
    assert r["l0_per_window"] > r["l0_sparse"]


def test_special_tokens_are_not_encoded():
    sae = _sae()
    x, d, g = _data()
    mask = ~d
    a = sae(x, mask, d)
    x2 = torch.where(d.unsqueeze(-1), torch.randn(x.shape, generator=g) * 10, x)
    b = sae(x2, mask, d)
    assert torch.allclose(a.recon[mask], b.recon[mask], atol=1e-6)


def test_batchtopk_spends_k_per_counted_token_over_the_batch_and_calibrates():
    sae = _sae("batchtopk", k=2).train()
    x, d, _ = _data(B=8, seed=3)
    mask = ~d
    out = sae(x, mask, d)
    assert int((out.extras["window_code"] != 0).sum()) == 2 * int(mask.sum())

    class Batch:
        acts_BTD, mask_BT, doc_start_BT, position_BT = x, mask, d, None

    sae.calibrate([Batch])
    sae.eval()
    stats = sae.output_statistics()
    stats.update(sae(x, mask, d), mask)
    assert stats.result()["l0_sparse"] == pytest.approx(2.0, rel=0.25)


def test_per_token_features_rebuild_the_reconstruction():
    sae = _sae()
    x, d, _ = _data()
    out = sae(x, None, d)
    U = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)  # (F, T, D) unit directions per position
    slot = out.extras["slot_BT"]
    rebuilt = torch.einsum("btf,btfd->btd", out.features, U.permute(1, 0, 2)[slot]) + sae.b_dec[slot]
    assert torch.allclose(out.recon_normalized, rebuilt, atol=1e-5)
    assert sae.decoder_directions().shape == (32, D)


def test_decoder_rows_have_unit_norm_over_positions_and_dimensions():
    sae = _sae()
    x, d, _ = _data()
    mask = torch.ones(3, 16, dtype=torch.bool)
    sae.loss_terms(sae(x, mask, d), LossContext(mask, d))["recon"].backward()
    sae.remove_parallel_decoder_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum((1, 2)).abs().max() < 1e-5
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.flatten(1).norm(dim=-1), torch.ones(32), atol=1e-5)


def test_aux_k_revives_dead_latents_from_the_window_residual():
    sae = _sae()
    x, d, _ = _data()
    mask = ~d
    out = sae(x, mask, d)
    dead = torch.zeros(32, dtype=torch.bool)
    dead[:8] = True
    terms = sae.loss_terms(out, LossContext(mask, d, dead_F=dead))
    assert terms["aux_k"].item() > 0
    sae.zero_grad()
    terms["aux_k"].backward()
    assert sae.W_dec.grad[:8].abs().sum() > 0 and sae.W_dec.grad[8:].abs().sum() == 0


def test_saved_and_loaded_sae_gives_the_same_outputs(tmp_path):
    sae = _sae("batchtopk").eval()
    with torch.no_grad():
        sae.activation.threshold.fill_(0.2)
    x, d, _ = _data()
    assert_round_trip(sae, tmp_path, x, d)



def test_trains_and_reports_per_token_numbers_in_the_eval(harvested):
    cfg, store = harvested
    train_variant(cfg, "crosscoder", store, cfg.run_dir, progress=False)
    r = evaluate_variant(cfg, "crosscoder", store, cfg.run_dir, progress=False)
    vm, k, T = r["variant_metrics"], cfg.variants["crosscoder"].k, cfg.variants["crosscoder"].options["T"]
    assert r["health"]["healthy"], r["health"]
    assert vm["l0_sparse"] == pytest.approx(k, rel=0.25), "the budget per token is the baseline's k"
    assert vm["l0_token_view"] == pytest.approx(r["eval_result_metrics"]["sparsity"]["l0"])
    assert k < vm["l0_token_view"] <= k * T + 1e-9
    assert "ground_truth" in r and 0 < r["ground_truth"]["overall"]["mmcs"] <= 1


@torch.no_grad()
def test_the_model_splice_reconstruction_never_reads_a_later_token():
    from tests.variants.causality import past_influence

    sae = _sae().eval()
    x, d, g = _data(starts=(0, 5, 11))
    mask = torch.ones(d.shape, dtype=torch.bool)

    class Splice(torch.nn.Module):  # what the model splice calls, seen as an SAE by the checks
        def forward(self, x_BTD, mask_BT, doc_start_BT):
            r = sae.causal_reconstruction(x_BTD, mask_BT, doc_start_BT)
            return type("Out", (), {"features": r, "recon": r, "pre_acts": r})()

    from tests.variants.causality import future_influence

    for t in (5, 7, 12):
        assert future_influence(Splice(), x, d, t, g) <= 1e-6
    assert past_influence(Splice(), x, d, 8, g) > 1e-3, "a token still reads the earlier slots of its window"
    # at a window's last slot (a full window) it is the ordinary reconstruction
    full, causal = sae(x, mask, d).recon, sae.causal_reconstruction(x, mask, d)
    assert torch.allclose(causal[:, 8], full[:, 8], atol=1e-6) and torch.allclose(causal[:, 14], full[:, 14], atol=1e-6)
    assert float((causal[:, 5] - full[:, 5]).abs().max()) > 1e-3, "the window's first slot reads itself alone"
