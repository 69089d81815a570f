"""Seeds and sweeps: several trainings per variant, reported as mean ± std; grids expanded into variants."""

from __future__ import annotations

import pytest

from tests.conftest import ci_config
from tsae_core.aggregate import aggregate_seeds
from tsae_core.config import ConfigError
from tsae_core.evals.core import evaluate_variant, summary_table
from tsae_core.plots import plot_all


def test_one_sae_per_variant_and_seed(tmp_path):
    cfg = ci_config(tmp_path, **{"run.seeds": [0, 1, 2]})
    names = [i.name for i in cfg.instances()]
    assert len(names) == 3 * len(cfg.variants) and "topk-seed2" in names
    assert {i.seed for i in cfg.instances() if i.variant == "topk"} == {0, 1, 2}
    assert [i.name for i in ci_config(tmp_path).instances()] == list(ci_config(tmp_path).variants), "one seed: plain names"
    with pytest.raises(ConfigError, match="run.seeds"):
        ci_config(tmp_path, **{"run.seeds": [1, 1]})


def test_sweep_expands_into_named_variants_with_their_knobs(tmp_path):
    cfg = ci_config(tmp_path, **{"sweep": {"grid": {"variant": "contrastive",
                                                    "grid": {"options.window": [2, 4], "options.coefficient": [0.01, 1.0]}}}})
    points = cfg.sweep_points()
    assert set(points) == {f"contrastive-window{w}-coefficient{c}" for w in (2, 4) for c in (0.01, 1.0)}
    v = cfg.variants["contrastive-window4-coefficient0.01"]
    assert v.options["window"] == 4 and v.options["coefficient"] == 0.01
    assert v.options["queue_size"] == cfg.variants["contrastive"].options["queue_size"], "other knobs are the variant's"
    assert points["contrastive-window4-coefficient0.01"]["knobs"] == {"options.window": 4, "options.coefficient": 0.01}


@pytest.mark.parametrize("sweep, words", [
    ({"s": {"variant": "nope", "grid": {"k": [2]}}}, "sweep.s.variant"),
    ({"s": {"variant": "topk", "grid": {"kk": [2]}}}, "unknown key"),
    ({"s": {"variant": "topk", "grid": {"k": [-1]}}}, "k"),
    ({"s": {"variant": "topk", "grid": {}}}, "sweep.s.grid"),
])
def test_bad_sweeps_are_named_errors(tmp_path, sweep, words):
    with pytest.raises(ConfigError) as e:
        ci_config(tmp_path, sweep=sweep)
    assert words in str(e.value) and "ci.yaml" in str(e.value)


def _fake_eval(variant, seed, ev, sweep=None):
    return {"variant": variant, "seed": seed, "sweep": sweep, "health": {"healthy": True, "problems": []},
            "eval_result_metrics": {"reconstruction_quality": {"explained_variance": ev, "cossim": ev},
                                    "sparsity": {"l0": 4.0, "dead_fraction": 0.0}},
            "temporal": {"autocorr_mean_by_lag": [ev, ev / 2]}}


def test_aggregate_gives_mean_and_sample_std_per_variant():
    evals = {f"topk-seed{s}": _fake_eval("topk", s, ev) for s, ev in enumerate([0.8, 0.9, 1.0])}
    evals["relu"] = _fake_eval("relu", 0, 0.5)
    agg = aggregate_seeds(evals)
    assert set(agg) == {"topk", "relu"} and agg["topk"]["n_seeds"] == 3 and agg["topk"]["seeds"] == [0, 1, 2]
    ev = agg["topk"]["eval_result_metrics"]["reconstruction_quality"]["explained_variance"]
    std = agg["topk"]["seed_std"]["eval_result_metrics"]["reconstruction_quality"]["explained_variance"]
    assert ev == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert agg["topk"]["temporal"]["autocorr_mean_by_lag"] == pytest.approx([0.9, 0.45])
    assert agg["relu"]["seed_std"] == {}
    rows = {r["variant"]: r for r in summary_table(evals)}
    assert rows["topk"]["explained_variance"] == "0.9000 ± 0.1000" and rows["relu"]["explained_variance"] == "0.5000"


def test_seeds_and_a_sweep_end_to_end_with_error_bars_and_an_ablation_figure(harvested, tmp_path):
    from tsae_core.train import train_variant

    cfg0, store = harvested
    cfg = ci_config(tmp_path, **{
        "run.seeds": [0, 1],
        "variants": {"topk": {"activation": "topk", "d_sae": 64, "k": 4},
                     "consistency": {"architecture": "consistency", "activation": "topk", "d_sae": 64, "k": 4}},
        "sweep": {"coef": {"variant": "consistency", "grid": {"options.coefficient": [0.01, 1.0]}}},
        "train.steps": 40, "train.checkpoint_every": 0,
    })
    evals = {}
    for inst in cfg.instances():
        train_variant(cfg, inst.name, store, cfg.run_dir, progress=False)
        evals[inst.name] = evaluate_variant(cfg, inst.name, store, cfg.run_dir, progress=False)
    assert len(evals) == 8 and evals["consistency-coefficient1.0-seed1"]["sweep"]["knobs"] == {"options.coefficient": 1.0}
    a, b = (evals[f"topk-seed{s}"]["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] for s in (0, 1))
    assert a != b, "two seeds train two different SAEs"
    paths = {p.name: p for p in plot_all(evals, {}, {}, tmp_path / "figures", dpi=40)}
    assert "ablation_consistency.png" in paths
    import json

    recon = json.loads(paths["reconstruction_metrics.png"].with_suffix(".json").read_text())
    assert recon["variants"] == ["topk", "consistency"], "sweep points are left out of the comparison figures"
    assert recon["explained_variance_seed_std"][0] == pytest.approx(abs(a - b) / 2**0.5, rel=1e-6)
    ablation = json.loads(paths["ablation_consistency.png"].with_suffix(".json").read_text())
    series = ablation["sweeps"]["coef"]["series"]["coef"]["explained_variance"]
    # the variant as configured (default coefficient 0.1) is the middle point of the sweep
    assert ablation["sweeps"]["coef"]["values"] == [0.01, 0.1, 1.0] and all(v is not None for v in series["mean"])
    assert all(s is not None for s in series["seed_std"])
