"""The language-model path end to end on a tiny model: harvest with tokens and boundaries, SAE
training, and the model-preservation metrics in the SAEBench-core layout."""

from __future__ import annotations

import math

import pytest

from tests.conftest import ci_config
from tsae_core.evals.core import evaluate_variant
from tsae_core.harvest import harvest
from tsae_core.store import ActivationStore
from tsae_core.train import train_variant

TINY_MODEL = {
    "source.kind": "tinylm",
    "source.hook_name": "blocks.0.hook_resid_post",
    "source.model_batch_size": 32,
    "source.tinylm.n_layers": 1,
    "source.tinylm.d_model": 32,
    "source.tinylm.n_heads": 2,
    "source.tinylm.d_mlp": 64,
    "source.tinylm.train_steps": 40,
    "source.tinylm.warmup": 4,
    "source.tinylm.batch_size": 16,
    "source.tinylm.max_documents": 300,
    "source.tinylm.eval_contexts": 16,
    "harvest.context_size": 64,
    "harvest.n_train_sequences": 192,
    "harvest.n_eval_sequences": 48,
    "eval.model_max_sequences": 32,
}


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("TSAE_CACHE", str(tmp_path_factory.mktemp("cache")))
    cfg = ci_config(tmp_path_factory.mktemp("lm"), **TINY_MODEL)
    manifest = harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    result = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    yield cfg, manifest, store, result
    mp.undo()


def test_harvest_records_the_model_tokens_and_boundaries(lm_run):
    cfg, manifest, store, _ = lm_run
    src = manifest["source"]
    assert src["kind"] == "tinylm" and src["hook_name"] == "blocks.0.hook_resid_post"
    assert src["heldout_loss"] < src["unigram_loss"], "even a tiny trained model beats the unigram baseline"
    assert store.d_in == 32 and store.context_size == 64
    batch = next(store.split("eval").batches(8))
    assert batch.tokens_BT is not None and batch.special_BT[:, 0].all(), "every context starts with BOS"
    assert batch.doc_start_BT.any() and store.ground_truth() is None


def test_model_preservation_metrics_are_reported(lm_run):
    _, _, _, result = lm_run
    m = result["eval_result_metrics"]
    perf, behav = m["model_performance_preservation"], m["model_behavior_preservation"]
    for v in (*perf.values(), *behav.values()):
        assert v is not None and math.isfinite(v)
    assert perf["ce_loss_with_ablation"] > perf["ce_loss_without_sae"], "zero-ablating the residual stream hurts"
    assert perf["ce_loss_increase"] == pytest.approx(perf["ce_loss_with_sae"] - perf["ce_loss_without_sae"])
    assert perf["ce_loss_score"] <= 1.0 + 1e-6 and behav["kl_div_with_sae"] >= 0
    assert "ground_truth" not in result


def test_core_eval_json_validates_against_saebench_schema(lm_run):
    from tests.saebench_schema import saebench_schema, schema_errors

    _, _, _, result = lm_run
    assert schema_errors(result, saebench_schema("core")) == []
    misc = result["eval_result_metrics"]["misc_metrics"]
    assert 0 < misc["frac_alive"] <= 1 and 0 <= misc["freq_over_10_percent"] <= misc["freq_over_1_percent"] <= 1
    assert result["sae_cfg_dict"]["architecture"] == "topk" and result["sae_lens_version"] is None
