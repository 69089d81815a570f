"""The repo's own byte-level model: tokenizer, spec hash, losses, training and its cache."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from tsae_core.sources import tinylm
from tsae_core.sources.tinylm import (
    BOS_ID,
    ByteTokenizer,
    TinyLMSpec,
    load_tiny_lm,
    next_byte_loss,
    tinylm_source,
    train_tiny_lm,
    unigram_loss,
)

TINY = TinyLMSpec(
    n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, train_steps=40, batch_size=8, lr=1e-2, warmup=4,
    heldout_fraction=0.2, max_documents=120, eval_contexts=16,
)  # fmt: skip


@contextlib.contextmanager
def one_thread():
    """Tiny models train faster on one thread, and much faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "def f(x):\n    return x ≥ 0  # é"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) and max(ids) < 256
    assert tok.decode(ids) == text
    assert tok.encode_tensor(text).tolist() == ids
    assert tok.decode([BOS_ID, *ids, tok.eos_token_id]) == text
    assert (tok.bos_token_id, tok.eos_token_id, tok.vocab_size) == (256, 257, 258)


def test_spec_hash_and_validation():
    assert TinyLMSpec().hash() == TinyLMSpec().hash() and len(TinyLMSpec().hash()) == 16
    assert TinyLMSpec(seed=1).hash() != TinyLMSpec().hash()
    assert TinyLMSpec(train_steps=7, warmup=1).hash() != TinyLMSpec().hash()
    with pytest.raises(ValueError, match="divisible"):
        TinyLMSpec(d_model=130)
    with pytest.raises(ValueError, match="heldout_fraction"):
        TinyLMSpec(heldout_fraction=0.0)


def test_unigram_loss_is_smoothed_cross_entropy():
    train = torch.tensor([[BOS_ID, 97, 97, 97, 98]])  # a:3, b:1
    heldout = torch.tensor([[BOS_ID, 97, BOS_ID, 98]])  # targets a, b (the BOS target is excluded)
    p_a, p_b = 4 / 260, 2 / 260  # add-one over 256 byte values
    assert unigram_loss(train, heldout) == pytest.approx(-(math.log(p_a) + math.log(p_b)) / 2)


def test_next_byte_loss_excludes_bos_targets():
    model = tinylm.build_model(TINY)
    tokens = torch.tensor([[BOS_ID, 5, 6, BOS_ID, 7, 8]])
    total, count = next_byte_loss(model, tokens)
    logp = model(tokens).log_softmax(-1)[0]
    expected = -(logp[0, 5] + logp[1, 6] + logp[3, 7] + logp[4, 8])
    assert count == 4
    torch.testing.assert_close(total, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(cache_dir, model, report) of TINY, trained once for this module (a few seconds)."""
    cache_dir = tmp_path_factory.mktemp("tinylm")
    with one_thread():
        model, report = train_tiny_lm(TINY, cache_dir, progress=False)
    return cache_dir, model, report


def test_training_learns(trained):
    cache_dir, model, report = trained
    assert model.cfg.d_vocab == 258 and model.cfg.n_ctx == 32
    assert report["train_tokens"] == 40 * 8 * 32 and report["n_heldout_docs"] > 0
    # Even 40 steps of a 1-layer model beat the byte unigram by a clear margin.
    assert math.isfinite(report["heldout_loss"]) and report["heldout_loss"] < report["unigram_loss"] - 0.1
    assert {p.name for p in (cache_dir / TINY.hash()).iterdir()} == {"model.safetensors", "spec.json", "report.json"}


def test_cache_loads_without_training(trained, tmp_path, monkeypatch):
    cache_dir, model, report = trained

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the model is cached")

    monkeypatch.setattr(tinylm, "_fit", no_training)
    cached, cached_report = load_tiny_lm(TINY, cache_dir, progress=False)
    assert cached_report == report
    for name, tensor in model.state_dict().items():
        assert torch.equal(cached.state_dict()[name], tensor), name
    tokens = torch.randint(0, 256, (2, 32))
    torch.testing.assert_close(cached(tokens), model(tokens))

    # An entry without its report (a crash mid-write) is not trusted: it trains again.
    entry = tmp_path / TINY.hash()
    entry.mkdir()
    (entry / "model.safetensors").write_bytes((cache_dir / TINY.hash() / "model.safetensors").read_bytes())
    with pytest.raises(AssertionError, match="trained although"):
        load_tiny_lm(TINY, tmp_path, progress=False)


def test_training_is_deterministic():
    spec = TinyLMSpec(**{**TINY.to_dict(), "train_steps": 3, "warmup": 1})
    with one_thread():
        a, report_a = tinylm._fit(spec, progress=False)
        b, report_b = tinylm._fit(spec, progress=False)
    assert report_a["heldout_loss"] == report_b["heldout_loss"]
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_tinylm_source_splits_text_by_document(trained):
    cache_dir = trained[0]
    source = tinylm_source(TINY, cache_dir, "blocks.0.hook_resid_post", 32, max_contexts={"train": 10}, progress=False)
    assert source.kind == "tinylm" and source.d_model == 32 and source.n_sequences("train") == 10
    batch = source.sequences("eval", 0, 3)
    assert batch.acts_BTD.shape == (3, 32, 32) and (batch.tokens_BT[:, 0] == BOS_ID).all()
    train_text = {ByteTokenizer().decode(c) for c in source.contexts["train"]["tokens_NT"]}
    eval_text = {ByteTokenizer().decode(c) for c in source.contexts["eval"]["tokens_NT"]}
    assert train_text.isdisjoint(eval_text)
    with pytest.raises(ValueError, match="n_ctx"):
        tinylm_source(TINY, cache_dir, "blocks.0.hook_resid_post", 64, progress=False)
