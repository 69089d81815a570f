"""The eval JSON carries the position, redundancy and geometry analyses under their agreed keys, and
the per-latent arrays behind them land in `analysis/<instance>_latents.safetensors`."""

from __future__ import annotations

import dataclasses
import math

import pytest
from safetensors.torch import load_file

from tests.conftest import ci_config
from tsae_core.evals.core import evaluate_sae, evaluate_variant, latents_path
from tsae_core.loading import load_sae
from tsae_core.stage_outputs import output_problems
from tsae_core.train import train_variant


@pytest.fixture(scope="module")
def evaluated(harvested, tmp_path_factory):
    _, store = harvested
    cfg = ci_config(tmp_path_factory.mktemp("eval"), **{
        "variants": {"topk": {"activation": "topk", "d_sae": 64, "k": 4},
                     "orthogonal": {"architecture": "orthogonal", "activation": "topk", "d_sae": 64, "k": 4,
                                    "options": {"group_size": 16, "regroup_every": 10}}},
        "sweep": {}, "train.steps": 30, "train.checkpoint_every": 0,
        "probing.enabled": False, "unlearning.enabled": False,  # the core eval alone (their files: their own tests)
    })
    results = {}
    for name in cfg.variants:
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
        results[name] = evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
    return cfg, store, results


def _finite(x):
    return isinstance(x, float) and math.isfinite(x)


def test_temporal_section_has_position_dependence_and_both_controls(evaluated):
    _, store, results = evaluated
    t = results["topk"]["temporal"]
    for key in ("position_dependence_mean", "position_dependence_control_mean", "autocorr_lag1_doc_shuffled_mean"):
        assert _finite(t[key]), key
    assert 0 <= t["position_dependence_control_mean"] <= 1 and len(t["autocorr_mean_by_lag_doc_shuffled"]) == t["max_lag"]
    fvu = t["fvu_by_position"]
    assert fvu["bins"][:3] == [0, 1, 2] and len(fvu["fvu"]) == len(fvu["bins"]) == len(fvu["n_tokens"])
    assert sum(fvu["n_tokens"]) == t["n_tokens"]
    assert all(v is None or v >= 0 for v in fvu["fvu"])


def test_redundancy_section(evaluated):
    cfg, _, results = evaluated
    r = results["topk"]["redundancy"]
    assert _finite(r["score"]) and _finite(r["control"]) and r["max_lag"] == results["topk"]["eval_config"]["redundancy_max_lag"]
    assert 0 < len(r["top_pairs"]) <= 20
    for p in r["top_pairs"]:
        assert {"i", "j", "lag", "corr"} <= set(p) and p["i"] != p["j"] and 1 <= p["lag"] <= r["max_lag"]
    corrs = [p["corr"] for p in r["top_pairs"]]
    assert corrs == sorted(corrs, reverse=True)


def test_geometry_section_keeps_the_variant_numbers(evaluated):
    _, _, results = evaluated
    for name in ("topk", "orthogonal"):
        g = results[name]["geometry"]
        assert 0 < g["max_decoder_cos_mean"] <= 1 and g["max_decoder_cos_p50"] <= g["max_decoder_cos_p90"] <= g["max_decoder_cos_p99"]
        assert 0 <= g["share_above_0_9"] <= 1
    ortho = results["orthogonal"]["geometry"]
    assert "orthogonal_groups" in ortho, "the variant's own geometry stays"
    assert ortho["group_condition"]["n_groups"] == 4 and ortho["group_condition"]["condition_number_median"] >= 1
    assert "group_condition" not in results["topk"]["geometry"]


def test_per_latent_arrays_are_written_and_belong_to_the_evaluation(evaluated):
    cfg, store, results = evaluated
    path = latents_path(cfg.run_dir, "topk")
    latents = load_file(path)
    assert set(latents) >= {"alive", "position_dependence", "position_dependence_control", "max_decoder_cos", "redundancy",
                            "redundancy_partner", "redundancy_control"}
    assert all(v.shape == (64,) for v in latents.values())
    alive = latents["alive"]
    assert float(latents["max_decoder_cos"].mean()) == pytest.approx(results["topk"]["geometry"]["max_decoder_cos_mean"], rel=1e-5)
    assert float(latents["redundancy"][alive].mean()) == pytest.approx(results["topk"]["redundancy"]["score"], rel=1e-5)
    assert output_problems("evaluate", cfg) == []
    path.unlink()
    assert output_problems("evaluate", cfg) == [f"{path} is missing"]
    again = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)  # not kept: its latents were gone
    assert path.is_file() and again["redundancy"]["score"] == pytest.approx(results["topk"]["redundancy"]["score"])


def test_synthetic_eval_json_breaks_saebench_schema_only_where_there_is_no_model(evaluated):
    """Without a language model there are no CE/KL sections, the only keys SAEBench's core schema
    then misses. Both SAEs encode token by token at inference, so both carry their SAELens config."""
    from tests.saebench_schema import saebench_schema, schema_errors

    _, _, results = evaluated
    schema = saebench_schema("core")
    for name, result in results.items():
        errors = schema_errors(result, schema)
        assert sorted(errors) == sorted(f"eval_result_metrics: '{s}' is a required property"
                                        for s in ("model_behavior_preservation", "model_performance_preservation")), name
    assert results["topk"]["sae_cfg_dict"]["architecture"] == results["orthogonal"]["sae_cfg_dict"]["architecture"] == "topk"
    misc = results["topk"]["eval_result_metrics"]["misc_metrics"]
    freq = results["topk"]["eval_result_unstructured"]["feature_frequencies"]
    assert misc["frac_alive"] == pytest.approx(sum(f > 0 for f in freq) / len(freq))
    assert misc["freq_over_1_percent"] == pytest.approx(sum(f > 0.01 for f in freq) / len(freq))
    share = sum(f for f in freq if f > 0.1) / sum(freq)
    assert misc["normalized_freq_over_10_percent"] == pytest.approx(share)
    assert 0 < misc["average_max_decoder_cosine_sim"] < 1 and 0 < misc["average_max_encoder_cosine_sim"] < 1


def test_eval_config_records_the_sequences_read_not_the_cap(evaluated):
    cfg, store, _ = evaluated
    n_split = store.split("eval").n_sequences
    sae = load_sae(cfg.run_dir / "saes" / "topk")
    for cap, read in ((n_split + 100, n_split), (2, 2)):
        capped = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, max_sequences=cap))
        result = evaluate_sae(sae, store, capped, "topk", progress=False)
        assert result["eval_config"]["n_sequences"] == read
