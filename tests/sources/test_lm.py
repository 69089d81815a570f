"""Packing documents into BOS-prefixed contexts, and harvesting a model only up to its hook."""

from __future__ import annotations

import warnings

import pytest
import torch

from tsae_core.sources.lm import LanguageModelSource, hook_layer, pack_contexts

BOS, EOS, PAD = 256, 257, 255


def _docs(seed: int = 0, n: int = 40) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 60, (n,), generator=gen).tolist()
    return [torch.randint(0, 250, (L,), generator=gen).tolist() for L in lengths]


def _check_layout(packed: dict[str, torch.Tensor], docs: list[list[int]], T: int) -> None:
    """Every context starts with BOS; the non-special tokens, in order, are the documents' tokens."""
    tokens, doc_start, position, special = (packed[k] for k in ("tokens_NT", "doc_start_NT", "position_NT", "special_NT"))
    assert tokens.shape[1] == T and tokens.dtype == torch.int64 and position.dtype == torch.int64
    assert doc_start.dtype == torch.bool and special.dtype == torch.bool
    assert (tokens[:, 0] == BOS).all() and special[:, 0].all()
    assert (special == (tokens == BOS)).all()  # no EOS/pad here: special exactly at BOS
    real = tokens[~special].tolist()
    flat = [t for d in docs for t in d]
    assert real == flat[: len(real)]  # each document token once, in order
    # doc_start / position: walk the real tokens and compare with the document layout.
    expect_start = [i == 0 for d in docs for i in range(len(d))][: len(real)]
    expect_pos = [i for d in docs for i in range(len(d))][: len(real)]
    assert doc_start[~special].tolist() == expect_start
    assert position[~special].tolist() == expect_pos
    assert not doc_start[special].any() and (position[special] == 0).all()


def test_pack_contexts_layout():
    docs = _docs()
    T = 16
    packed = pack_contexts(docs, T, BOS)
    n_stream = sum(len(d) + 1 for d in docs if d)
    assert packed["tokens_NT"].shape == (n_stream // (T - 1), T)  # the incomplete tail is dropped
    _check_layout(packed, docs, T)


def test_pack_contexts_pad_keeps_every_token():
    docs = _docs(1)
    if sum(len(d) + 1 for d in docs if d) % 15 == 0:
        docs.append([1])  # make sure the last chunk is incomplete
    packed = pack_contexts(docs, 16, BOS, pad_id=PAD)
    tokens, special = packed["tokens_NT"], packed["special_NT"]
    pad_mask = special & (tokens == PAD)
    assert pad_mask.any() and pad_mask[:-1].sum() == 0  # padding only in the last context
    assert tokens[~special].tolist() == [t for d in docs for t in d]


def test_pack_contexts_marks_special_ids_and_max_contexts():
    docs = [[1, 2, EOS], [3, 4, 5, 6, EOS]] * 10
    packed = pack_contexts(docs, 8, BOS, max_contexts=3, special_ids=[EOS])
    tokens, special = packed["tokens_NT"], packed["special_NT"]
    assert tokens.shape == (3, 8)
    assert (special == ((tokens == BOS) | (tokens == EOS))).all()
    # A document's position keeps counting across a context boundary.
    long = pack_contexts([list(range(20))], 8, BOS)
    assert long["position_NT"][1, 1:].tolist() == list(range(6, 13))
    assert long["doc_start_NT"].sum() == 1 and long["doc_start_NT"][0, 2]


def test_pack_contexts_bos_id_inside_a_document_is_not_a_boundary():
    packed = pack_contexts([[7, BOS, 8]], 8, BOS, pad_id=PAD)
    assert packed["doc_start_NT"][0].tolist() == [False, False, True, False, False] + [False] * 3
    assert packed["special_NT"][0, 3].item() is False  # layout decides what is a BOS, not the id


def test_pack_contexts_empty_and_bad_sizes():
    assert pack_contexts([[], []], 8, BOS)["tokens_NT"].shape == (0, 8)
    with pytest.raises(ValueError, match="context_size"):
        pack_contexts([[1]], 1, BOS)


def test_hook_layer():
    assert hook_layer("blocks.3.hook_resid_post") == 3
    assert hook_layer("blocks.12.attn.hook_z") == 12
    for bad in ("hook_embed", "ln_final.hook_normalized", "blocks.x.hook_resid_post"):
        with pytest.raises(ValueError, match="cannot tell the layer"):
            hook_layer(bad)


@pytest.fixture(scope="module")
def tiny_model():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=258, act_fn="gelu", seed=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return HookedTransformer(cfg).eval()


def _source(model, hook="blocks.0.hook_resid_post", batch_size=3):
    contexts = {"train": pack_contexts(_docs(2), 16, BOS), "eval": pack_contexts(_docs(3), 16, BOS)}
    return LanguageModelSource(model, hook, contexts, batch_size, "cpu", {"kind": "tinylm", "model": "random"})


def test_source_matches_run_with_cache(tiny_model):
    source = _source(tiny_model)
    assert source.d_model == 32 and source.kind == "tinylm" and source.ground_truth is None
    batch = source.sequences("train", 2, 9)
    tokens_BT = source.contexts["train"]["tokens_NT"][2:9]
    _, cache = tiny_model.run_with_cache(tokens_BT)
    expected_BTD = cache["blocks.0.hook_resid_post"]
    assert batch.acts_BTD.shape == (7, 16, 32) and batch.acts_BTD.dtype == torch.float32
    torch.testing.assert_close(batch.acts_BTD, expected_BTD, rtol=1e-5, atol=1e-5)
    assert torch.equal(batch.tokens_BT, tokens_BT)
    assert torch.equal(batch.special_BT, source.contexts["train"]["special_NT"][2:9])
    # The same sequences whatever range and batch size they are asked with.
    again = _source(tiny_model, batch_size=5).sequences("train", 0, 12).slice(2, 9)
    torch.testing.assert_close(again.acts_BTD, batch.acts_BTD, rtol=1e-5, atol=1e-5)
    described = source.describe()
    assert described["hook_name"] == "blocks.0.hook_resid_post" and described["n_contexts"]["eval"] == source.n_sequences("eval")


def test_source_runs_only_up_to_the_hooked_block(tiny_model):
    calls = []
    tiny_model.blocks[1].hook_resid_pre.add_hook(lambda act, hook: calls.append(hook.name))
    handle = tiny_model.unembed.register_forward_hook(lambda *args: calls.append("unembed"))
    try:
        _source(tiny_model).sequences("eval", 0, 4)
        assert calls == []
        tiny_model(torch.zeros(1, 4, dtype=torch.long))  # the spies do fire on a full forward pass
        assert calls == ["blocks.1.hook_resid_pre", "unembed"]
    finally:
        tiny_model.reset_hooks()
        handle.remove()


def test_source_errors(tiny_model):
    source = _source(tiny_model)
    with pytest.raises(ValueError, match="has .* contexts"):
        source.sequences("train", 0, source.n_sequences("train") + 1)
    with pytest.raises(KeyError, match="no split"):
        source.sequences("test", 0, 1)
    with pytest.raises(ValueError, match="no hook"):
        _source(tiny_model, hook="blocks.5.hook_resid_post")
    with pytest.raises(ValueError, match="kind"):
        LanguageModelSource(tiny_model, "blocks.0.hook_resid_post", {}, 2, "cpu", {"kind": "synthetic"})


def test_a_document_keeps_its_index_across_contexts_and_the_store_ids_carry_the_split(tiny_model):
    docs = [[5, 6, 7, 8, 9, 10, 11], [], [12, 13], [14, 15, 16, 17, 18, 19]]
    packed = pack_contexts(docs, context_size=5, bos_id=1, pad_id=0)
    index = packed["doc_index_NT"]
    # stream: B 5 6 7 8 9 10 11 B 12 13 B 14 ... cut in chunks of 4, each behind a context BOS (-1)
    assert index[:, 0].tolist() == [-1] * index.shape[0]
    assert index[0, 1:].tolist() == [0, 0, 0, 0] and index[1, 1:].tolist() == [0, 0, 0, 0], "document 0 runs into context 1"
    assert index[2, 1:].tolist() == [2, 2, 2, 3], "the empty document 1 is skipped; indices are the list's"
    assert (index[packed["tokens_NT"] == 0] == -1).all() and (index >= -1).all()
    source = LanguageModelSource(tiny_model, "blocks.0.hook_resid_post", {"train": packed, "eval": packed}, 4, "cpu", {"kind": "tinylm"})
    train, evaluation = source.sequences("train", 0, 3), source.sequences("eval", 0, 3)
    assert torch.equal(train.doc_id_BT[0, 1:], train.doc_id_BT[1, 1:]), "one id across the two contexts"
    assert not set(train.doc_id_BT[train.doc_id_BT >= 0].tolist()) & set(evaluation.doc_id_BT[evaluation.doc_id_BT >= 0].tolist())
