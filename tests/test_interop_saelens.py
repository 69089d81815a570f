"""SAELens interop against the real library (skipped when `sae_lens` is not installed: `pip install -e ".[interop]"`):
SAELens's `load_from_disk` reads tsae's exports and computes what tsae computes, on random and on
trained SAEs, and SAELens SAEs written with `save_model` load in tsae and compute what SAELens does."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import ci_config
from tests.interop_cases import ACTIVATIONS, D_IN, D_SAE, K, max_rel_diff, random_sae, raw_activations
from tsae_core.loading import load_sae
from tsae_core.runner import main
from tsae_core.sae import SAE, save_sae

sae_lens = pytest.importorskip("sae_lens")

SAELENS_CLASS = {"relu": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "jumprelu": "JumpReLUSAE"}


def _load_saelens(directory):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an export that makes SAELens warn is a bug
        return sae_lens.SAE.load_from_disk(str(directory))


@torch.no_grad()
def _compare(tsae_sae, sl, x, what):
    """SAELens's encode/decode of raw activations against tsae's forward: the reconstructions within
    1e-5 of their scale, the same active latents, the same code values."""
    out = tsae_sae(x)
    codes = sl.encode(x)
    recon = sl.decode(codes)
    diff, rel = max_rel_diff(recon, out.recon)
    code_diff, _ = max_rel_diff(codes, out.features)
    print(f"\n{what}: recon max |diff| {diff:.3g} (relative {rel:.2g}, |recon| up to {float(out.recon.abs().max()):.3g}); "
          f"codes max |diff| {code_diff:.3g}; L0 {float((codes != 0).sum(-1).float().mean()):.3f}")
    assert rel <= 1e-5
    assert torch.equal(codes != 0, out.features != 0)  # the same latents, so the same L0 on every token
    assert torch.allclose(codes, out.features, rtol=1e-5, atol=1e-5 * float(out.features.abs().max()))
    assert torch.allclose(sl(x), recon)
    return out, recon


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_saelens_computes_what_tsae_computes_on_an_export(tmp_path, activation):
    save_sae(random_sae(activation), tmp_path / "sae")
    assert main(["export", str(tmp_path / "sae"), "--format", "saelens", str(tmp_path / "out")]) == 0
    sl = _load_saelens(tmp_path / "out")
    assert type(sl).__name__ == SAELENS_CLASS[activation]
    assert sl.cfg.metadata.hook_name == "blocks.6.hook_resid_post" and sl.cfg.metadata.context_size == 128
    assert sl.cfg.metadata.model_name == "gpt2" and sl.cfg.metadata.prepend_bos is True
    if activation == "topk":
        assert sl.cfg.k == K
    _compare(load_sae(tmp_path / "sae"), sl, raw_activations(), f"random {activation} SAE, tsae vs SAELens")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The CI experiment's base SAEs and two variants, trained on its harvested activations."""
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    cfg = ci_config(tmp_path_factory.mktemp("runs"))
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    for name in (*ACTIVATIONS, "orthogonal", "pooled"):
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
    return cfg, store


def _explained_variance(recon, x):
    return float(1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


def test_a_trained_run_exports_and_saelens_agrees(trained_run, tmp_path, capsys):
    cfg, store = trained_run
    out = tmp_path / "saelens"
    assert main(["export", str(cfg.run_dir), "--format", "saelens", str(out)]) == 1  # pooled is refused
    err = capsys.readouterr().err
    assert "pooled: architecture 'pooled'" in err and "exported: batchtopk, jumprelu, orthogonal, relu, topk" in err
    batch = next(store.split("eval").batches(batch_sequences=32))
    x = batch.acts_BTD[batch.mask_BT]  # raw activations of the counted tokens
    for name in (*ACTIVATIONS, "orthogonal"):
        tsae_sae = load_sae(cfg.run_dir / "saes" / name)
        assert tsae_sae.cfg.activation_scaling_factor != 1.0
        sl = _load_saelens(out / name)
        tsae_out, recon = _compare(tsae_sae, sl, x, f"trained {name}, tsae vs SAELens")
        ev_tsae, ev_sl = _explained_variance(tsae_out.recon, x), _explained_variance(recon, x)
        print(f"{name}: explained variance tsae {ev_tsae:.5f}, SAELens {ev_sl:.5f}")
        assert abs(ev_tsae - ev_sl) < 1e-5 and ev_sl > 0.5


def _saelens_sae(architecture, apply_b_dec_to_input=True, rescale=False):
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

    common = {"d_in": D_IN, "d_sae": D_SAE, "apply_b_dec_to_input": apply_b_dec_to_input}
    if architecture == "topk":
        sl = TopKSAE(TopKSAEConfig(k=K, rescale_acts_by_decoder_norm=rescale, **common))
    elif architecture == "jumprelu":
        sl = JumpReLUSAE(JumpReLUSAEConfig(**common))
    else:
        sl = StandardSAE(StandardSAEConfig(**common))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        sl.W_dec.mul_(1 + torch.rand(D_SAE, 1, generator=g))  # decoder rows of unequal norms
        sl.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=g))
        sl.b_dec.copy_(torch.randn(D_IN, generator=g))
        if architecture == "jumprelu":
            sl.threshold.copy_(0.5 * torch.rand(D_SAE, generator=g))
    sl.cfg.metadata.hook_name, sl.cfg.metadata.model_name = "blocks.2.hook_resid_post", "gpt2"
    return sl


@pytest.mark.parametrize("architecture,apply_b_dec_to_input,rescale", [
    ("standard", True, False), ("standard", False, False), ("topk", True, False), ("topk", True, True),
    ("topk", False, True), ("jumprelu", True, False), ("jumprelu", False, False),
])
def test_a_saelens_sae_loads_in_tsae(tmp_path, architecture, apply_b_dec_to_input, rescale):
    sl = _saelens_sae(architecture, apply_b_dec_to_input, rescale)
    sl.save_model(tmp_path / "sl")
    sae = load_sae(tmp_path / "sl")
    assert type(sae) is SAE and sae.cfg.activation_scaling_factor == 1.0
    assert sae.cfg.source["hook_name"] == "blocks.2.hook_resid_post" and sae.cfg.source["model"] == "gpt2"
    x = torch.randn(512, D_IN, generator=torch.Generator().manual_seed(8)) * 2 + 1
    _compare(sae, sl, x, f"SAELens {architecture} (apply_b_dec_to_input {apply_b_dec_to_input}, "
                         f"rescale_acts_by_decoder_norm {rescale}) loaded in tsae")


@pytest.mark.parametrize("activation", ["topk", "jumprelu"])
def test_saelens_convention_section_agrees_with_sae_lens_evals(tmp_path, activation):
    """The eval JSON's `saelens_convention` CE/KL numbers equal what `sae_lens.evals` computes (its
    `get_recons_loss`, special tokens as `ignore_tokens`, masked and averaged as its
    `get_downstream_reconstruction_metrics` does) on the same SAE, model and tokens, to 1e-4."""
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tsae_core.metrics.model import SAELENS_SECTION, ModelPreservation

    hook = "blocks.0.hook_resid_post"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=D_IN, n_ctx=24, d_head=4, n_heads=4, d_mlp=32,
                                                          d_vocab=40, act_fn="gelu", normalization_type="LN", seed=0)).eval()
    tsae_sae = random_sae(activation, scale=0.5)
    save_sae(tsae_sae, tmp_path / "sae")
    assert main(["export", str(tmp_path / "sae"), "--format", "saelens", str(tmp_path / "out")]) == 0
    sl = _load_saelens(tmp_path / "out")
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(2):
        tokens = torch.randint(1, 40, (3, 24), generator=g)
        tokens[:, 0] = 0  # BOS, and a document break inside one row
        tokens[1, 11] = 0
        batches.append(tokens)

    ours = ModelPreservation(model, hook)
    sums: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for tokens in batches:
            ours.update(tokens, tokens == 0, lambda x, special: tsae_sae(x).recon)
            for name, value in get_recons_loss(sl, model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True,
                                               ignore_tokens=[0], hook_name=hook).items():
                keep = tokens != 0
                sums.setdefault(name, []).append(value[keep if value.shape[1] == keep.shape[1] else keep[:, :-1]])
    theirs = {name: torch.cat(values).mean().item() for name, values in sums.items()}
    theirs["kl_div_score"] = (theirs["kl_div_with_ablation"] - theirs["kl_div_with_sae"]) / theirs["kl_div_with_ablation"]
    theirs["ce_loss_score"] = ((theirs["ce_loss_with_ablation"] - theirs["ce_loss_with_sae"])
                               / (theirs["ce_loss_with_ablation"] - theirs["ce_loss_without_sae"]))
    section = ours.result()[SAELENS_SECTION]
    print(f"\n{activation}: tsae {section}\nsae_lens {theirs}")
    for name, value in theirs.items():
        assert section[name] == pytest.approx(value, rel=1e-4), name
    assert 0 < section["ce_loss_score"] and section["kl_div_with_sae"] > 0
