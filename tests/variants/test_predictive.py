"""Predictive SAE: the prediction reads only the past of its document, only the novel code is sparse,
and a collapse of either part is reported."""

from __future__ import annotations

import pytest
import torch

from tests.variants.causality import assert_round_trip, earlier_document_influence, future_influence, past_influence
from tsae_core.comparison import compare_variants
from tsae_core.evals.core import evaluate_variant
from tsae_core.sae import LossContext, SAEConfig
from tsae_core.train import train_variant
from tsae_core.variants.predictive import PredictionCollapseWarning, collapse_verdict
from tsae_core.variants.registry import build_sae


def _sae(activation="topk", k=3, **options):
    options = {"window": 4, "heads": 2, **options}
    return build_sae(SAEConfig(architecture="predictive", activation=activation, d_in=8, d_sae=32, k=k, options=options))


def _data(B=3, T=12, starts=(0, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 8, generator=g)
    d = torch.zeros(B, T, dtype=torch.bool)
    d[:, list(starts)] = True
    return x, d, g


@pytest.mark.parametrize("activation", ["topk", "batchtopk"])
def test_output_at_t_reads_neither_the_future_nor_an_earlier_document_but_reads_the_past(activation):
    sae = _sae(activation).eval()  # batchtopk: the inference threshold (training couples the batch)
    x, d, g = _data()
    for t in (2, 5, 6, 9):
        assert future_influence(sae, x, d, t, g) <= 1e-6
    assert earlier_document_influence(sae, x, d, g) <= 1e-6
    assert past_influence(sae, x, d, t=9, generator=g) > 1e-2
    assert past_influence(sae, x, d, t=6, generator=g) <= 1e-6, "a document's first token has no past"


def test_the_prediction_reads_at_most_window_tokens_back():
    sae = _sae(window=3).eval()
    x, d, g = _data(starts=(0,))
    t = 9
    a = sae(x, None, d)
    far = x.clone()
    far[:, : t - 3] = torch.randn(far[:, : t - 3].shape, generator=g) * 3  # 4 and more tokens back
    near = x.clone()
    near[:, t - 3] = torch.randn(near[:, t - 3].shape, generator=g) * 3  # exactly `window` back
    assert (sae(far, None, d).recon[:, t] - a.recon[:, t]).abs().max() <= 1e-6
    assert (sae(near, None, d).recon[:, t] - a.recon[:, t]).abs().max() > 1e-2


def test_special_tokens_are_not_read():
    sae = _sae().eval()
    x, d, g = _data()
    mask = ~d  # document starts are special tokens (BOS)
    x2 = torch.where(d.unsqueeze(-1), torch.randn(x.shape, generator=g) * 10, x)
    a, b = sae(x, mask, d), sae(x2, mask, d)
    assert (a.recon - b.recon)[mask].abs().max() <= 1e-6
    assert (sae(x, None, d).recon - a.recon)[mask].abs().max() > 1e-3, "without a mask every token is read"


@pytest.mark.filterwarnings("ignore::tsae_core.variants.predictive.PredictionCollapseWarning")
def test_only_the_novel_code_is_sparse_and_the_reconstruction_uses_both():
    sae = _sae("topk", k=3)
    x, d, _ = _data()
    mask = torch.ones(3, 12, dtype=torch.bool)
    out = sae(x, mask, d)
    novel, pred = out.features, out.extras["predicted_code"]
    assert bool(((novel != 0).sum(-1) == 3).all()), "the novel code holds exactly k latents per token"
    assert float((pred != 0).sum(-1).float().mean()) > 3 * 3, "the predicted code is dense, and unpenalised"
    recon_n = (novel + pred) @ sae.W_dec + sae.b_dec
    assert torch.allclose(out.recon_normalized, recon_n, atol=1e-5)
    terms = sae.loss_terms(out, LossContext(mask, d))
    assert set(terms) == {"recon"}, "no sparsity term on the predicted code"
    stats = sae.output_statistics()
    stats.update(out, mask)
    r = stats.result()
    assert r["l0_sparse"] == pytest.approx(3.0) and r["l0_novel"] == pytest.approx(3.0)
    assert r["l0_whole"] > 3 * r["l0_sparse"]


def test_batchtopk_novel_code_spends_k_per_counted_token():
    sae = _sae("batchtopk", k=3).train()
    x, d, _ = _data()
    mask = torch.rand(3, 12, generator=torch.Generator().manual_seed(1)) > 0.2
    out = sae(x, mask, d)
    assert int((out.features != 0).sum()) == 3 * int(mask.sum())


def test_the_prediction_is_the_projection_of_x_on_the_predicted_direction():
    sae = _sae()
    x, d, _ = _data()
    out = sae(x, None, d)
    xc = out.x_normalized - sae.b_dec
    pred = out.extras["predicted_recon"]
    residual_dot_pred = ((xc - pred) * pred).sum(-1)
    assert residual_dot_pred.abs().max() < 1e-3 * xc.pow(2).sum(-1).max()
    assert (xc - pred).pow(2).sum(-1).le(xc.pow(2).sum(-1) + 1e-4).all(), "the projection never adds error"


def test_asymmetric_loss_asks_the_prediction_alone_to_reconstruct_x():
    x, d, _ = _data()
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[:, 0] = False
    sae = _sae(prediction_coefficient=0.5)
    out = sae(x, mask, d)
    terms = sae.loss_terms(out, LossContext(mask, d))
    err = (out.x_normalized - out.extras["predicted_recon"] - sae.b_dec).pow(2).sum(-1)
    assert terms["prediction"].item() == pytest.approx(0.5 * err[mask].mean().item(), rel=1e-5)
    terms["prediction"].backward()
    assert sae.predictor.W_o.grad.abs().sum() > 0, "the asymmetric term trains the predictor"


def test_a_silent_predictor_is_reported_as_the_novel_code_taking_over():
    sae = _sae()
    with torch.no_grad():
        sae.predictor.W_o.zero_()
        sae.predictor.b_o.zero_()
    x, d, _ = _data()
    mask = torch.ones(3, 12, dtype=torch.bool)
    stats = sae.output_statistics()
    stats.update(sae(x, mask, d), mask)
    with pytest.warns(PredictionCollapseWarning, match="novel takes over"):
        r = stats.result()
    assert r["prediction_share"] == 0.0 and r["collapse"] == "novel_takes_over"
    assert collapse_verdict(0.5, 0.05) == "none"
    assert collapse_verdict(0.97, 0.05) == "prediction_takes_over"
    assert collapse_verdict(float("nan"), 0.05) == "novel_takes_over"


def test_saved_and_loaded_sae_gives_the_same_outputs(tmp_path):
    sae = _sae("batchtopk").eval()
    with torch.no_grad():
        sae.activation.threshold.fill_(0.3)
    x, d, _ = _data()
    assert_round_trip(sae, tmp_path, x, d)



def test_trains_and_reports_its_numbers_in_the_eval(harvested):
    cfg, store = harvested
    train_variant(cfg, "predictive", store, cfg.run_dir, progress=False)
    r = evaluate_variant(cfg, "predictive", store, cfg.run_dir, progress=False)
    vm = r["variant_metrics"]
    assert r["health"]["healthy"], r["health"]
    assert vm["l0_sparse"] == pytest.approx(r["eval_result_metrics"]["sparsity"]["l0"])
    assert vm["l0_whole"] > vm["l0_sparse"] and 0 < vm["prediction_share"] < 1 and vm["collapse"] in ("none", "novel_takes_over", "prediction_takes_over")
    sparsity = r["eval_result_metrics"]["sparsity"]
    assert sparsity["l0_reconstruction"] == pytest.approx(vm["l0_whole"]), "a token's reconstruction reads the whole code"
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)  # skipped where another test trained it
    topk = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    l0 = next(row for row in compare_variants({"predictive": r, "topk": topk}) if row["metric"] == "l0")
    assert l0["baseline"] == "topk" and l0["verdict"].startswith("not matched: a token's reconstruction reads"), l0["verdict"]
