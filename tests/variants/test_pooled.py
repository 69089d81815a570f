"""Pooled: the smoother control. Its encoder reads the mean of the last `window` counted tokens of
the document, nothing else; window 1 is the token-wise SAE."""

from __future__ import annotations

import pytest
import torch

from tests.variants.causality import assert_reads_only_its_documents_past, assert_round_trip, token_influence
from tsae_core.sae import SAE, SAEConfig
from tsae_core.variants.pooled import window_mean
from tsae_core.variants.registry import build_sae


def _sae(activation="topk", window=4) -> SAE:
    sae = build_sae(SAEConfig(architecture="pooled", activation=activation, d_in=8, d_sae=32,
                              k=None if activation == "relu" else 3, unit_norm_decoder=activation != "relu",
                              options={"window": window}))
    sae.reset_parameters(torch.Generator().manual_seed(1))
    return sae


def _data(T=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, T, 8, generator=g)
    d = torch.zeros(3, T, dtype=torch.bool)
    d[:, 0] = True
    d[0, 5] = d[1, 9] = d[2, 3] = d[2, 12] = True
    return x, d, g


def test_window_mean_by_hand():
    x = torch.arange(6, dtype=torch.float32).view(1, 6, 1)  # tokens 0..5; a document starts at 3
    d = torch.tensor([[True, False, False, True, False, False]])
    mask = torch.tensor([[True, True, True, True, False, True]])  # token 4 is special
    got = window_mean(x, 3, mask, d).flatten().tolist()
    # t=0: 0; t=1: (0+1)/2; t=2: (0+1+2)/3; t=3: 3 (new document); t=4: special, reads (4 + 3)/2 -
    # its own term always counts; t=5: (5 + 3)/2, the special token 4 is skipped
    assert got == pytest.approx([0.0, 0.5, 1.0, 3.0, 3.5, 4.0])
    assert torch.equal(window_mean(x, 1, mask, d), x)


@pytest.mark.parametrize("activation", ["topk", "relu", "jumprelu", "batchtopk"])
def test_no_future_no_earlier_document_but_the_past(activation):
    x, d, g = _data()
    assert_reads_only_its_documents_past(_sae(activation).eval(), x, d, t=7, generator=g)


def test_reads_exactly_its_window_and_window_one_is_token_wise():
    x, _, _ = _data()
    one_doc = torch.zeros(3, 16, dtype=torch.bool)
    one_doc[:, 0] = True
    assert token_influence(_sae(window=4), x, one_doc, source=10 - 3, target=10) > 1e-3
    assert token_influence(_sae(window=4), x, one_doc, source=10 - 4, target=10) == 0.0
    pooled, plain = _sae(window=1), build_sae(SAEConfig(architecture="standard", activation="topk", d_in=8, d_sae=32, k=3))
    plain.load_state_dict(pooled.state_dict())
    assert torch.allclose(pooled(x, None, one_doc).recon, plain(x, None, one_doc).recon, atol=1e-6)


def test_special_tokens_are_not_read():
    x, _, _ = _data()
    one_doc = torch.zeros(3, 16, dtype=torch.bool)
    one_doc[:, 0] = True
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask[:, 8] = False
    assert token_influence(_sae(), x, one_doc, source=8, target=10, mask=mask) == 0.0
    assert token_influence(_sae(), x, one_doc, source=9, target=10, mask=mask) > 1e-3


def test_save_and_load(tmp_path):
    x, d, _ = _data()
    assert_round_trip(_sae(), tmp_path / "pooled", x, d)
