"""JumpReLU: straight-through gradients reach the thresholds, which start at the wanted firing rate."""

from __future__ import annotations

import pytest
import torch

from tsae_core.activations import JumpReLU
from tsae_core.loading import load_sae


def test_forward_is_a_jump_and_thresholds_get_pseudo_gradients():
    act = JumpReLU(d_sae=3, k=1, bandwidth=0.1, init_threshold=0.5)
    pre = torch.tensor([[0.2, 0.52, 0.9]], requires_grad=True)
    f = act(pre)
    assert torch.allclose(f, torch.tensor([[0.0, 0.52, 0.9]]))
    f.sum().backward()
    assert torch.allclose(pre.grad, torch.tensor([[0.0, 1.0, 1.0]]))
    g = act.log_threshold.grad
    # only latent 1 is within the window (|0.52 - 0.5| < 0.05): d f / d theta = -theta/eps, times d theta/d log theta = theta
    assert g[0] == 0 and g[2] == 0 and g[1].item() == pytest.approx(-(0.5 / 0.1) * 0.5, rel=1e-4)
    act.log_threshold.grad = None
    act.l0_N(pre.detach()).sum().backward()
    assert act.log_threshold.grad[1].item() == pytest.approx(-(1 / 0.1) * 0.5, rel=1e-4)


def test_thresholds_start_at_the_wanted_firing_rate():
    act = JumpReLU(d_sae=50, k=5)
    pre = torch.randn(4000, 50)
    act.init_from_sample(pre)
    assert act(torch.randn(4000, 50)).gt(0).float().sum(-1).mean().item() == pytest.approx(5, rel=0.1)


def test_threshold_round_trips_through_the_saelens_name(tmp_path):
    from tsae_core.sae import SAEConfig, save_sae
    from tsae_core.variants.registry import build_sae

    sae = build_sae(SAEConfig(architecture="standard", activation="jumprelu", d_in=4, d_sae=6, k=2, bandwidth=0.05))
    with torch.no_grad():
        sae.activation.log_threshold.copy_(torch.linspace(-2, 0, 6))
    save_sae(sae, tmp_path)
    tensors = sae.weight_tensors()
    assert "threshold" in tensors and torch.allclose(tensors["threshold"], torch.linspace(-2, 0, 6).exp())
    loaded = load_sae(tmp_path)
    assert torch.allclose(loaded.activation.threshold, sae.activation.threshold, atol=1e-6)

# Landing on a target L0 (the penalty controller) is tested in tests/test_target_l0.py, from a
# coefficient 10x too small and 10x too large.
