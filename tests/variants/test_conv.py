"""Conv: a causal depthwise convolution over the buffer of earlier tokens of the same document, and a
consistency term on codes pooled at several scales that never pools or compares across documents."""

from __future__ import annotations

import pytest
import torch

from tests.variants.causality import assert_reads_only_its_documents_past, token_influence
from tsae_core import losses
from tsae_core.sae import SAE, LossContext, SAEConfig, SAEOutput
from tsae_core.sequence import document_ids, shift_within_document
from tsae_core.variants.conv import adjacent_change, causal_depthwise_conv, pool_blocks, pooled_change
from tsae_core.variants.registry import build_sae


def _sae(activation="topk", **options) -> SAE:
    sae = build_sae(SAEConfig(architecture="conv", activation=activation, d_in=8, d_sae=32,
                              k=None if activation == "relu" else 3, unit_norm_decoder=activation != "relu",
                              options={"buffer": 4, **options}))
    gen = torch.Generator().manual_seed(1)
    sae.reset_parameters(gen)
    with torch.no_grad():  # a trained-looking kernel: every lag in use
        sae.kernel_LF.copy_(torch.randn(sae.kernel_LF.shape, generator=gen))
    return sae


def _data(T=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, T, 8, generator=g)
    d = torch.zeros(3, T, dtype=torch.bool)
    d[:, 0] = True
    d[0, 5] = d[1, 9] = d[2, 3] = d[2, 12] = True
    return x, d, g


def _one_doc(T=16):
    d = torch.zeros(3, T, dtype=torch.bool)
    d[:, 0] = True
    return d



@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu", "batchtopk"])
def test_no_future_no_earlier_document_but_the_past(activation):
    x, d, g = _data()
    sae = _sae(activation).eval()  # batchtopk picks codes over the whole batch while training
    assert_reads_only_its_documents_past(sae, x, d, t=7, generator=g)


def test_reads_exactly_the_buffer():
    x, _, _ = _data()
    sae = _sae(buffer=4)
    assert token_influence(sae, x, _one_doc(), source=10 - 3, target=10) > 1e-3
    assert token_influence(sae, x, _one_doc(), source=10 - 4, target=10) == 0.0
    assert token_influence(_sae(buffer=1), x, _one_doc(), source=9, target=10) == 0.0, "buffer 1 is token-wise"


def test_special_tokens_are_not_read():
    x, _, _ = _data()
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[:, 8] = False
    sae = _sae()
    assert token_influence(sae, x, _one_doc(), source=8, target=10, mask=mask) == 0.0
    assert token_influence(sae, x, _one_doc(), source=8, target=10) > 1e-3


def test_convolution_equals_the_sum_of_shifts_with_gradients():
    g = torch.Generator().manual_seed(2)
    p1 = torch.randn(3, 30, 7, generator=g).requires_grad_()
    k1 = torch.randn(5, 7, generator=g).requires_grad_()
    doc_start = torch.rand(3, 30, generator=g) < 0.2
    p2, k2 = p1.detach().clone().requires_grad_(), k1.detach().clone().requires_grad_()
    got = causal_depthwise_conv(p1, k1, doc_start)
    want = sum(k2[lag - 1] * shift_within_document(p2, lag, doc_start) for lag in range(1, 6))
    assert torch.allclose(got, want, atol=1e-5)
    w = torch.randn(got.shape, generator=g)
    (got * w).sum().backward()
    (want * w).sum().backward()
    assert torch.allclose(p1.grad, p2.grad, atol=1e-5) and torch.allclose(k1.grad, k2.grad, atol=1e-4)


def test_a_fresh_sae_is_the_token_wise_sae():
    cfg = SAEConfig(architecture="conv", activation="topk", d_in=8, d_sae=32, k=3)
    sae, base = build_sae(cfg), SAE(SAEConfig(architecture="standard", activation="topk", d_in=8, d_sae=32, k=3))
    sae.reset_parameters(torch.Generator().manual_seed(3))
    base.load_state_dict({k: v for k, v in sae.state_dict().items() if k in base.state_dict()})
    x, d, _ = _data()
    assert torch.allclose(sae(x, None, d).pre_acts, base(x, None, d).pre_acts, atol=1e-6)


def test_pooled_blocks_never_mix_documents():
    f = torch.zeros(1, 8, 2)
    f[0, :5, 0] = 1.0  # document 1: tokens 0..4, latent 0
    f[0, 5:, 1] = 3.0  # document 2: tokens 5..7, latent 1
    d = torch.zeros(1, 8, dtype=torch.bool)
    d[0, 0] = d[0, 5] = True
    pooled, starts, counted = pool_blocks(f, d, torch.ones(1, 8, dtype=torch.bool), size=4)
    assert torch.allclose(pooled[0, 1], torch.tensor([0.0, 3.0])), "block 4..7 pools only document 2's tokens"
    assert starts.tolist() == [[True, True]] and counted.all()
    # constant within each document: no change anywhere, although the pooled codes jump between documents
    assert pooled_change(f, d, torch.ones(1, 8, dtype=torch.bool), size=2).item() == pytest.approx(0.0, abs=1e-7)
    one_doc = torch.zeros(1, 8, dtype=torch.bool)
    one_doc[0, 0] = True
    assert pooled_change(f, one_doc, torch.ones(1, 8, dtype=torch.bool), size=2).item() > 0.3


@pytest.mark.parametrize("size", [1, 2, 3, 8])
def test_pooled_means_from_running_sums_equal_the_direct_weighted_means(size):
    g = torch.Generator().manual_seed(size)
    f = torch.relu(torch.randn(3, 29, 6, generator=g))
    doc_start, mask = torch.rand(3, 29, generator=g) < 0.2, torch.rand(3, 29, generator=g) > 0.2
    n = 29 // size
    doc = document_ids(doc_start)[:, : n * size].reshape(3, n, size)
    w = (mask[:, : n * size].reshape(3, n, size) & (doc == doc[..., -1:])).float()
    want = (f[:, : n * size].reshape(3, n, size, 6) * w[..., None]).sum(2) / w.sum(-1).clamp_min(1)[..., None]
    pooled, _, counted = pool_blocks(f, doc_start, mask, size)
    assert torch.allclose(pooled, want, atol=1e-5) and torch.equal(counted, w.sum(-1) > 0)


def test_dense_adjacent_change_equals_the_shared_consistency_loss_with_gradients():
    g = torch.Generator().manual_seed(4)
    pooled = torch.relu(torch.randn(3, 12, 20, generator=g) - 0.5)
    starts, counted = torch.rand(3, 12, generator=g) < 0.2, torch.rand(3, 12, generator=g) > 0.1
    p1, p2 = pooled.clone().requires_grad_(), pooled.clone().requires_grad_()
    got, want = adjacent_change(p1, starts, counted), losses.temporal_consistency(p2, starts, counted, window=1)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    got.backward()
    want.backward()
    assert torch.allclose(p1.grad, p2.grad, atol=1e-6)


def test_pooling_forgives_flicker_below_its_scale():
    f = torch.zeros(1, 16, 2)
    f[0, ::2, 0] = 1.0  # latent 0 fires every other token
    d = torch.zeros(1, 16, dtype=torch.bool)
    d[0, 0] = True
    mask = torch.ones(1, 16, dtype=torch.bool)
    assert pooled_change(f, d, mask, size=1).item() == pytest.approx(1.0)
    assert pooled_change(f, d, mask, size=2).item() == pytest.approx(0.0, abs=1e-7)
    assert pooled_change(f, d, mask, size=4).item() == pytest.approx(0.0, abs=1e-7)


def test_hierarchy_term_is_the_mean_over_scales_on_the_reconstruction_scale():
    sae = _sae(scales=[1, 2], coefficient=0.5)
    f = torch.zeros(1, 16, 32)
    f[0, ::2, 0] = 1.0
    x = torch.zeros(1, 16, 8)
    d = torch.zeros(1, 16, dtype=torch.bool)
    d[0, 0] = True
    terms = sae.loss_terms(SAEOutput(f, x, f, x, x), LossContext(torch.ones(1, 16, dtype=torch.bool), d))
    assert terms["hierarchy"].item() == pytest.approx(0.5 * 8 * (1.0 + 0.0) / 2)
    assert "hierarchy" not in _sae(coefficient=0.0).loss_terms(SAEOutput(f, x, f, x, x), LossContext(torch.ones(1, 16, dtype=torch.bool), d))



def test_trains_loads_and_evaluates_on_sequences(harvested):
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.loading import load_sae
    from tsae_core.train import train_variant

    cfg, store = harvested
    train_variant(cfg, "conv", store, cfg.run_dir, progress=False)
    result = evaluate_variant(cfg, "conv", store, cfg.run_dir, progress=False)
    assert result["health"]["healthy"], result["health"]
    assert result["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] > 0.5
    sae = load_sae(cfg.run_dir / "saes" / "conv")
    assert float(sae.kernel_LF.detach().abs().max()) > 0, "the kernel learned something"
    b = next(iter(store.split("eval").batches(batch_sequences=4)))
    out = sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT)
    assert out.features.shape[:2] == b.acts_BTD.shape[:2] and torch.isfinite(out.recon).all()
