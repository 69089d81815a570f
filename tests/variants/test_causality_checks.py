"""The causality checks themselves: they must see a leak where there is one."""

import torch

from tests.variants.causality import earlier_document_influence, future_influence, past_influence
from tsae_core.sae import SAE, SAEConfig


class _ReadsNextToken(SAE):
    """A deliberately leaky encoder: adds the next token's pre-activations (future and, at the last
    token of a document, the next document)."""

    def encode_pre(self, x_n_BTD, doc_start_BT=None, position_BT=None):
        pre = super().encode_pre(x_n_BTD)
        return pre + torch.cat([pre[:, 1:], torch.zeros_like(pre[:, :1])], dim=1)


class _ReadsPreviousToken(SAE):
    """Reads the previous token without regard to documents (a boundary leak)."""

    def encode_pre(self, x_n_BTD, doc_start_BT=None, position_BT=None):
        pre = super().encode_pre(x_n_BTD)
        return pre + torch.cat([torch.zeros_like(pre[:, :1]), pre[:, :-1]], dim=1)


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 12, 8, generator=g)
    d = torch.zeros(3, 12, dtype=torch.bool)
    d[:, 0] = True
    d[:, 6] = True
    return x, d, g


def _cfg():
    return SAEConfig(architecture="standard", activation="relu", d_in=8, d_sae=32, unit_norm_decoder=False)


def test_checks_pass_a_token_wise_sae_and_see_no_past():
    x, d, g = _data()
    sae = SAE(_cfg())
    assert future_influence(sae, x, d, t=5, generator=g) == 0.0
    assert earlier_document_influence(sae, x, d, generator=g) == 0.0
    assert past_influence(sae, x, d, t=5, generator=g) == 0.0


def test_checks_catch_a_future_leak_and_a_boundary_leak():
    x, d, g = _data()
    assert future_influence(_ReadsNextToken(_cfg()), x, d, t=5, generator=g) > 1e-3
    leaky = _ReadsPreviousToken(_cfg())
    assert future_influence(leaky, x, d, t=5, generator=g) == 0.0
    assert earlier_document_influence(leaky, x, d, generator=g) > 1e-3
    assert past_influence(leaky, x, d, t=5, generator=g) > 1e-3
