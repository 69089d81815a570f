"""The GGUF model source end to end on a tiny Llama written as GGUF and installed as a fake chunked package.

Real library paths throughout: `gguf` writes the file, `transformers` reads and dequantizes it,
transformer-lens's TransformerBridge wraps it, and the harvest, training and evaluation are the
project's own. A stand-in whose BOS activation is huge checks that BOS stays out of the scaling
factor, the training loss and the metrics.
"""

from __future__ import annotations

import hashlib
import math

import pytest
import torch

from tests.conftest import ci_config
from tests.sources.fake_dist import TINY_TEXTS, make_distribution, write_tiny_llama_gguf
from tsae_core.source_config import GGUFConfig

pytest.importorskip("gguf")

HOOK = "blocks.0.hook_resid_post"
PARTS = ["tiny-llama-gguf-part1", "tiny-llama-gguf-part2"]


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """(GGUFConfig, text file, cache dir) of a tiny Llama GGUF split over two installed packages."""
    root = tmp_path_factory.mktemp("gguf")
    data = write_tiny_llama_gguf(root / "tiny-llama.gguf").read_bytes()
    site = root / "site"
    half = len(data) // 2
    for i, (name, chunk) in enumerate(zip(PARTS, (data[:half], data[half:]))):
        make_distribution(site, name, {f"{name.replace('-', '_')}/tiny-llama.gguf.part{i:02d}": chunk})
    text = root / "docs.txt"
    text.write_text("\n\n".join(TINY_TEXTS) + "\n")
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(site))
    mp.setenv("TSAE_CACHE", str(root / "cache"))
    cfg = GGUFConfig(packages=PARTS, file="tiny-llama.gguf", sha256=hashlib.sha256(data).hexdigest(), text_files=[str(text)])
    yield cfg, root
    mp.undo()


@pytest.fixture(scope="module")
def bridge(packaged):
    from tsae_core.sources.gguf_model import load_gguf_model

    return load_gguf_model(packaged[0])


def _hf_reference(packaged):
    """The same GGUF read by transformers alone, as an independent reference."""
    from transformers import AutoModelForCausalLM

    cfg, root = packaged
    path = root / "cache" / "gguf" / cfg.sha256[:16] / cfg.file
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()


def test_transformers_marks_the_dequantized_model_as_quantized_and_we_drop_it(packaged, bridge):
    from tsae_core.sources.gguf_model import strip_quantization

    hf = _hf_reference(packaged)
    assert getattr(hf.config, "quantization_config", None) is not None and hf.is_quantized, "the pitfall this guards against"
    hf = strip_quantization(hf)
    assert not hasattr(hf.config, "quantization_config") and not hf.is_quantized and hf.hf_quantizer is None
    assert all(p.dtype == torch.float32 for p in hf.parameters())


def test_bridge_serves_hf_hidden_states_and_logits(packaged, bridge):
    from transformer_lens.model_bridge import TransformerBridge

    from tsae_core.sources.lm import LanguageModelSource

    assert isinstance(bridge, TransformerBridge) and bridge.cfg.n_layers == 2 and bridge.cfg.d_model == 32
    hf = _hf_reference(packaged)
    tokens_BT = torch.tensor([[0, 22, 10, 7, 29, 5, 3, 22, 30, 11], [0, 4, 4, 9, 29, 12, 13, 30, 1, 6]])
    with torch.no_grad():
        out = hf(tokens_BT, output_hidden_states=True)
        assert torch.allclose(bridge(tokens_BT), out.logits, atol=1e-5)
    source = LanguageModelSource(bridge, HOOK, {}, batch_size=1, device="cpu", describe={"kind": "gguf"})
    acts_BTD = source.activations(tokens_BT)
    assert torch.allclose(acts_BTD, out.hidden_states[1], rtol=1e-5, atol=1e-6), "block 0's output = HF hidden state 1"


def test_harvest_train_and_evaluate_through_the_gguf_kind(packaged, tmp_path):
    """`source.kind: gguf` from params to CE score: the factory, harvest, training and evaluation."""
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.harvest import harvest
    from tsae_core.sources.factory import load_model
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    g, _ = packaged
    cfg = ci_config(tmp_path, **{
        "source.kind": "gguf", "source.hook_name": HOOK, "source.model_batch_size": 8,
        "source.gguf.packages": g.packages, "source.gguf.file": g.file, "source.gguf.sha256": g.sha256,
        "source.gguf.text_files": g.text_files, "source.gguf.eval_fraction": 0.25,
        "harvest.context_size": 16, "harvest.n_train_sequences": 48, "harvest.n_eval_sequences": 16,
        "harvest.sequences_per_shard": 16, "train.steps": 60, "eval.model_max_sequences": 16,
    })
    manifest = harvest(cfg, cfg.run_dir / "activations", progress=False)
    src = manifest["source"]
    assert src["kind"] == "gguf" and src["wrapper"] == "TransformerBridge" and src["bos_token"] == "<s>"
    assert src["packages"] == PARTS and src["sha256"] == g.sha256
    store = ActivationStore.open(cfg.run_dir / "activations")
    batch = next(store.split("eval").batches(16))
    assert (batch.tokens_BT[:, 0] == 0).all() and batch.special_BT[:, 0].all(), "BOS first in every context, marked special"
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    result = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False, model=load_model(cfg))
    perf = result["eval_result_metrics"]["model_performance_preservation"]
    assert all(math.isfinite(v) for v in perf.values())
    # the clean CE is the GGUF model's own loss on those contexts, as transformers computes it
    with torch.no_grad():
        logp_BSV = torch.log_softmax(_hf_reference(packaged)(batch.tokens_BT).logits[:, :-1], dim=-1)
    nll_BS = -logp_BSV.gather(-1, batch.tokens_BT[:, 1:, None]).squeeze(-1)
    counted_BS = ~batch.special_BT[:, :-1] & ~batch.special_BT[:, 1:]
    assert perf["ce_loss_without_sae"] == pytest.approx(float(nll_BS[counted_BS].mean()), rel=1e-5)


def _huge_bos_model(model, factor: float = 1000.0):
    """The tiny model with its BOS embedding scaled up, so the residual norm at BOS dwarfs the rest."""
    emb = model.original_model.get_input_embeddings().weight
    with torch.no_grad():
        emb[0] *= factor
    return model


def test_huge_bos_norm_stays_out_of_scaling_factor_training_and_metrics(packaged, tmp_path, monkeypatch):
    from tsae_core import harvest as harvest_module
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.harvest import harvest
    from tsae_core.sources.gguf_model import load_gguf_model, model_source
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    g, _ = packaged
    model = _huge_bos_model(load_gguf_model(g))
    cfg = ci_config(tmp_path, **{
        "source.kind": "gguf", "source.hook_name": HOOK, "source.gguf.packages": g.packages, "source.gguf.file": g.file,
        "source.gguf.sha256": g.sha256, "harvest.context_size": 16, "harvest.n_train_sequences": 48,
        "harvest.n_eval_sequences": 16, "harvest.sequences_per_shard": 16, "train.steps": 200,
        "variants.topk.k": 8, "eval.model_max_sequences": 16,
    })
    source = model_source(model, TINY_TEXTS, HOOK, 16, {"kind": "gguf"}, eval_fraction=0.25,
                          max_contexts={"train": 48, "eval": 16})
    monkeypatch.setattr(harvest_module, "make_source", lambda cfg, progress=True: source)
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")

    train = next(store.split("train").batches(48, shuffle=False))
    norms_BT = train.acts_BTD.double().norm(dim=-1)
    bos_norm, token_norm = norms_BT[train.special_BT].mean(), norms_BT[~train.special_BT].mean()
    assert bos_norm > 50 * token_norm, "the stand-in's BOS is an outlier like Gemma's"
    assert store.scaling_factor == pytest.approx(math.sqrt(32) / float(token_norm), rel=1e-6)
    assert store.scaling_factor > 2 * math.sqrt(32) / float(norms_BT.mean()), "BOS would have shrunk it"

    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    result = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False, model=model)
    m = result["eval_result_metrics"]
    ev = next(store.split("eval").batches(16, shuffle=False))
    eval_norms = ev.acts_BTD.double().norm(dim=-1)
    assert m["shrinkage"]["l2_norm_in"] == pytest.approx(float(eval_norms[~ev.special_BT].mean()), rel=1e-5)
    assert m["token_stats"]["total_tokens_counted"] == int((~ev.special_BT).sum())
    # Trained with BOS in its loss, the SAE would spend itself on one direction ~1000x larger than the rest.
    assert m["reconstruction_quality"]["explained_variance"] > 0.8
    counted = int((~ev.special_BT[:, :-1] & ~ev.special_BT[:, 1:]).sum())
    assert m["model_token_stats"]["total_tokens_eval_model"] == counted


def test_random_init_reinitialises_the_bridged_model_from_its_config(packaged, bridge):
    """`source.random_init` through a TransformerBridge: the HF model rebuilt from its config by
    `transformers` under the seed; same architecture and tokenizer, other weights."""
    from tsae_core.sources.gguf_model import load_gguf_model

    a, b = load_gguf_model(packaged[0], random_init_seed=5), load_gguf_model(packaged[0], random_init_seed=5)
    assert a.cfg.n_layers == bridge.cfg.n_layers and a.cfg.d_model == bridge.cfg.d_model
    assert a.tokenizer.get_vocab() == bridge.tokenizer.get_vocab()
    sa, sb, st = a.state_dict(), b.state_dict(), bridge.state_dict()
    assert sa.keys() == st.keys() and all(sa[k].shape == st[k].shape for k in sa)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "the same seed gives the same weights"
    assert sum(not torch.allclose(sa[k], st[k]) for k in sa if sa[k].dim() == 2) >= 4, "the weight matrices are new"
    tokens_BT = torch.tensor([[0, 22, 10, 7, 29, 5]])
    assert not torch.allclose(a(tokens_BT), bridge(tokens_BT), atol=1e-3)
