"""Checks shared by the variants whose code at t reads earlier tokens: nothing from the future,
nothing from an earlier document. Each returns the largest change it saw, so a test asserts it."""

from __future__ import annotations

import torch

from tsae_core.sae import SAE


def _outputs(sae: SAE, x_BTD: torch.Tensor, doc_start_BT: torch.Tensor) -> torch.Tensor:
    out = sae(x_BTD, torch.ones(x_BTD.shape[:2], dtype=torch.bool), doc_start_BT)
    return torch.cat([out.features, out.recon, out.pre_acts], dim=-1)


@torch.no_grad()
def future_influence(sae: SAE, x_BTD: torch.Tensor, doc_start_BT: torch.Tensor, t: int, generator: torch.Generator) -> float:
    """max |change| of the outputs at positions <= t when the inputs after t are replaced."""
    x2 = x_BTD.clone()
    x2[:, t + 1 :] = torch.randn(x2[:, t + 1 :].shape, generator=generator) * 3
    a, b = _outputs(sae, x_BTD, doc_start_BT), _outputs(sae, x2, doc_start_BT)
    return float((a[:, : t + 1] - b[:, : t + 1]).abs().max())


@torch.no_grad()
def earlier_document_influence(sae: SAE, x_BTD: torch.Tensor, doc_start_BT: torch.Tensor, generator: torch.Generator) -> float:
    """max |change| of the outputs from each sequence's last document start onward when every
    token before that start (earlier documents) is replaced. Each sequence needs a start after t = 0."""
    T = x_BTD.shape[1]
    t_BT = torch.arange(T).expand_as(doc_start_BT)
    last_start_B = torch.where(doc_start_BT, t_BT, torch.zeros_like(t_BT)).max(dim=1).values
    assert bool((last_start_B > 0).all()), "every sequence needs a document that starts after position 0"
    before_BT = t_BT < last_start_B[:, None]
    x2 = torch.where(before_BT.unsqueeze(-1), torch.randn(x_BTD.shape, generator=generator) * 3, x_BTD)
    a, b = _outputs(sae, x_BTD, doc_start_BT), _outputs(sae, x2, doc_start_BT)
    return float((a - b).abs()[~before_BT].max())


@torch.no_grad()
def past_influence(sae: SAE, x_BTD: torch.Tensor, doc_start_BT: torch.Tensor, t: int, generator: torch.Generator) -> float:
    """max |change| of the outputs at t when inputs before t in t's document change: the positive
    control, > 0 for a variant that reads the past at all (else the two checks above prove nothing)."""
    x2 = x_BTD.clone()
    x2[:, :t] = torch.randn(x2[:, :t].shape, generator=generator) * 3
    a, b = _outputs(sae, x_BTD, doc_start_BT), _outputs(sae, x2, doc_start_BT)
    return float((a[:, t] - b[:, t]).abs().max())


@torch.no_grad()
def token_influence(sae: SAE, x_BTD: torch.Tensor, doc_start_BT: torch.Tensor, source: int, target: int,
                    mask: torch.Tensor | None = None) -> float:
    """max |change| of the features and pre-activations at `target` when only token `source` changes."""
    x2 = x_BTD.clone()
    x2[:, source] += 5.0
    a, b = sae(x_BTD, mask, doc_start_BT), sae(x2, mask, doc_start_BT)
    return float(torch.cat([(a.pre_acts - b.pre_acts)[:, target], (a.features - b.features)[:, target]], -1).abs().max())


def assert_reads_only_its_documents_past(sae: SAE, x_BTD: torch.Tensor, doc_start_BT: torch.Tensor, t: int,
                                         generator: torch.Generator) -> None:
    """Nothing from after t, nothing from an earlier document, and something from t's own past."""
    assert future_influence(sae, x_BTD, doc_start_BT, t=t, generator=generator) <= 1e-6
    assert earlier_document_influence(sae, x_BTD, doc_start_BT, generator=generator) <= 1e-6
    assert past_influence(sae, x_BTD, doc_start_BT, t=t, generator=generator) > 1e-2


@torch.no_grad()
def assert_round_trip(sae: SAE, directory, x_BTD: torch.Tensor, doc_start_BT: torch.Tensor) -> None:
    """`save_sae` then `load_sae` gives the same reconstructions and the same active latents."""
    from tsae_core.loading import load_sae
    from tsae_core.sae import save_sae

    save_sae(sae, directory)
    loaded = load_sae(directory)
    a, b = sae(x_BTD, None, doc_start_BT), loaded(x_BTD, None, doc_start_BT)
    assert torch.allclose(a.recon, b.recon, atol=1e-6) and torch.equal(a.features != 0, b.features != 0)
