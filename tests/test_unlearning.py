"""The unlearning eval: sets, latent selection, the clamp, the score, the control, files and figure,
on hand-built cases, the tiny synthetic CI run and a tiny language model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import ci_config
from tests.test_language_model_pipeline import TINY_MODEL
from tsae_core.config import INTERNET_PACKAGES, UnlearningConfig
from tsae_core.evals.unlearning.data import build_unlearning_data, forget_retain_texts
from tsae_core.evals.unlearning.run import (
    evaluate_unlearning,
    evaluate_unlearning_run,
    evaluate_unlearning_variant,
    skipped_reason,
    unlearning_path,
)
from tsae_core.evals.unlearning.selection import LatentStats, clamp_edit, latent_stats, random_latents, select_latents
from tsae_core.evals.unlearning.sweep import score
from tsae_core.sae import SAEConfig
from tsae_core.sources.corpus import _unit_hash, python_docs_documents
from tsae_core.train import train_variant
from tsae_core.typed import ConfigError
from tsae_core.variants.registry import build_sae


# ------------------------------------------------------------------ the clamp
def test_clamp_changes_only_selected_active_latents():
    g = torch.Generator().manual_seed(0)
    N, T, k, D = 3, 5, 2, 4
    feats = torch.relu(torch.randn(N, T, k, generator=g))
    feats[2] = 0.0  # a context where no selected latent is active
    special = torch.zeros(N, T, dtype=torch.bool)
    special[:, 0] = True
    W = torch.randn(k, D, generator=g)
    values = torch.tensor([-3.0, -5.0])
    delta, changed = clamp_edit(feats, special, values, W, scaling_factor=2.0)
    active = (feats > 0) & ~special[..., None]
    expected = (torch.where(active, values - feats, 0.0) @ W) / 2.0
    torch.testing.assert_close(delta, expected)
    assert delta[:, 0].abs().max() == 0, "special tokens are never edited"
    assert delta[~active.any(-1)].abs().max() == 0, "tokens where no selected latent fires are never edited"
    assert changed.tolist() == [bool(active[0].any()), bool(active[1].any()), False]
    # latent 1 alone: the edit is that latent's decoder row times its change, nothing of latent 0
    d1, _ = clamp_edit(feats[..., 1:], special, values[1:], W[1:], 2.0)
    only1 = (torch.where(active[..., 1:], values[1:] - feats[..., 1:], 0.0) @ W[1:]) / 2.0
    torch.testing.assert_close(d1, only1)
    # an empty selection, or latents that never fire, edit nothing
    d0, c0 = clamp_edit(feats[..., :0], special, values[:0], W[:0], 2.0)
    assert d0.abs().max() == 0 and not c0.any()
    dz, cz = clamp_edit(torch.zeros(N, T, k), special, values, W, 2.0)
    assert dz.abs().max() == 0 and not cz.any()


def test_the_edit_keeps_the_sae_error_term():
    """x' - x equals the change of the SAE's reconstruction when the clamped code is decoded."""
    sae = build_sae(SAEConfig("standard", "topk", d_in=8, d_sae=32, k=4, activation_scaling_factor=1.7))
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(1))
    out = sae(x)
    latents = torch.tensor([3, 7, 11])
    values = torch.tensor([-1.0, -2.0, -4.0])
    special = torch.zeros(2, 6, dtype=torch.bool)
    delta, _ = clamp_edit(out.features[..., latents], special, values, sae.W_dec.detach()[latents], 1.7)
    clamped = out.features.clone()
    sub = clamped[..., latents]
    clamped[..., latents] = torch.where(sub > 0, values, sub)
    recon_after = sae.decode(clamped) / 1.7
    torch.testing.assert_close(x + delta - (x - out.recon), recon_after.detach(), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ selection
def _stats(pf, pr, n_retain=1000):
    return LatentStats(torch.tensor(pf, dtype=torch.float64), torch.tensor(pr, dtype=torch.float64),
                       torch.ones(len(pf)), 1000, n_retain)


def test_selection_respects_the_threshold_and_ranks_by_ratio():
    # ratios with eps = 1/1000: 0:0.1/0.011≈9.1, 1:0.05/0.001=50, 2:0.2/0.051 (over threshold), 3:0.02/0.001=20,
    # 4: never on forget, 5: 0.05/0.001=50 (ties with 1: equal ratio and p_f -> lower index first), 6: 0.3/0.021≈14.3
    pf = [0.1, 0.05, 0.2, 0.02, 0.0, 0.05, 0.3]
    pr = [0.01, 0.0, 0.05, 0.0, 0.0, 0.0, 0.02]
    assert select_latents(_stats(pf, pr), 0.02, 10) == [1, 5, 3, 6, 0]
    assert select_latents(_stats(pf, pr), 0.02, 2) == [1, 5]
    assert select_latents(_stats(pf, pr), 0.0, 10) == [1, 5, 3], "threshold 0: only latents that never fire on retain"
    assert 2 not in select_latents(_stats(pf, pr), 0.049, 10) and 2 in select_latents(_stats(pf, pr), 0.05, 10)
    # equal ratio, different p_f: the larger p_f first
    assert select_latents(_stats([0.1, 0.2], [0.25, 0.75], n_retain=4), 1.0, 2) == [1, 0]


def test_latent_stats_count_forget_and_retain_tokens():
    feats = torch.zeros(2, 4, 3)
    feats[0, 1, 0] = 2.0  # latent 0 fires on one forget token
    feats[1, 2, 1] = 4.0  # latent 1 fires on one retain token ...
    feats[0, 3, 1] = 2.0  # ... and on one forget token
    feats[1, 0, 2] = 9.0  # latent 2 fires only on a special token: not counted
    special = torch.zeros(2, 4, dtype=torch.bool)
    special[:, 0] = True
    forget = torch.zeros(2, 4, dtype=torch.bool)
    forget[0] = True
    forget &= ~special
    retain = ~special & ~forget
    s = latent_stats(feats, forget, retain)
    assert s.n_forget == 3 and s.n_retain == 3
    assert s.forget_freq_F.tolist() == pytest.approx([1 / 3, 1 / 3, 0.0])
    assert s.retain_freq_F.tolist() == pytest.approx([0.0, 1 / 3, 0.0])
    assert s.scale_F.tolist() == pytest.approx([2.0, 3.0, 0.0])
    assert s.alive_F.tolist() == [True, True, False]


def test_random_control_is_seeded_and_drawn_from_the_eligible_alive_latents():
    pf = [0.1, 0.0, 0.2, 0.0, 0.3, 0.05]
    pr = [0.0, 0.0, 0.5, 0.001, 0.0, 0.0]
    s = _stats(pf, pr)
    a, b = random_latents(s, 0.01, seed=0), random_latents(s, 0.01, seed=0)
    assert a == b and sorted(a) == [0, 3, 4, 5], "alive (fires somewhere) and retain frequency under the threshold"
    assert any(random_latents(s, 0.01, seed=k) != a for k in range(1, 6)), "another seed, another order"


# ------------------------------------------------------------------ score
def test_score_respects_the_retain_constraint():
    rows = [{"forget_effect": 0.5, "retain_cost": 0.02},  # largest effect, breaks the constraint
            {"forget_effect": 0.2, "retain_cost": 0.01},  # at the limit: admissible
            {"forget_effect": 0.3, "retain_cost": 0.0101},
            {"forget_effect": 0.1, "retain_cost": 0.0}]
    assert score(rows, 0.01) == (0.2, 1)
    assert score(rows, 0.05) == (0.5, 0)
    assert score([{"forget_effect": -0.1, "retain_cost": 0.0}], 0.01) == (0.0, None), "doing nothing scores 0"
    assert score(rows, 0.001) == (0.1, 3)


# ------------------------------------------------------------------ sets
def test_forget_and_retain_sets_are_disjoint_named_packages_split_in_halves():
    settings = UnlearningConfig(max_contexts=10_000, min_contexts=1)
    texts = forget_retain_texts(settings)
    docs = [d for d in python_docs_documents() if d.kind == "docstring"]
    package = {d.text: d.package for d in docs}
    forget = texts["forget_select"] + texts["forget_test"]
    retain = texts["retain_select"] + texts["retain_test"]
    assert 300 <= len(forget) <= 800, "a few hundred forget docstrings"
    assert all(package[t] in INTERNET_PACKAGES for t in forget)
    assert all(package[t] not in INTERNET_PACKAGES for t in retain)
    assert not set(forget) & set(retain)
    for name in ("forget", "retain"):
        sel, test = texts[f"{name}_select"], texts[f"{name}_test"]
        assert not set(sel) & set(test) and sel and test
        assert all(_unit_hash(t, 0) < 0.5 for t in sel) and all(_unit_hash(t, 0) >= 0.5 for t in test)
    assert texts["packages"]["email"] > 50
    small = forget_retain_texts(UnlearningConfig(max_contexts=8, min_contexts=1))
    assert all(len(small[k]) == 8 for k in ("forget_select", "forget_test", "retain_select", "retain_test"))
    assert set(small["forget_select"]) <= set(texts["forget_select"])
    with pytest.raises(ValueError, match="min_contexts"):
        forget_retain_texts(UnlearningConfig(forget_packages=["graphlib"], min_contexts=16))


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError, match="multipliers"):
        UnlearningConfig(multipliers=[0.0])
    with pytest.raises(ConfigError, match="retain_thresholds"):
        UnlearningConfig(retain_thresholds=[1.5])
    with pytest.raises(ConfigError, match="max_contexts"):
        UnlearningConfig(max_contexts=4, min_contexts=8)


# ------------------------------------------------------------------ synthetic CI run
@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore

    cfg = ci_config(tmp_path_factory.mktemp("unlearn_syn"))
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    for name in ("topk", "crosscoder"):
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
    return cfg


def test_synthetic_unlearning_end_to_end_and_reproducible(synthetic_run):
    cfg = synthetic_run
    data = build_unlearning_data(cfg)
    assert data.kind == "synthetic" and data.test.forget_NT.any() and data.test.retain_NT.any()
    assert not (data.test.forget_NT & data.test.retain_NT).any()
    from tsae_core.loading import load_sae

    sae = load_sae(cfg.run_dir / "saes" / "topk")
    a = evaluate_unlearning(sae, data)
    b = evaluate_unlearning(sae, build_unlearning_data(cfg))
    assert json.dumps(a["eval_result_details"]) == json.dumps(b["eval_result_details"]), "reproducible"
    assert a["control"]["runs"][0]["sweep"] == b["control"]["runs"][0]["sweep"]
    m = a["eval_result_metrics"]["unlearning"]
    rows = a["eval_result_details"]
    assert len(rows) == 2 * 3 * 3 and a["eval_type_id"] == "unlearning" and a["skipped"] is None
    assert m["unlearning_score"] == score(rows, 0.01)[0] >= 0
    for r in rows:
        assert r["admissible"] == (r["retain_damage"] <= 0.01) and r["n_latents"] <= r["n_latents_requested"]
        assert r["retain_damage"] >= 0
        if r["n_latents"] == 0:
            assert r["forget_damage"] == 0 and r["retain_damage"] == 0
    assert any(r["forget_damage"] > 0.05 for r in rows), "clamping forget latents removes forget signal"
    assert set(a["control"]["runs"][0]["sweep"][i]["n_latents"] for i in range(len(rows))) <= {r["n_latents"] for r in rows}


def test_crosscoder_is_skipped_with_the_reason(synthetic_run):
    cfg = synthetic_run
    result = evaluate_unlearning_variant(cfg, "crosscoder", cfg.run_dir, build_unlearning_data(cfg), force=True)
    assert "not causal" in result["skipped"] and result["eval_result_metrics"]["unlearning"]["unlearning_score"] is None
    assert json.loads(unlearning_path(cfg.run_dir, "crosscoder").read_text())["skipped"] == result["skipped"]


def test_file_is_kept_while_weights_settings_and_code_are_unchanged(synthetic_run, capsys):
    cfg = synthetic_run
    calls = []

    def data_of(c):
        def data():
            calls.append(1)
            return build_unlearning_data(c)
        return data

    data = data_of(cfg)
    first = evaluate_unlearning_variant(cfg, "topk", cfg.run_dir, data, force=True)
    path = unlearning_path(cfg.run_dir, "topk")
    assert path.is_file() and first["eval_key"] and first["sae_weights_sha256"] and first["instance"] == "topk"
    again = evaluate_unlearning_variant(cfg, "topk", cfg.run_dir, data)
    assert again["eval_key"] == first["eval_key"] and len(calls) == 1, "kept: the data are not even built"
    assert "kept" in capsys.readouterr().out
    other = ci_config(cfg.run.out_dir, **{"unlearning.multipliers": [1.0, 2.0]})
    changed = evaluate_unlearning_variant(other, "topk", cfg.run_dir, data_of(other))
    assert len(calls) == 2 and changed["eval_key"] != first["eval_key"], "other settings: evaluated again"
    assert len(changed["eval_result_details"]) == 2 * 3 * 2
    assert evaluate_unlearning_run(ci_config(cfg.run.out_dir, **{"unlearning.enabled": False})) == {}


def test_figure(synthetic_run, tmp_path):
    from tsae_core.plots.unlearning import plot_unlearning

    cfg = synthetic_run
    data = build_unlearning_data(cfg)
    results = {n: evaluate_unlearning_variant(cfg, n, cfg.run_dir, data) for n in ("topk", "crosscoder")}
    png = plot_unlearning(results, tmp_path)
    assert png is not None and png.is_file() and png.stat().st_size > 10_000
    drawn = json.loads(png.with_suffix(".json").read_text())
    assert drawn["unlearning_score"][drawn["variants"].index("crosscoder")] is None
    assert "crosscoder" in drawn["skipped"] and set(drawn["sweeps"]) == {"topk"}
    assert plot_unlearning({}, tmp_path) is None


# ------------------------------------------------------------------ tiny language model
def test_skipped_reason_of_causal_variants():
    for arch, opts in (("standard", {}), ("predictive", {"window": 4, "heads": 2}), ("conv", {"buffer": 2})):
        sae = build_sae(SAEConfig(arch, "topk", d_in=8, d_sae=16, k=2, options=opts))
        assert skipped_reason(sae) is None, arch


@pytest.fixture(scope="module")
def lm_unlearning(tmp_path_factory):
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore

    mp = pytest.MonkeyPatch()
    mp.setenv("TSAE_CACHE", str(tmp_path_factory.mktemp("cache")))
    cfg = ci_config(tmp_path_factory.mktemp("lm_unlearn"), **TINY_MODEL, **{
        "unlearning.max_contexts": 16, "unlearning.min_contexts": 8, "unlearning.n_latents": [2, 8],
        "unlearning.multipliers": [1.0, 10.0], "unlearning.control_seeds": [0, 1]})
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    train_variant(cfg, "predictive", store, cfg.run_dir, progress=False)
    results = evaluate_unlearning_run(cfg, names=["topk", "predictive"], progress=False)
    yield cfg, results
    mp.undo()


def test_language_model_unlearning_end_to_end(lm_unlearning):
    cfg, results = lm_unlearning
    for name, r in results.items():
        assert r["skipped"] is None and r["variant"] == name
        m = r["eval_result_metrics"]["unlearning"]
        clean_f, clean_r = m["clean_forget_ce"], m["clean_retain_ce"]
        assert 0 < clean_f < 10 and 0 < clean_r < 10
        rows = r["eval_result_details"]
        assert len(rows) == 2 * 2 * 2
        for row in rows:
            assert row["forget_ce_increase"] == pytest.approx(row["forget_ce"] - clean_f)
            assert row["retain_ce_increase_relative"] == pytest.approx((row["retain_ce"] - clean_r) / clean_r)
            if row["n_latents"] == 0:
                assert row["forget_ce"] == clean_f and row["retain_ce"] == clean_r
        assert m["unlearning_score"] == pytest.approx(score(rows, 0.01)[0])
        assert m["unlearning_score_relative"] == pytest.approx(m["unlearning_score"] / clean_f)
        best = m["best_point"]
        if best is not None:
            assert rows[best]["retain_ce_increase_relative"] <= 0.01
        assert len(r["control"]["runs"]) == 2 and math.isfinite(m["control_unlearning_score"])
        assert r["eval_config"]["n_contexts"] == {"forget_select": 16, "forget_test": 16, "retain_select": 16, "retain_test": 16}
        assert unlearning_path(cfg.run_dir, name).is_file()
    # the largest clamp changes the forget CE
    assert any(abs(row["forget_ce_increase"]) > 1e-4 for row in results["topk"]["eval_result_details"])


def test_restart_at_the_hook_matches_run_with_hooks(lm_unlearning):
    from tsae_core.evals.unlearning.data import _lm_runner
    from tsae_core.sources.factory import load_model

    cfg, _ = lm_unlearning
    model = load_model(cfg)
    tokens = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 256
    _, cache = model.run_with_cache(tokens, names_filter=cfg.source.hook_name)
    x = cache[cfg.source.hook_name]
    delta = 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    fast = _lm_runner(model, cfg.source.hook_name)(tokens, x, delta)
    hooked = model.run_with_hooks(tokens, fwd_hooks=[(cfg.source.hook_name, lambda a, hook: a + delta)])
    torch.testing.assert_close(fast, hooked, atol=1e-4, rtol=1e-4)


def test_unlearning_json_validates_against_saebench_schema(synthetic_run):
    """A scored file holds what SAEBench's schema requires; a skipped one breaks it only by having no
    score (None rather than a number SAEBench would read as a result)."""
    from tests.saebench_schema import saebench_schema, schema_errors

    cfg = synthetic_run
    schema = saebench_schema("unlearning")
    data = build_unlearning_data(cfg)
    scored = evaluate_unlearning_variant(cfg, "topk", cfg.run_dir, data, force=True)
    assert schema_errors(scored, schema) == []
    skipped = evaluate_unlearning_variant(cfg, "crosscoder", cfg.run_dir, data, force=True)
    assert schema_errors(skipped, schema) == ["eval_result_metrics/unlearning/unlearning_score: None is not of type 'number'"]
