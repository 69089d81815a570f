"""Matryoshka: each prefix of the dictionary reconstructs on its own."""

from __future__ import annotations

import pytest
import torch

from tsae_core import losses
from tsae_core.sae import SAEConfig
from tsae_core.train import train_variant
from tsae_core.variants.matryoshka import prefix_sizes
from tsae_core.variants.registry import build_sae


def test_prefix_sizes_from_fractions_and_counts():
    assert prefix_sizes([0.25, 0.5], 64) == [16, 32, 64]
    assert prefix_sizes([8, 16], 64) == [8, 16, 64]
    with pytest.raises(ValueError):
        prefix_sizes([0.001], 64)


def test_prefix_reconstructions_match_a_direct_computation():
    sae = build_sae(SAEConfig(architecture="matryoshka", activation="topk", d_in=6, d_sae=12, k=3,
                              options={"prefixes": [3, 6]}))
    f = torch.rand(5, 12)
    recon = sae.prefix_reconstructions(f)
    for level, m in enumerate([3, 6, 12]):
        assert torch.allclose(recon[level], f[:, :m] @ sae.W_dec[:m] + sae.b_dec, atol=1e-6)


def test_trained_prefixes_reconstruct_alone(harvested):
    """The first prefix (8 of 64 latents) of a trained Matryoshka SAE explains most of the variance on
    its own, far more than the same 8 latents of a plain SAE trained on the same data."""
    cfg, store = harvested
    fvu = {}
    for name in ("matryoshka", "batchtopk"):
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
        from tsae_core.loading import load_sae

        sae = load_sae(cfg.run_dir / "saes" / name)
        batch = next(iter(store.split("eval").batches(32, shuffle=False)))
        with torch.no_grad():
            out = sae(batch.acts_BTD, batch.mask_BT, batch.doc_start_BT)
            x = out.x_normalized[batch.mask_BT]
            f = out.features[batch.mask_BT]
            prefix = f[:, :8] @ sae.W_dec[:8] + sae.b_dec
            full = out.recon_normalized[batch.mask_BT]
        mask = torch.ones(len(x), dtype=torch.bool)
        fvu[name] = (losses.fraction_unexplained(x, prefix, mask).item(), losses.fraction_unexplained(x, full, mask).item())
    assert fvu["matryoshka"][0] < 0.75, fvu
    assert fvu["matryoshka"][0] < fvu["batchtopk"][0] - 0.1, fvu
    assert fvu["matryoshka"][1] < 0.5, fvu
