"""Contrastive: InfoNCE falls as nearby codes agree, pairs stay inside documents, the queue is bounded."""

from __future__ import annotations

import pytest
import torch

from tsae_core import losses
from tsae_core.sae import LossContext, SAEConfig, SAEOutput
from tsae_core.variants.registry import build_sae


def _sae(queue_size=64, window=2, d_sae=40):
    cfg = SAEConfig(architecture="contrastive", activation="topk", d_in=8, d_sae=d_sae, k=4,
                    options={"window": window, "queue_size": queue_size, "high_level_fraction": 0.25,
                             "temperature": 0.1, "coefficient": 1.0})
    return build_sae(cfg)


def _ctx(B, T, doc_starts=(0,), step=0):
    doc = torch.zeros(B, T, dtype=torch.bool)
    doc[:, list(doc_starts)] = True
    return LossContext(torch.ones(B, T, dtype=torch.bool), doc, step=step, seed=0)


def _out(features_BTF):
    x = torch.zeros(*features_BTF.shape[:2], 8)
    return SAEOutput(features_BTF, x, features_BTF, x, x)


def test_infonce_falls_as_positives_agree():
    gen = torch.Generator().manual_seed(0)
    anchors = torch.rand(32, 10, generator=gen)
    same_doc = torch.eye(32, dtype=torch.bool)
    empty = torch.zeros(0, 10)
    agree = losses.info_nce(anchors, anchors + 0.01 * torch.rand(32, 10, generator=gen), empty, same_doc, 0.1)
    random = losses.info_nce(anchors, torch.rand(32, 10, generator=gen), empty, same_doc, 0.1)
    assert agree.item() < 0.5 * random.item()


def test_same_document_partners_are_not_negatives():
    a = torch.eye(4)
    p = torch.eye(4)
    p[1] = p[0]  # pair 1's partner looks exactly like pair 0's
    apart = torch.eye(4, dtype=torch.bool)
    together = apart.clone()
    together[0, 1] = together[1, 0] = True  # pairs 0 and 1 are from one document
    empty = torch.zeros(0, 4)
    assert losses.info_nce(a, p, empty, together, 0.1).item() < losses.info_nce(a, p, empty, apart, 0.1).item()


def test_positives_never_cross_a_document_boundary():
    sae = _sae(window=3)
    T = 12
    f = torch.zeros(1, T, 40)
    f[0, :, 0] = 1.0 + torch.arange(T).float()  # every token has an active high-level latent
    starts = tuple(range(0, T, 2))  # documents of two tokens: only lag-1 pairs inside them exist
    anchor, positive, same_doc = sae.pairs(f[..., :10], _ctx(1, T, starts))
    assert len(anchor) > 0
    t_a, t_p = anchor[:, 0] - 1, positive[:, 0] - 1  # the code encodes the position
    assert torch.all(t_p - t_a == 1) and torch.all(t_a % 2 == 0), "every pair lies inside one two-token document"
    _, _, no_pairs = sae.pairs(f[..., :10], _ctx(1, T, tuple(range(T))))  # one-token documents: no pair at all
    assert len(no_pairs) == 0


def test_loss_counts_no_straddling_pair():
    """Codes differ only across the boundary: with the boundary there the contrastive term is at its
    floor, without it straddling pairs would count."""
    sae = _sae(queue_size=0, window=1, d_sae=8)
    T = 8
    f = torch.zeros(2, T, 8)
    f[0, :4, 0] = f[0, 4:, 1] = 1.0  # sequence 0: code A then code B
    f[1, :4, 1] = f[1, 4:, 0] = 1.0  # sequence 1: code B then code A
    with_boundary = sae.loss_terms(_out(f), _ctx(2, T, (0, 4)))["contrastive"].item()
    without = sae.loss_terms(_out(f), _ctx(2, T, (0,)))["contrastive"].item()
    assert without > with_boundary + 0.05


def test_queue_is_fifo_and_never_exceeds_its_size():
    sae = _sae(queue_size=20)
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        f = torch.rand(2, 16, 40, generator=gen)
        sae.after_step(_out(f), _ctx(2, 16, step=step))
        assert sae.queue().shape[0] <= 20
    assert sae.queue().shape == (20, 10)
    assert torch.allclose(sae.queue().norm(dim=-1), torch.ones(20), atol=1e-5), "queued codes are normalised"
    # the state round-trips through a checkpoint
    clone = _sae(queue_size=20)
    clone.load_training_state({k: v.clone() for k, v in sae.training_state().items()})
    assert torch.equal(clone.queue(), sae.queue()) and int(clone.queue_next) == int(sae.queue_next)


def test_pairs_are_reproducible_from_seed_and_step():
    sae = _sae()
    f = torch.rand(2, 16, 10, generator=torch.Generator().manual_seed(3))
    a1, _, _ = sae.pairs(f, _ctx(2, 16, step=5))
    a2, _, _ = sae.pairs(f, _ctx(2, 16, step=5))
    a3, _, _ = sae.pairs(f, _ctx(2, 16, step=6))
    assert torch.equal(a1, a2) and not (a1.shape == a3.shape and torch.equal(a1, a3))


def test_high_level_prefix_is_a_matryoshka_level():
    sae = _sae()
    assert sae.sizes == [10, 40] and sae.level_weights == pytest.approx([0.5, 0.5])


def _two_contexts_of_one_document(doc_ids):
    """Four sequences of 8 tokens, each one document in its row, every token with an active
    high-level latent; the store's document ids say which rows hold the same document."""
    f = torch.rand(4, 8, 40, generator=torch.Generator().manual_seed(0)) + 0.1
    doc = torch.zeros(4, 8, dtype=torch.bool)  # rows begin inside their documents: documents run across contexts
    ids = torch.tensor(doc_ids)[:, None].expand(4, 8)
    return f, LossContext(torch.ones(4, 8, dtype=torch.bool), doc, step=0, seed=0, doc_id_BT=ids)


def test_no_negative_comes_from_the_anchors_own_document():
    """Rows 0 and 1 are consecutive contexts of one document, as are rows 2 and 3 (97.6% of the
    default's sequences begin inside a document). Pairs from the other row of an anchor's document are
    not negatives: they are masked in the batch, and counted; a per-row count would have taken them."""
    sae = _sae(queue_size=0, window=2)
    f, ctx = _two_contexts_of_one_document([7, 7, 9, 9])
    terms = sae.loss_terms(_out(f), ctx)
    anchors, positives, doc_P = sae.pairs(f[..., :10], ctx)
    same_PP = doc_P[:, None] == doc_P[None, :]
    expected = losses.info_nce(anchors, positives, torch.zeros(0, 10), same_PP, 0.1)
    assert terms["contrastive"].item() == pytest.approx(sae.cfg.d_in * expected.item(), rel=1e-5)
    row_only = torch.arange(len(doc_P))[:, None] == torch.arange(len(doc_P))[None, :]  # what a per-row id sees at most
    assert (same_PP & ~row_only).any(), "pairs of one document sit in different rows"
    masked_in_batch, _ = sae.curve_values().values()
    assert masked_in_batch == pytest.approx((same_PP.sum().item() - len(doc_P)) / len(doc_P))
    apart = _sae(queue_size=0, window=2)
    _, ctx_apart = _two_contexts_of_one_document([1, 2, 3, 4])
    assert apart.loss_terms(_out(f), ctx_apart)["contrastive"].item() != pytest.approx(terms["contrastive"].item(), rel=1e-3)


def test_queued_codes_keep_their_document_and_are_never_its_negatives():
    sae = _sae(queue_size=64, window=2)
    f, ctx = _two_contexts_of_one_document([7, 7, 9, 9])
    sae.after_step(_out(f), ctx)
    assert set(sae.queue_documents().tolist()) == {7, 9}
    f2, ctx2 = _two_contexts_of_one_document([7, 7, 11, 11])  # the next batch continues document 7
    sae.loss_terms(_out(f2), ctx2)
    _, masked_in_queue = sae.curve_values().values()
    _, _, doc_P = sae.pairs(f2[..., :10], ctx2)
    expected = (doc_P[:, None] == sae.queue_documents()[None, :]).sum().item() / len(doc_P)
    assert masked_in_queue == pytest.approx(expected) and masked_in_queue > 0


def test_the_term_is_weighed_by_d_in():
    small, large = _sae(queue_size=0), build_sae(SAEConfig(
        architecture="contrastive", activation="topk", d_in=32, d_sae=40, k=4,
        options={"window": 2, "queue_size": 0, "high_level_fraction": 0.25, "temperature": 0.1, "coefficient": 1.0}))
    f, ctx = _two_contexts_of_one_document([1, 2, 3, 4])
    x8, x32 = torch.zeros(4, 8, 8), torch.zeros(4, 8, 32)
    t8 = small.loss_terms(SAEOutput(f, x8, f, x8, x8), ctx)["contrastive"].item()
    t32 = large.loss_terms(SAEOutput(f, x32, f, x32, x32), ctx)["contrastive"].item()
    assert t32 == pytest.approx(4 * t8, rel=1e-5)
