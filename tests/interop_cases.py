"""SAEs and activations shared by the SAELens interop tests (`test_interop*.py`)."""

from __future__ import annotations

from typing import Any

import torch

from tsae_core.config import VariantConfig
from tsae_core.sae import SAE
from tsae_core.variants.registry import build_sae, sae_config

ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")
SCALE = 0.0731
"""A scaling factor far from 1 and not a power of two, so that folding it rounds."""
D_IN, D_SAE, K = 16, 64, 4
LM_SOURCE: dict[str, Any] = {"kind": "hf", "model": "gpt2", "hook_name": "blocks.6.hook_resid_post", "context_size": 128,
                             "dataset": "NeelNanda/pile-10k", "d_model": D_IN}


def raw_activations(n: int = 512, seed: int = 1, scale: float = SCALE) -> torch.Tensor:
    """(n, D_IN) raw activations: a shared mean and noise, of norm ~ sqrt(d_in) / scale as tsae's scaling makes them."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(D_IN, generator=g)
    return (mean + torch.randn(n, D_IN, generator=g)) / scale


@torch.no_grad()
def random_sae(activation: str, architecture: str = "standard", options: dict | None = None, seed: int = 0,
               source: dict | None = None, scale: float = SCALE) -> SAE:
    """A tsae SAE with random weights away from their initialisation and data-fitted thresholds, in eval mode."""
    v = VariantConfig(architecture=architecture, activation=activation, d_sae=D_SAE, k=K, options=options or {})
    sae = build_sae(sae_config(v, D_IN, scale, LM_SOURCE if source is None else source))
    g = torch.Generator().manual_seed(seed)
    sae.reset_parameters(g, b_dec=0.5 * torch.randn(D_IN, generator=g))
    sae.W_enc.add_(0.2 * torch.randn(sae.W_enc.shape, generator=g) * sae.W_dec.norm(dim=-1))
    sae.b_enc.copy_(0.1 * torch.randn(D_SAE, generator=g) - (0.05 if activation == "relu" else 0.0))
    x_n = raw_activations(1024, seed=seed + 100, scale=scale) * scale
    if activation == "batchtopk":  # the single inference threshold, fitted as training's calibration does
        sae.activation.calibrate([(sae.encode_pre(x_n.unsqueeze(0)).squeeze(0), None)])
    if activation == "jumprelu":
        sae.init_from_sample(x_n)
    return sae.eval()


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(max |a - b|, that divided by max |b|)."""
    diff = float((a.detach() - b.detach()).abs().max())
    return diff, diff / max(float(b.detach().abs().max()), 1e-30)
