"""The SAE: its maths, decoder-norm handling, named output and files."""

import pytest
import torch
from safetensors.torch import load_file

from tsae_core import load_sae
from tsae_core.config import VariantConfig
from tsae_core.sae import geometric_median, save_sae
from tsae_core.variants.registry import build_sae, sae_config


def make(activation="topk", d_in=8, d_sae=32, k=3, scale=2.0):
    v = VariantConfig(activation=activation, d_sae=d_sae, k=k)
    sae = build_sae(sae_config(v, d_in=d_in, scaling_factor=scale, source={"kind": "test"}))
    sae.reset_parameters(torch.Generator().manual_seed(0), b_dec=torch.randn(d_in))
    return sae


def test_forward_matches_the_formula_and_scaling():
    sae = make("relu")
    x = torch.randn(2, 5, 8)
    out = sae(x)
    xn = 2.0 * x
    pre = (xn - sae.b_dec) @ sae.W_enc + sae.b_enc
    f = torch.relu(pre)
    assert torch.allclose(out.pre_acts, pre, atol=1e-5)
    assert torch.allclose(out.features, f, atol=1e-5)
    assert torch.allclose(out.recon, (f @ sae.W_dec + sae.b_dec) / 2.0, atol=1e-5)
    assert out.features.shape == (2, 5, 32) and out.recon.shape == (2, 5, 8)


def test_flat_input_is_accepted():
    sae = make()
    out = sae(torch.randn(7, 8))
    assert out.features.shape == (7, 32) and out.recon.shape == (7, 8)


def test_encoder_initialised_as_decoder_transpose_with_unit_rows():
    sae = make("topk")
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-5)
    assert torch.allclose(sae.W_enc, sae.W_dec.T)
    relu = make("relu")
    assert torch.allclose(relu.W_dec.norm(dim=-1), torch.full((32,), 0.1), atol=1e-5)


def test_parallel_gradient_removed_and_rows_renormalised():
    sae = make("topk")
    out = sae(torch.randn(4, 6, 8))
    out.recon.pow(2).sum().backward()
    sae.remove_parallel_decoder_grad()
    assert (sae.W_dec.grad * sae.W_dec).sum(-1).abs().max() < 1e-4
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(32), atol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "topk", "batchtopk"])
def test_save_load_roundtrip_uses_saelens_names(tmp_path, activation):
    sae = make(activation)
    if activation == "batchtopk":
        sae.train()
        sae(torch.randn(3, 4, 8))  # sets the inference threshold
        sae.eval()
    save_sae(sae, tmp_path / "sae")
    tensors = load_file(str(tmp_path / "sae" / "sae.safetensors"))
    assert tensors["W_enc"].shape == (8, 32) and tensors["W_dec"].shape == (32, 8)
    assert tensors["b_enc"].shape == (32,) and tensors["b_dec"].shape == (8,)
    assert ("threshold" in tensors) == (activation == "batchtopk")
    loaded = load_sae(tmp_path / "sae")
    x = torch.randn(2, 3, 8)
    sae.eval()
    assert torch.allclose(loaded(x).recon, sae(x).recon, atol=1e-6)
    assert not loaded.training


def test_load_missing_sae_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="train this SAE first"):
        load_sae(tmp_path / "nothing")


def test_geometric_median_resists_outliers():
    pts = torch.randn(200, 3, generator=torch.Generator().manual_seed(0)) * 0.1
    pts[:20] += 100.0
    med = geometric_median(pts)
    assert med.norm() < 1.0 < pts.mean(0).norm()


def test_jumprelu_bandwidth_follows_the_paper_in_tsae_units():
    """The paper's 0.001 is for inputs of unit mean squared norm; tsae scales them to E||x|| = sqrt(d_in),
    so its pre-activations are sqrt(d_in) times larger and so is the window. An explicit value is kept."""
    for d_in in (24, 128, 640):
        cfg = sae_config(VariantConfig(activation="jumprelu", d_sae=64), d_in, 1.0, {})
        assert cfg.bandwidth == pytest.approx(0.001 * d_in**0.5)
        assert build_sae(cfg).activation.bandwidth == pytest.approx(0.001 * d_in**0.5)
    earlier = sae_config(VariantConfig(activation="jumprelu", d_sae=64, bandwidth=2.0), 128, 1.0, {})
    assert earlier.bandwidth == 2.0
