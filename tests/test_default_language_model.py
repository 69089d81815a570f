"""The offline default: the tiny model is a real language model and the TopK baseline on its
residual stream is a healthy SAE that preserves the model's behaviour.

Measured on the default params (2 x86 cores, CPython 3.11): held-out loss 1.579 nats/byte against
a unigram baseline of 3.318; TopK explained variance 0.954, L0 16, no dead latents, CE score 0.987,
KL score 0.989. The floors leave room for other CPUs and for another Python's standard library
(the corpus is its docstrings), not for a different outcome:
- held-out loss at most 60% of the unigram baseline (a model that learned nothing sits at 100%);
- explained variance >= 0.9, L0 = k, dead latents <= 10%;
- CE score >= 0.9 and KL score >= 0.9: splicing the SAE in loses at most a tenth of what
  zero-ablating the residual stream loses.
"""

from __future__ import annotations

import math

import pytest

from tsae_core.config import load_config
from tsae_core.evals.core import evaluate_variant
from tsae_core.harvest import harvest
from tsae_core.store import ActivationStore
from tsae_core.train import train_variant

pytestmark = pytest.mark.slow(minutes=2)  # its cost on 2 cores: the costliest files start first


@pytest.fixture(scope="module")
def default_topk(tmp_path_factory):
    cfg = load_config("params/default.yaml", {"run.out_dir": str(tmp_path_factory.mktemp("default_lm"))})
    manifest = harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    return cfg, manifest, evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)


def test_tiny_model_is_a_real_language_model(default_topk):
    _, manifest, _ = default_topk
    src = manifest["source"]
    assert src["heldout_loss"] <= 0.6 * src["unigram_loss"], src


def test_topk_baseline_is_healthy_and_preserves_the_model(default_topk):
    cfg, _, r = default_topk
    m = r["eval_result_metrics"]
    assert r["health"]["healthy"], r["health"]
    assert m["reconstruction_quality"]["explained_variance"] >= 0.9, m["reconstruction_quality"]
    assert m["sparsity"]["l0"] == pytest.approx(cfg.variants["topk"].k, abs=0.01)
    assert m["sparsity"]["dead_fraction"] <= 0.1, m["sparsity"]
    perf, behav = m["model_performance_preservation"], m["model_behavior_preservation"]
    assert all(math.isfinite(v) for v in (*perf.values(), *behav.values()))
    assert perf["ce_loss_score"] >= 0.9, perf
    assert behav["kl_div_score"] >= 0.9, behav
