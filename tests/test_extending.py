"""docs/extending.md, followed: a toy architecture (one class, registered) and a metric row of its own
go through training, evaluation and the comparison on the CI params, with nothing else changed."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.conftest import ci_config
from tsae_core import comparison
from tsae_core.comparison import Metric, compare_variants
from tsae_core.evals.core import evaluate_variant
from tsae_core.sae import SAE, LossContext, SAEOutput
from tsae_core.train import train_variant
from tsae_core.typed import check
from tsae_core.variants import registry


@dataclass(frozen=True)
class DecayOptions:
    coefficient: float = 0.01

    def __post_init__(self) -> None:
        check(self.coefficient >= 0, "options.coefficient", "must be >= 0")


class DecaySAE(SAE):
    """The page's example: TopK with a penalty on the codes' energy."""

    Options = DecayOptions

    def loss_terms(self, out: SAEOutput, ctx: LossContext):
        terms = super().loss_terms(out, ctx)
        terms["decay"] = self.options.coefficient * out.features.pow(2).mean()
        return terms

    def extra_metrics(self):
        return {"decay_coefficient": self.options.coefficient}


@pytest.fixture
def decay_registered(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "decay", DecaySAE)
    yield


def test_register_variant_refuses_what_is_not_an_sae_or_a_taken_name(monkeypatch):
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    with pytest.raises(TypeError, match="subclass of tsae_core.sae.SAE"):
        registry.register_variant("decay", dict)
    with pytest.raises(ValueError, match="already ConsistencySAE"):
        registry.register_variant("consistency", DecaySAE)
    registry.register_variant("decay", DecaySAE)
    assert registry.variant_class("decay") is DecaySAE and "decay" in registry.architectures()


def test_a_toy_variant_and_metric_run_through_training_evaluation_and_comparison(decay_registered, harvested, tmp_path,
                                                                                   monkeypatch):
    _, store = harvested
    with pytest.raises(Exception, match="options.coefficient"):  # its options are checked with the params
        ci_config(tmp_path, **{"variants": {"decay": {"architecture": "decay", "options": {"coefficient": -1}}}, "sweep": {}})
    cfg = ci_config(tmp_path, **{
        "variants": {"topk": {"activation": "topk", "d_sae": 64, "k": 4},
                     "decay": {"architecture": "decay", "activation": "topk", "d_sae": 64, "k": 4,
                               "options": {"coefficient": 0.5}}},
        "sweep": {}, "train.steps": 30, "train.checkpoint_every": 0,
        "probing.enabled": False, "unlearning.enabled": False,
    })
    evals = {}
    for name in cfg.variants:
        summary = train_variant(cfg, name, store, cfg.run_dir, progress=False)
        assert summary["steps"] == 30
        evals[name] = evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
    curves = [json.loads(line) for line in (cfg.run_dir / "train" / "decay.jsonl").read_text().splitlines()]
    assert curves and all(r["loss_decay"] > 0 for r in curves)  # its term is logged as loss_<key>
    assert evals["decay"]["sae_cfg"]["options"] == {"coefficient": 0.5}
    assert evals["decay"]["geometry"]["decay_coefficient"] == 0.5  # extra_metrics land under geometry
    assert evals["decay"]["health"]["healthy"], evals["decay"]["health"]

    # the metric: one row in METRICS, and the comparison compares it, variant against its baseline
    cossim = Metric("cossim", "cosine\nsimilarity", (("eval_result_metrics", "reconstruction_quality", "cossim"),), "higher")
    monkeypatch.setattr(comparison, "METRICS", (*comparison.METRICS, cossim))
    rows = [r for r in compare_variants(evals) if r["variant"] == "decay"]
    assert {r["baseline"] for r in rows} == {"topk"}
    row = next(r for r in rows if r["metric"] == "cossim")
    assert row["variant_value"] == pytest.approx(evals["decay"]["eval_result_metrics"]["reconstruction_quality"]["cossim"])
    assert row["baseline_value"] == pytest.approx(evals["topk"]["eval_result_metrics"]["reconstruction_quality"]["cossim"])
