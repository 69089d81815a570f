"""Relational: position embeddings and local attention over earlier tokens of the same document only,
a window that grows with the training step, and a start that equals the token-wise SAE."""

from __future__ import annotations

import functools

import pytest
import torch

from tests.variants.causality import assert_reads_only_its_documents_past, token_influence
from tsae_core.loading import load_sae
from tsae_core.metrics.position import position_bins
from tsae_core.sae import SAE, LossContext, SAEConfig, save_sae
from tsae_core.sequence import causal_window_mask
from tsae_core.variants.registry import build_sae
from tsae_core.variants.relational import local_linear_attention


def _sae(activation="topk", **options) -> SAE:
    options = {"window": 4, "heads": 2, "head_dim": 4, "curriculum_steps": 0, "max_position": 16, **options}
    sae = build_sae(SAEConfig(architecture="relational", activation=activation, d_in=8, d_sae=32,
                              k=None if activation == "relu" else 3, unit_norm_decoder=activation != "relu", options=options))
    gen = torch.Generator().manual_seed(1)
    sae.reset_parameters(gen)
    with torch.no_grad():  # a trained-looking SAE: every temporal path switched on
        if sae.options.attention:
            sae.context_gain.copy_(torch.rand(32, generator=gen) + 0.5)
        if sae.options.positions:
            sae.position_table.copy_(torch.randn(sae.position_table.shape, generator=gen))
    return sae


def _data(T=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, T, 8, generator=g)
    d = torch.zeros(3, T, dtype=torch.bool)
    d[:, 0] = True
    d[0, 5] = d[1, 9] = d[2, 3] = d[2, 12] = True
    return x, d, g



@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu", "batchtopk"])
def test_no_future_no_earlier_document_but_the_past(activation):
    x, d, g = _data()
    sae = _sae(activation).eval()  # batchtopk picks codes over the whole batch while training
    assert_reads_only_its_documents_past(sae, x, d, t=7, generator=g)


def test_reads_exactly_the_previous_window_tokens():
    x, d, _ = _data()
    d = torch.zeros_like(d)
    d[:, 0] = True
    sae = _sae(window=4).eval()
    assert token_influence(sae, x, d, source=10 - 4, target=10) > 1e-3
    assert token_influence(sae, x, d, source=10 - 5, target=10) == 0.0
    assert token_influence(sae, x, d, source=10, target=10) > 1e-3, "the token itself"


def test_curriculum_window_at_a_given_step_and_full_window_at_inference():
    sae = _sae(window=9, curriculum_steps=100)
    assert [sae.window_at(s) for s in (0, 25, 50, 99, 100, 5000)] == [1, 3, 5, 8, 9, 9]
    x, d, _ = _data(T=20)
    d = torch.zeros_like(d)
    d[:, 0] = True
    ctx = LossContext(torch.ones(3, 20, dtype=torch.bool), d, step=49)
    sae.train().after_step(None, ctx)  # 50 steps done: window 5
    assert sae.current_window == 5
    assert token_influence(sae, x, d, source=15 - 5, target=15) > 1e-3
    assert token_influence(sae, x, d, source=15 - 6, target=15) == 0.0
    sae.eval()
    assert sae.current_window == 9 and token_influence(sae, x, d, source=15 - 9, target=15) > 1e-3


def test_curriculum_state_travels_with_the_weights(tmp_path):
    sae = _sae(window=9, curriculum_steps=100)
    sae.after_step(None, LossContext(torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool), step=29))
    resumed = _sae(window=9, curriculum_steps=100)
    resumed.load_state_dict(sae.state_dict())  # what a checkpoint restores
    assert int(resumed.steps_done) == 30 and resumed.train().current_window == sae.window_at(30) == 3
    save_sae(sae, tmp_path)
    loaded = load_sae(tmp_path)
    assert int(loaded.steps_done) == 30 and loaded.current_window == 9, "inference uses the full window"
    x, d, _ = _data()
    assert torch.allclose(loaded(x, None, d).features, sae.eval()(x, None, d).features)


def test_special_tokens_are_not_read():
    x, d, _ = _data()
    d = torch.zeros_like(d)
    d[:, 0] = True
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[:, 8] = False  # e.g. an EOS inside the window of token 10
    sae = _sae().eval()
    assert token_influence(sae, x, d, source=8, target=10, mask=mask) == 0.0
    assert token_influence(sae, x, d, source=8, target=10) > 1e-3


def test_a_fresh_sae_is_the_token_wise_sae():
    cfg = SAEConfig(architecture="relational", activation="topk", d_in=8, d_sae=32, k=3, options={"heads": 2})
    sae, base = build_sae(cfg), SAE(SAEConfig(architecture="standard", activation="topk", d_in=8, d_sae=32, k=3))
    sae.reset_parameters(torch.Generator().manual_seed(3))
    base.load_state_dict({k: v for k, v in sae.state_dict().items() if k in base.state_dict()})
    x, d, _ = _data()
    assert torch.equal(sae(x, None, d).pre_acts, base(x, None, d).pre_acts)


def test_position_rows_come_from_the_document_position_binned_and_are_l1_penalised():
    sae = _sae(max_position=4)
    with torch.no_grad():
        sae.context_gain.zero_()
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    d = torch.zeros(1, 8, dtype=torch.bool)
    d[0, 0] = True
    no_table = _sae(max_position=4)
    with torch.no_grad():
        no_table.context_gain.zero_()
        no_table.position_table.zero_()
    position = torch.tensor([[7, 8, 9, 0, 1, 2, 3, 4]])  # the sequence begins inside a document
    delta = sae(x, None, d, position).pre_acts - no_table(x, None, d, position).pre_acts
    # delta is a difference of pre-activations of order 1: equal to the table row up to float32 rounding
    same = functools.partial(torch.allclose, atol=1e-5)
    assert same(delta[0, 3], sae.position_table[0]) and same(delta[0, 5], sae.position_table[2])
    assert sae.position_table.shape[0] == 4, "positions 0..3 have a bin each, the last open-ended"
    assert same(delta[0, 0], sae.position_table[3]) and same(delta[0, 7], sae.position_table[3]), "last bin"
    out = sae(x, None, d, position)
    ctx = LossContext(torch.ones(1, 8, dtype=torch.bool), d)
    want = 0.01 * sae.position_table.abs().sum(-1).mean()
    assert sae.loss_terms(out, ctx)["position_l1"].item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("T, window", [(20, 3), (37, 16), (50, 20), (128, 8), (5, 1)])
def test_banded_attention_equals_the_masked_full_form(T, window):
    g = torch.Generator().manual_seed(T)
    q, k = torch.rand(2, 3, T, 4, generator=g) + 0.1, torch.rand(2, 3, T, 4, generator=g) + 0.1
    v = torch.randn(2, 3, T, 5, generator=g)
    doc_start, readable = torch.rand(2, T, generator=g) < 0.15, torch.rand(2, T, generator=g) > 0.2
    allowed = causal_window_mask(doc_start, window) & readable[:, None, :]
    scores = (q @ k.transpose(-1, -2)) * allowed[:, None]
    want = scores / scores.sum(-1, keepdim=True).clamp_min(1e-6) @ v
    assert torch.allclose(local_linear_attention(q, k, v, doc_start, readable, window), want, atol=1e-6)


def test_jumprelu_thresholds_start_from_token_wise_pre_activations():
    sae = _sae("jumprelu")
    sample = torch.randn(500, 8)
    sae.init_from_sample(sample)  # unrelated tokens: none reads another
    base_pre = (sample - sae.b_dec) @ sae.W_enc + sae.b_enc + sae.position_table[0]
    theta = base_pre.kthvalue(round(500 * (1 - 3 / 32)), dim=0).values.clamp_min(1e-3)
    assert torch.allclose(sae.activation.threshold, theta, rtol=1e-5)



def test_trains_loads_and_evaluates_on_sequences(harvested):
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.train import train_variant

    cfg, store = harvested
    train_variant(cfg, "relational", store, cfg.run_dir, progress=False)
    result = evaluate_variant(cfg, "relational", store, cfg.run_dir, progress=False)
    assert result["health"]["healthy"], result["health"]
    assert result["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] > 0.5
    sae = load_sae(cfg.run_dir / "saes" / "relational")
    assert int(sae.steps_done) == cfg.train.steps and result["geometry"]["curriculum_window_reached"] == 4
    b = next(iter(store.split("eval").batches(batch_sequences=4)))
    out = sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT)
    assert out.features.shape[:2] == b.acts_BTD.shape[:2] and torch.isfinite(out.recon).all()
    assert float((out.features[b.mask_BT] > 0).sum(-1).float().mean()) > 1.0


def test_positions_far_into_a_document_get_rows_of_their_own():
    """Language-model documents run for thousands of tokens: log-spaced bins tell position 300 from 3000
    (a table clipped at 128 gave both, and nearly every token, its last row)."""
    sae = _sae(max_position=4096)
    edges = sae.position_edges
    bins = position_bins(torch.tensor([[0, 15, 16, 128, 300, 3000]]), edges)[0].tolist()
    assert bins[:2] == [0, 15] and len(set(bins)) == 6, bins
    assert sae.position_table.shape[0] == len(edges) and edges[-1] < 4096


def test_attention_and_positions_off_is_the_token_wise_sae():
    sae = _sae(attention=False, positions=False)
    assert sae.linear_encoder and not hasattr(sae, "context_gain") and not hasattr(sae, "position_table")
    base = build_sae(SAEConfig(architecture="standard", activation="topk", d_in=8, d_sae=32, k=3))
    base.load_state_dict({k: v for k, v in sae.state_dict().items() if k in base.state_dict()})
    x = torch.randn(2, 8, 8)
    assert torch.equal(sae(x).features, base(x).features)
