"""ModelPreservation against direct computations on a tiny random transformer, edge cases and streaming."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from tsae_core.metrics.model import SAELENS_SECTION, ModelPreservation, counted_positions

HOOK = "blocks.0.hook_resid_post"  # layer 1 still attends after it: special positions matter downstream
V = 50


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # HookedTransformer is deprecated in transformer-lens 3.x
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=2,
            d_model=32,
            n_ctx=32,
            d_head=8,
            n_heads=4,
            d_mlp=64,
            d_vocab=V,
            act_fn="gelu",
            normalization_type="LN",
            seed=0,
        )
        m = HookedTransformer(cfg)
    return m.eval()


def _batch(B=3, T=16, seed=0):
    """Tokens (B, T) with a special BOS (id 0) at the start of each row and one mid-row document break."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, V, (B, T), generator=g)
    tokens[:, 0] = 0
    tokens[0, T // 2] = 0
    return tokens, tokens == 0


def _noisy(scale=0.5, seed=1):
    def reconstruct(x, special):
        g = torch.Generator().manual_seed(seed)
        return x + scale * torch.randn(x.shape, generator=g)

    return reconstruct


def _identity(x, special):
    return x.clone()


def _zero(x, special):
    return torch.zeros_like(x)


def _metrics(model, batches, reconstruct):
    m = ModelPreservation(model, HOOK)
    for tokens, special in batches:
        m.update(tokens, special, reconstruct)
    return m.result()


def _flat(res):
    """tsae's sections as one dict (the SAELens-convention section repeats their key names)."""
    return {k: v for name, section in res.items() if name != SAELENS_SECTION for k, v in section.items()}


def _direct(model, tokens, special, reconstruct):
    """CE and KL by hand: a manual hook, then log-softmax in float64 over the counted positions."""

    def patched(replace):
        def hook(act, hook):
            return torch.where(special[..., None], act, replace(act))

        return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)])

    with torch.no_grad():
        logits = {
            "clean": model(tokens),
            "sae": patched(lambda x: reconstruct(x, special)),
            "abl": patched(torch.zeros_like),
        }
    keep = ~special[:, :-1] & ~special[:, 1:]
    logp = {k: F.log_softmax(v[:, :-1].double(), -1)[keep] for k, v in logits.items()}  # (N, V)
    target = tokens[:, 1:][keep]
    ce = {k: -lp[torch.arange(len(target)), target].mean().item() for k, lp in logp.items()}
    kl = {k: (logp["clean"].exp() * (logp["clean"] - logp[k])).sum(-1).mean().item() for k in ("sae", "abl")}
    return ce, kl, int(keep.sum())


def test_metrics_match_a_direct_computation(model):
    tokens, special = _batch()
    rec = _noisy()
    res = _metrics(model, [(tokens, special)], rec)
    ce, kl, n = _direct(model, tokens, special, rec)
    perf, beh = res["model_performance_preservation"], res["model_behavior_preservation"]
    assert perf["ce_loss_without_sae"] == pytest.approx(ce["clean"], rel=1e-5)
    assert perf["ce_loss_with_sae"] == pytest.approx(ce["sae"], rel=1e-5)
    assert perf["ce_loss_with_ablation"] == pytest.approx(ce["abl"], rel=1e-5)
    assert perf["ce_loss_increase"] == pytest.approx(ce["sae"] - ce["clean"], rel=1e-4, abs=1e-6)
    assert perf["ce_loss_score"] == pytest.approx((ce["abl"] - ce["sae"]) / (ce["abl"] - ce["clean"]), rel=1e-4)
    assert beh["kl_div_with_sae"] == pytest.approx(kl["sae"], rel=1e-4)
    assert beh["kl_div_with_ablation"] == pytest.approx(kl["abl"], rel=1e-4)
    assert beh["kl_div_score"] == pytest.approx((kl["abl"] - kl["sae"]) / kl["abl"], rel=1e-4)
    assert res["model_token_stats"]["total_tokens_eval_model"] == n == 3 * 14 - 2
    # The noisy SAE is worse than clean and better than ablating: scores strictly inside (0, 1).
    assert 0 < perf["ce_loss_score"] < 1 and 0 < beh["kl_div_score"] < 1
    assert all(
        type(v) is float for s in ("model_behavior_preservation", "model_performance_preservation") for v in res[s].values()
    )


def test_perfect_reconstruction_scores_one(model):
    res = _flat(_metrics(model, [_batch()], _identity))
    assert res["ce_loss_with_sae"] == res["ce_loss_without_sae"]
    assert res["ce_loss_increase"] == 0.0
    assert res["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-9)
    assert res["ce_loss_score"] == pytest.approx(1.0) and res["kl_div_score"] == pytest.approx(1.0)


def test_zero_reconstruction_equals_ablation_and_scores_zero(model):
    res = _flat(_metrics(model, [_batch()], _zero))
    assert res["ce_loss_with_sae"] == res["ce_loss_with_ablation"]
    assert res["kl_div_with_sae"] == res["kl_div_with_ablation"] > 0
    assert res["ce_loss_score"] == 0.0 and res["kl_div_score"] == 0.0


def test_special_positions_keep_the_activation(model):
    """A reconstruction that is garbage only at special positions is as good as the identity."""

    def garbage_at_special(x, special):
        return torch.where(special[..., None], torch.full_like(x, 1e6), x)

    batch = _batch()
    assert _metrics(model, [batch], garbage_at_special) == _metrics(model, [batch], _identity)


def test_ablation_keeps_special_positions(model):
    """CE with ablation equals a run that zeroes the non-special positions only (not BOS)."""
    tokens, special = _batch()
    ce, _, _ = _direct(model, tokens, special, _zero)
    res = _flat(_metrics(model, [(tokens, special)], _noisy()))
    assert res["ce_loss_with_ablation"] == pytest.approx(ce["abl"], rel=1e-6)
    everywhere = torch.zeros_like(special)  # zeroing BOS too changes the ablated loss
    ce_all, _, _ = _direct(model, tokens, everywhere, _zero)
    assert not math.isclose(ce_all["abl"], ce["abl"], rel_tol=1e-4)


def test_pairs_with_special_tokens_are_excluded(model):
    """Which special token ends a row cannot matter: predicting it is never counted.

    The last token is seen by no position (attention is causal, and its own logits predict nothing), so
    it enters the loss only as the target of position T − 2. Swapping a special final token for another
    would change an unmasked CE, and must leave every metric unchanged.
    """
    tokens, special = _batch(B=2, T=12)
    tokens[1, -1], special[1, -1] = 0, True
    swapped = tokens.clone()
    swapped[1, -1] = 7  # another special id
    with torch.no_grad():
        lp = F.log_softmax(model(tokens)[1, -2].double(), -1)
    assert not math.isclose(lp[0].item(), lp[7].item(), rel_tol=1e-3)  # an unmasked CE would differ
    res = _metrics(model, [(tokens, special)], _noisy())
    swapped_res = _metrics(model, [(swapped, special)], _noisy())
    assert _flat(swapped_res) == _flat(res)
    assert res["model_token_stats"]["total_tokens_eval_model"] == 2 * 10 - 2 - 1
    # SAELens's convention counts a special target: there the swap shows
    assert swapped_res[SAELENS_SECTION]["ce_loss_without_sae"] != res[SAELENS_SECTION]["ce_loss_without_sae"]


def test_masking_matches_only_the_non_special_pairs(model):
    """Marking a token special drops both pairs it belongs to; CE over the rest is what is reported."""
    tokens, special = _batch(B=1, T=12)
    special_more = special.clone()
    special_more[0, 3] = True  # an ordinary token declared special: pairs (2, 3) and (3, 4) drop out
    clean = _flat(_metrics(model, [(tokens, special)], _identity))
    more = _flat(_metrics(model, [(tokens, special_more)], _identity))
    assert more["total_tokens_eval_model"] == clean["total_tokens_eval_model"] - 2
    with torch.no_grad():
        logp = F.log_softmax(model(tokens)[0, :-1].double(), -1)
    nll = -logp[torch.arange(11), tokens[0, 1:]]
    keep = counted_positions(special_more)[0]
    assert more["ce_loss_without_sae"] == pytest.approx(nll[keep].mean().item(), rel=1e-5)
    assert not math.isclose(nll[keep].mean().item(), nll.mean().item(), rel_tol=1e-3)  # unmasked would differ


def test_no_nan_when_softmax_underflows(model):
    huge = copy.deepcopy(model)
    with torch.no_grad():
        huge.unembed.W_U.mul_(1e4)
        tokens, special = _batch()
        assert (F.softmax(huge(tokens), -1) == 0).any()  # probabilities really underflow to 0
    res = _flat(_metrics(huge, [(tokens, special)], _noisy(scale=2.0)))
    for key, value in res.items():
        assert math.isfinite(value), key
    for key in ("kl_div_with_sae", "kl_div_with_ablation", "ce_loss_with_sae", "ce_loss_without_sae"):
        assert res[key] >= 0, key
    assert res["kl_div_with_ablation"] > 0


def test_streaming_over_batches_equals_one_batch(model):
    (t1, s1), (t2, s2) = _batch(B=2, seed=0), _batch(B=3, seed=1)
    both = _flat(_metrics(model, [(torch.cat([t1, t2]), torch.cat([s1, s2]))], lambda x, s: x + 0.3 * torch.sin(x)))
    streamed = _flat(_metrics(model, [(t1, s1), (t2, s2)], lambda x, s: x + 0.3 * torch.sin(x)))
    assert streamed == pytest.approx(both, rel=1e-6)
    assert streamed["total_tokens_eval_model"] == both["total_tokens_eval_model"]


def test_degenerate_denominators_give_nan_not_errors(model):
    m = ModelPreservation(model, HOOK)
    with pytest.raises(ValueError):
        m.result()
    tokens, _ = _batch(B=1)
    m.update(tokens, torch.ones_like(tokens, dtype=torch.bool), _noisy())  # nothing counted: ignored
    assert m.n_tokens == 0
    # The final LayerNorm scaled to 0: the hook cannot change the logits, so ablating costs nothing
    # (CE_abl = CE_clean, KL_abl = 0) and both scores are 0 / 0.
    blind = copy.deepcopy(model)
    with torch.no_grad():
        blind.ln_final.w.zero_()
    res = _flat(_metrics(blind, [(tokens, None)], _noisy()))
    assert res["kl_div_with_ablation"] == 0 and res["ce_loss_with_ablation"] == res["ce_loss_without_sae"]
    assert math.isnan(res["kl_div_score"]) and math.isnan(res["ce_loss_score"])


def test_reconstruction_of_the_wrong_shape_is_rejected(model):
    with pytest.raises(ValueError, match="does not match"):
        ModelPreservation(model, HOOK).update(*_batch(), lambda x, s: x[..., :4])


def _direct_saelens(model, tokens, special, reconstruct):
    """SAELens's convention by hand: the ablation zeroes every position; CE over positions whose input
    token is not special (special targets count), KL over every such position, the last one included."""
    def patched(replace, keep_special):
        def hook(act, hook):
            return torch.where(special[..., None], act, replace(act)) if keep_special else replace(act)

        return model.run_with_hooks(tokens, fwd_hooks=[(HOOK, hook)])

    with torch.no_grad():
        logits = {"clean": model(tokens), "sae": patched(lambda x: reconstruct(x, special), True),
                  "abl": patched(torch.zeros_like, False)}
    logp = {k: F.log_softmax(v.double(), -1) for k, v in logits.items()}
    ce_keep = ~special[:, :-1]
    ce = {k: -lp[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)[ce_keep].mean().item() for k, lp in logp.items()}
    kl = {k: (logp["clean"].exp() * (logp["clean"] - logp[k])).sum(-1)[~special].mean().item() for k in ("sae", "abl")}
    return ce, kl, int(ce_keep.sum()), int((~special).sum())


def test_saelens_convention_matches_a_direct_computation(model):
    """The `saelens_convention` section: its own ablation, positions and KL, checked by hand, and
    different from tsae's numbers where the conventions differ."""
    tokens, special = _batch()
    rec = _noisy()
    res = _metrics(model, [(tokens, special)], rec)
    sl = res[SAELENS_SECTION]
    ce, kl, n_ce, n_kl = _direct_saelens(model, tokens, special, rec)
    assert sl["total_tokens_ce"] == n_ce == 3 * 15 - 4 and sl["total_tokens_kl"] == n_kl == 3 * 16 - 4
    for key, value in (("ce_loss_without_sae", ce["clean"]), ("ce_loss_with_sae", ce["sae"]),
                       ("ce_loss_with_ablation", ce["abl"]), ("kl_div_with_sae", kl["sae"]),
                       ("kl_div_with_ablation", kl["abl"])):
        assert sl[key] == pytest.approx(value, rel=1e-5), key
    assert sl["ce_loss_score"] == pytest.approx((ce["abl"] - ce["sae"]) / (ce["abl"] - ce["clean"]), rel=1e-4)
    assert sl["kl_div_score"] == pytest.approx((kl["abl"] - kl["sae"]) / kl["abl"], rel=1e-4)
    ours = res["model_performance_preservation"]
    assert not math.isclose(sl["ce_loss_with_ablation"], ours["ce_loss_with_ablation"], rel_tol=1e-3)
    assert all(type(v) in (float, int) for v in sl.values())
