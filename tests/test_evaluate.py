"""The eval JSON carries the position, redundancy and geometry analyses under their agreed keys, and
the per-latent arrays behind them land in `analysis/<instance>_latents.safetensors`."""

from __future__ import annotations

import math

import pytest
from safetensors.torch import load_file

from tests.conftest import ci_config
from tsae_core.evaluate import evaluate_variant, latents_path
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
