"""The hub path with local stand-ins: local text files, a locally built tokenizer, offline errors."""

from __future__ import annotations

import json
import time

import pytest

from tsae_core.sources.hf import (
    MissingTextColumn,
    SourceUnavailable,
    bos_id,
    load_pretrained,
    load_texts,
    special_ids,
    tokenize_documents,
)
from tsae_core.sources.lm import pack_contexts

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the cat and the dog"]


def test_load_texts_from_txt_paragraphs_and_lines(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("first paragraph\nstill first\n\nsecond paragraph\n\n\nthird\n")
    assert load_texts(text_files=[str(path)], max_documents=10) == ["first paragraph\nstill first", "second paragraph", "third"]
    lines = load_texts(text_files=[str(path)], max_documents=3, sample_by="line")
    assert lines == ["first paragraph", "still first", "second paragraph"]  # empty lines skipped, capped at 3


def test_load_texts_from_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(TEXTS)))
    assert load_texts(text_files=[str(path)], max_documents=2) == TEXTS[:2]
    with pytest.raises(MissingTextColumn, match="no column 'body'.*'id', 'text'"):
        load_texts(text_files=[str(path)], text_column="body")


def test_load_texts_argument_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_texts(text_files=[str(tmp_path / "missing.txt")])
    (tmp_path / "a.csv").write_text("text\nx\n")
    with pytest.raises(ValueError, match="expected one of"):
        load_texts(text_files=[str(tmp_path / "a.csv")])
    with pytest.raises(ValueError, match="exactly one"):
        load_texts()


@pytest.fixture(scope="module")
def local_tokenizer():
    """A word-level tokenizer trained on a few local sentences: fully offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TEXTS, trainers.WordLevelTrainer(special_tokens=["<unk>", "<bos>", "<eos>", "<pad>"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def test_tokenize_documents_adds_no_special_tokens(local_tokenizer):
    ids = tokenize_documents(local_tokenizer, TEXTS, batch_size=2)
    assert [len(d) for d in ids] == [len(t.split()) for t in TEXTS]
    assert ids[0][0] == ids[0][4] == local_tokenizer.convert_tokens_to_ids("the")
    specials = set(special_ids(local_tokenizer))
    assert specials == {local_tokenizer.convert_tokens_to_ids(t) for t in ("<unk>", "<bos>", "<eos>", "<pad>")}
    assert not specials & {t for d in ids for t in d}
    assert bos_id(local_tokenizer) == local_tokenizer.convert_tokens_to_ids("<bos>")
    packed = pack_contexts(ids, 8, bos_id(local_tokenizer), special_ids=specials)
    assert (
        packed["tokens_NT"][~packed["special_NT"]].tolist() == [t for d in ids for t in d][: int((~packed["special_NT"]).sum())]
    )


def test_bos_id_falls_back_to_eos_then_fails():
    class GPT2Like:
        bos_token_id = None
        eos_token_id = 50256

    class NoSpecials:
        bos_token_id = eos_token_id = None

    assert bos_id(GPT2Like()) == 50256
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):
        bos_id(NoSpecials())


def test_offline_model_raises_source_unavailable_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SourceUnavailable, match="offline") as info:
        load_pretrained("gpt2")
    assert time.perf_counter() - start < 20  # no retries against an unreachable hub
    assert "'gpt2'" in str(info.value) and "params/default.yaml" in str(info.value)


def test_offline_dataset_raises_source_unavailable_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(SourceUnavailable, match="offline") as info:
        load_texts(dataset="Skylion007/openwebtext", max_documents=5)
    assert time.perf_counter() - start < 20
    assert "Skylion007/openwebtext" in str(info.value) and "HF_HUB_OFFLINE=1" in str(info.value)


def test_unknown_model_name_is_a_value_error():
    with pytest.raises(ValueError, match="does not know the model 'not-a-model-xyz'"):
        load_pretrained("not-a-model-xyz")


def _stand_in(tmp_path, monkeypatch, local_tokenizer, n_layers):
    """A local random transformer-lens model in place of the hub download, and a JSONL file of texts."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from tsae_core.sources import hf

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=32,
                                  act_fn="gelu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg)
    model.tokenizer = local_tokenizer
    monkeypatch.setattr(hf, "load_pretrained", lambda name, device, dtype: model)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": f"{t} {i}"}) + "\n" for i, t in enumerate(TEXTS * 20)))
    return hf, model, path


def test_hf_source_on_local_text_with_a_stand_in_model(tmp_path, monkeypatch, local_tokenizer):
    """The hub path end to end, with a local random model in place of the hub download."""
    hf, model, path = _stand_in(tmp_path, monkeypatch, local_tokenizer, n_layers=2)

    source = hf.hf_source("stand-in", "blocks.0.hook_resid_post", 8, text_files=[str(path)], eval_fraction=0.3)
    assert source.kind == "hf" and source.d_model == 16
    assert source.n_sequences("train") > source.n_sequences("eval") > 0
    batch = source.sequences("eval", 0, 2)
    assert batch.acts_BTD.shape == (2, 8, 16)
    assert (batch.tokens_BT[:, 0] == bos_id(local_tokenizer)).all() and batch.special_BT[:, 0].all()
    assert source.describe()["n_documents"]["train"] + source.describe()["n_documents"]["eval"] == 60


def test_hf_source_at_random_init_reinitialises_the_model_and_keeps_the_tokenizer(tmp_path, monkeypatch, local_tokenizer):
    """`source.random_init` on the hub path: transformer-lens's initialisation of the same config, seeded, tokenizer kept."""
    import torch

    hf, model, path = _stand_in(tmp_path, monkeypatch, local_tokenizer, n_layers=1)
    kw = {"text_files": [str(path)], "eval_fraction": 0.3}
    plain = hf.hf_source("stand-in", "blocks.0.hook_resid_post", 8, **kw)
    a, b = (hf.hf_source("stand-in", "blocks.0.hook_resid_post", 8, random_init=True, **kw) for _ in range(2))
    assert plain.describe()["random_init"] is False and a.describe()["random_init"] is True
    assert a.model is not model and a.model.tokenizer is local_tokenizer and a.model.cfg.d_mlp == 32
    assert torch.equal(a.model.W_in, b.model.W_in) and not torch.allclose(a.model.W_in, model.W_in)
    batch_a, batch_p = a.sequences("eval", 0, 2), plain.sequences("eval", 0, 2)
    assert torch.equal(batch_a.tokens_BT, batch_p.tokens_BT) and not torch.allclose(batch_a.acts_BTD, batch_p.acts_BTD)
