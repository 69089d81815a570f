"""Figures: every plot writes a valid PNG and the JSON of what it drew, and tolerates missing values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tsae_core import plots
from tsae_core.io import write_json, write_text
from tsae_core.plots import common as plots_common
from tsae_core.plots import metrics as plots_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VARIANTS = ("topk", "batchtopk", "relu")


def _eval(variant: str, ev: float, l0: float, seed: int, ground_truth: bool = True) -> dict:
    rng = np.random.default_rng(seed)
    decay = np.exp(-np.arange(1, 33) / (4 + seed))
    kinds = {
        k: {
            "n_features": n,
            "mmcs": float(rng.uniform(0.6, 1)),
            "frac_recovered": float(rng.uniform(0.2, 1)),
            "act_corr": float(rng.uniform(0.5, 1)),
        }
        for k, n in [("fast", 128), ("slow", 96), ("positional", 32), ("rare", 48), ("rare_fast", 24), ("rare_slow", 24)]
    }
    out = {
        "eval_type_id": "core",
        "variant": variant,
        "sae_cfg": {"architecture": "standard", "activation": variant, "d_in": 64, "d_sae": 512, "k": 4},
        "eval_result_metrics": {
            "reconstruction_quality": {
                "explained_variance": ev,
                "explained_variance_legacy": ev - 0.01,
                "mse": 1e-3 * (1 - ev) * 20,
                "cossim": 0.5 + ev / 2,
            },
            "shrinkage": {
                "l2_norm_in": 1.2,
                "l2_norm_out": 1.1,
                "l2_ratio": 0.9 + 0.03 * seed,
                "relative_reconstruction_bias": 0.98,
            },
            "sparsity": {"l0": l0, "l0_sparse": l0, "l1": 1.3 * l0, "dead_fraction": 0.01 * (seed + 1), "dense_fraction": 0.0},
            "token_stats": {"total_tokens_eval_reconstruction": 16384, "total_tokens_eval_sparsity_variance": 65536,
                            "total_tokens_counted": 65000},
            "model_behavior_preservation": {
                "kl_div_score": 0.98 - 0.05 * seed,
                "kl_div_with_ablation": 6.0,
                "kl_div_with_sae": 0.12 * (seed + 1),
            },
            "model_performance_preservation": {
                "ce_loss_score": 0.97 - 0.06 * seed,
                "ce_loss_with_ablation": 9.5,
                "ce_loss_with_sae": 3.3 + 0.2 * seed,
                "ce_loss_without_sae": 3.2,
                "ce_loss_increase": 0.1 + 0.2 * seed,
            },
            "model_token_stats": {"total_tokens_eval_model": 16000},
        },
        "temporal": {
            "autocorr_lag1_mean": float(decay[0]),
            "autocorr_lag1_mean_control": 0.01,
            "autocorr_mean_by_lag": (0.6 * decay).tolist(),
            "autocorr_mean_by_lag_control": (0.01 * rng.standard_normal(32)).tolist(),
            "run_length_ratio_mean": 1.5 + seed,
            "run_length_ratio_mean_control": 1.0,
            "mutual_information_mean": 0.02 * (seed + 1),
            "mutual_information_mean_control": 0.001,
            "n_alive": 480,
            "autocorr_mean_by_lag_doc_shuffled": (0.2 * decay).tolist(),
            "position_dependence_mean": 0.02 * (seed + 1),
            "position_dependence_control_mean": 0.004,
            "fvu_by_position": {"bins": [*range(16), 16, 23, 32, 45, 64, 91],
                                "fvu": (0.1 + 0.01 * seed + 0.2 * np.exp(-np.arange(22) / 3)).tolist()},
        },
        "redundancy": {"score": 0.3 + 0.1 * seed, "control": 0.1, "max_lag": 4, "score_by_lag": [0.3, 0.25, 0.2, 0.2],
                       "control_by_lag": [0.1] * 4, "top_pairs": [{"i": 3, "j": 9, "lag": 2, "corr": 0.97}]},
        "geometry": {"max_decoder_cos_mean": 0.4 + 0.1 * seed, "max_decoder_cos_p50": 0.38, "max_decoder_cos_p90": 0.7,
                     "max_decoder_cos_p99": 0.95, "share_above_0_9": 0.02 * (seed + 1),
                     "max_decoder_cos_histogram": {"edges": np.linspace(0, 1, 51).tolist(),
                                                   "counts": rng.integers(0, 20, 50).tolist()}},
        "health": {"healthy": True, "problems": []},
    }
    if ground_truth:
        out["ground_truth"] = {
            "threshold": 0.9,
            "true_l0": 4.0,
            "by_kind": kinds,
            "overall": {"n_features": 256, "mmcs": 0.93, "frac_recovered": 0.85, "act_corr": 0.9},
        }
    return out


def _curve(variant: str, n: int = 60) -> list[dict]:
    speed = {"topk": 15, "batchtopk": 12}.get(variant, 20)
    recs = []
    for i in range(n):
        step, tokens = 50 * i, 50 * i * 4096
        rec = {
            "step": step,
            "tokens": tokens,
            "loss": 1 / (1 + i),
            "loss_recon": 0.9 / (1 + i),
            "fvu": 0.5 * math.exp(-i / speed) + 0.02,
            "l0": 4 + 60 * math.exp(-i / 5) if variant == "relu" else 4.0,
            "dead_fraction": 0.2 * math.exp(-i / speed),
            "lr": 2e-4 * min(1, (i + 1) / 10),
            "sparsity_scale": min(1.0, i / 10),
            "tokens_per_s": 1e5,
        }
        rec["loss_l1" if variant == "relu" else "loss_aux_k"] = 0.01 / (1 + i)
        recs.append(rec)
    return recs


def _clusters(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    kinds = ["slow", "fast", "positional", "unmatched"]
    centres = rng.normal(0, 5, (4, 2))
    kind_idx = rng.integers(0, 4, 300)
    labels = np.where(rng.random(300) < 0.8, kind_idx, rng.integers(0, 4, 300))
    xy = centres[labels] + rng.normal(0, 1, (300, 2))
    counts = [[int(((labels == c) & (kind_idx == k)).sum()) for k in range(4)] for c in range(4)]
    return {
        "embedding_2d": xy.tolist(),
        "labels": labels.tolist(),
        "latent_kind": [kinds[k] for k in kind_idx],
        "contingency": {"clusters": [0, 1, 2, 3], "kinds": kinds, "counts": counts},
        "ari": 0.42 + seed / 10,
        "nmi": 0.5,
    }


@pytest.fixture
def evals() -> dict[str, dict]:
    out = {v: _eval(v, ev, l0, s) for s, (v, ev, l0) in enumerate(zip(VARIANTS, (0.95, 0.93, 0.81), (4.0, 4.2, 11.5)))}
    out["batchtopk"]["eval_result_metrics"]["reconstruction_quality"]["cossim"] = None  # a metric that failed
    out["relu"]["ground_truth"]["by_kind"].pop("positional")  # a kind this variant has no result for
    return out


@pytest.fixture
def curves() -> dict[str, list[dict]]:
    return {v: _curve(v) for v in VARIANTS}


def _check_png(path: Path | None, name: str) -> dict:
    """The figure is a real PNG of reasonable size; returns the JSON of plotted numbers beside it."""
    assert path is not None and path.name == f"{name}.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000
    assert not list(path.parent.glob(".*.tmp")), "atomic writes leave no temporary files"
    numbers = json.loads(path.with_suffix(".json").read_text())
    assert numbers["figure"] == name and "tsae" in numbers
    return numbers


def test_reconstruction_metrics_records_the_plotted_explained_variance(evals, tmp_path):
    numbers = _check_png(plots.plot_reconstruction_metrics(evals, tmp_path), "reconstruction_metrics")
    by_variant = dict(zip(numbers["variants"], numbers["explained_variance"]))
    assert by_variant == pytest.approx({"topk": 0.95, "batchtopk": 0.93, "relu": 0.81})
    assert dict(zip(numbers["variants"], numbers["cossim"]))["batchtopk"] is None


def test_sparsity_metrics_records_l0_and_true_l0(evals, tmp_path):
    numbers = _check_png(plots.plot_sparsity_metrics(evals, tmp_path), "sparsity_metrics")
    assert dict(zip(numbers["variants"], numbers["l0"]))["relu"] == pytest.approx(11.5)
    assert numbers["true_l0"] == pytest.approx(4.0)


def test_model_preservation_records_scores_and_ce_increase(evals, tmp_path):
    evals["relu"]["eval_result_metrics"]["model_performance_preservation"]["ce_loss_score"] = float("nan")  # 0 / 0
    evals["batchtopk"]["eval_result_metrics"].pop("model_behavior_preservation")
    numbers = _check_png(plots.plot_model_preservation(evals, tmp_path), "model_preservation")
    assert numbers["variants"] == ["topk", "batchtopk", "relu"]
    assert numbers["ce_loss_score"] == pytest.approx([0.97, 0.91, None])
    assert numbers["kl_div_score"] == [pytest.approx(0.98), None, pytest.approx(0.88)]
    assert numbers["ce_loss_increase"] == pytest.approx([0.1, 0.3, 0.5])
    assert numbers["ce_loss_without_sae"] == pytest.approx([3.2] * 3)


def test_model_preservation_only_for_variants_with_a_model_eval(evals, tmp_path):
    evals["topk"]["eval_result_metrics"].pop("model_performance_preservation")
    numbers = _check_png(plots.plot_model_preservation(evals, tmp_path), "model_preservation")
    assert numbers["variants"] == ["batchtopk", "relu"]
    for e in evals.values():
        e["eval_result_metrics"].pop("model_performance_preservation", None)
    (tmp_path / "model_preservation.png").unlink()
    assert plots.plot_model_preservation(evals, tmp_path) is None
    assert not (tmp_path / "model_preservation.png").exists()


def test_training_metrics_records_every_curve(curves, tmp_path):
    numbers = _check_png(plots.plot_training_metrics(curves, tmp_path), "training_metrics")
    assert set(numbers["variants"]) == set(VARIANTS)
    relu = numbers["variants"]["relu"]
    assert relu["fvu"] == pytest.approx([r["fvu"] for r in curves["relu"]])
    assert relu["tokens"][-1] == pytest.approx(curves["relu"][-1]["tokens"])


def test_final_metrics_table_matches_inputs(evals, tmp_path):
    numbers = _check_png(plots.plot_final_metrics(evals, tmp_path), "final_metrics")
    row = numbers["variants"].index("topk")
    assert numbers["explained_variance"][row] == pytest.approx(0.95)
    assert numbers["gt_mmcs"][row] == pytest.approx(0.93)
    assert numbers["cossim"][numbers["variants"].index("batchtopk")] is None


def test_gt_recovery_by_kind_and_threshold(evals, tmp_path):
    numbers = _check_png(plots.plot_gt_recovery(evals, tmp_path), "gt_recovery")
    assert numbers["threshold"] == pytest.approx(0.9)
    assert numbers["kinds"] == ["overall", "fast", "slow", "positional", "rare_fast", "rare_slow"]
    expected = evals["topk"]["ground_truth"]["by_kind"]["slow"]["frac_recovered"]
    assert numbers["frac_recovered"]["topk"][2] == pytest.approx(expected)
    assert numbers["mmcs"]["relu"][3] is None  # relu has no positional group: drawn as n/a


def test_gt_recovery_skips_without_ground_truth(evals, tmp_path):
    for e in evals.values():
        e.pop("ground_truth")
    assert plots.plot_gt_recovery(evals, tmp_path) is None
    assert not (tmp_path / "gt_recovery.png").exists()


def test_temporal_metrics_records_autocorr_and_controls(evals, tmp_path):
    numbers = _check_png(plots.plot_temporal_metrics(evals, tmp_path), "temporal_metrics")
    assert numbers["autocorr"]["topk"]["by_lag"] == pytest.approx(evals["topk"]["temporal"]["autocorr_mean_by_lag"])
    assert numbers["run_length_ratio"]["control"] == pytest.approx([1.0, 1.0, 1.0])


def test_temporal_metrics_records_the_within_document_control(evals, tmp_path):
    numbers = _check_png(plots.plot_temporal_metrics(evals, tmp_path), "temporal_metrics")
    want = evals["relu"]["temporal"]["autocorr_mean_by_lag_doc_shuffled"]
    assert numbers["autocorr"]["relu"]["doc_shuffled"] == pytest.approx(want)


def test_autocorrelation_has_a_panel_per_variant_with_both_controls(evals, tmp_path):
    evals["relu"]["health"] = {"healthy": False, "problems": ["L0 = 0: no latent fires"]}
    numbers = _check_png(plots.plot_autocorrelation(evals, tmp_path), "autocorrelation")
    assert numbers["variants"] == list(evals) and numbers["unhealthy"] == ["relu"]
    t = evals["relu"]["temporal"]
    assert numbers["autocorr"]["relu"]["by_lag"] == pytest.approx(t["autocorr_mean_by_lag"])
    assert numbers["autocorr"]["relu"]["control"] == pytest.approx(t["autocorr_mean_by_lag_control"])
    assert numbers["autocorr"]["relu"]["doc_shuffled"] == pytest.approx(t["autocorr_mean_by_lag_doc_shuffled"])


def test_position_dependence_records_bars_and_curves(evals, tmp_path):
    numbers = _check_png(plots.plot_position_dependence(evals, tmp_path), "position_dependence")
    assert numbers["position_dependence"]["actual"] == pytest.approx([0.02, 0.04, 0.06])
    assert numbers["position_dependence"]["control"] == pytest.approx([0.004] * 3)
    curve = numbers["fvu_by_position"]["batchtopk"]
    assert curve["bins"][-1] == 91 and curve["fvu"] == pytest.approx(evals["batchtopk"]["temporal"]["fvu_by_position"]["fvu"])


def test_redundancy_records_score_control_and_top_pairs(evals, tmp_path):
    evals["batchtopk"].pop("redundancy")  # not evaluated with it: left out
    numbers = _check_png(plots.plot_redundancy(evals, tmp_path), "redundancy")
    assert numbers["variants"] == ["topk", "relu"]
    assert numbers["redundancy"]["actual"] == pytest.approx([0.3, 0.5]) and numbers["redundancy"]["control"] == pytest.approx([0.1, 0.1])
    assert numbers["top_pairs"]["topk"][0] == {"i": 3, "j": 9, "lag": 2, "corr": 0.97}


def test_decoder_geometry_records_distribution_and_summaries(evals, tmp_path):
    numbers = _check_png(plots.plot_decoder_geometry(evals, tmp_path), "decoder_geometry")
    share = numbers["share_at_least"]["topk"]["share"]
    assert share[0] == pytest.approx(1.0) and all(a >= b for a, b in zip(share, share[1:]))
    counts = evals["topk"]["geometry"]["max_decoder_cos_histogram"]["counts"]
    assert share[45] == pytest.approx(sum(counts[45:]) / sum(counts))  # at or above cos 0.9
    assert numbers["share_above_0_9"] == pytest.approx([0.02, 0.04, 0.06])
    assert numbers["max_decoder_cos_p90"] == pytest.approx([0.7] * 3)


def test_feature_clusters_records_scores(tmp_path):
    result = {"topk": _clusters(0), "relu": _clusters(1)}
    numbers = _check_png(plots.plot_feature_clusters(result, tmp_path), "feature_clusters")
    assert numbers["variants"]["relu"]["ari"] == pytest.approx(0.52)
    assert numbers["variants"]["topk"]["contingency"]["counts"] == result["topk"]["contingency"]["counts"]


def test_plots_survive_missing_sections_and_values(evals, curves, tmp_path):
    evals["relu"].pop("ground_truth")
    evals["relu"].pop("temporal")
    evals["topk"]["eval_result_metrics"]["sparsity"]["l0"] = None
    evals["topk"]["temporal"]["autocorr_mean_by_lag"][3] = None
    curves["batchtopk"][5]["fvu"] = None
    paths = plots.plot_all(evals, curves, {"topk": _clusters(0)}, tmp_path)
    names = [p.stem for p in paths]
    assert names == [
        "reconstruction_metrics",
        "sparsity_metrics",
        "model_preservation",
        "training_metrics",
        "final_metrics",
        "gt_recovery",
        "temporal_metrics",
        "autocorrelation",
        "position_dependence",
        "redundancy",
        "decoder_geometry",
        "feature_clusters",
    ]
    for p in paths:
        _check_png(p, p.stem)
    gt = json.loads((tmp_path / "gt_recovery.json").read_text())
    assert gt["variants"] == ["topk", "batchtopk"]
    # Every variant keeps its colour from figure to figure.
    colors = [json.loads((tmp_path / f"{n}.json").read_text())["colors"] for n in names[:-1]]
    assert all(c["topk"] == colors[0]["topk"] for c in colors)


def test_plots_without_any_ground_truth_or_temporal_section(evals, tmp_path):
    for e in evals.values():
        e.pop("ground_truth")
        e.pop("temporal")
    assert plots.plot_temporal_metrics(evals, tmp_path) is None
    _check_png(plots.plot_sparsity_metrics(evals, tmp_path), "sparsity_metrics")
    _check_png(plots.plot_final_metrics(evals, tmp_path), "final_metrics")


def test_loaders_read_a_run_directory(evals, curves, tmp_path):
    for v in VARIANTS:
        write_json(tmp_path / "eval" / f"{v}.json", evals[v])
        write_text(tmp_path / "train" / f"{v}.jsonl", "".join(json.dumps(r) + "\n" for r in curves[v]))
    with (tmp_path / "train" / "relu.jsonl").open("a") as f:
        f.write('{"step": 99')  # a line still being written
    assert list(plots.load_evals(tmp_path / "eval")) == sorted(VARIANTS)
    loaded = plots.load_curves(tmp_path / "train")
    assert list(loaded) == sorted(VARIANTS)
    assert loaded["relu"] == curves["relu"]


def test_variant_colors_are_stable_and_distinct():
    a = plots.variant_colors(["topk", "relu", "consistency", "my_new_variant"])
    b = plots.variant_colors(["consistency", "topk"])
    assert a["topk"] == b["topk"] and a["consistency"] == b["consistency"]
    assert len(set(a.values())) == 4


def test_unhealthy_saes_are_marked_in_every_comparison_figure(evals, tmp_path, monkeypatch):
    """An SAE whose verdict is unhealthy is named as such on the axis, in red, and listed beside the figure."""
    for v in evals:
        evals[v]["health"] = {"healthy": v != "relu", "problems": [] if v != "relu" else ["not sparse"]}
    labels = []
    real = plots_common._mark_unhealthy
    monkeypatch.setattr(plots_common, "_mark_unhealthy", lambda ticks, sick: (labels.append([t for t in ticks]), real(ticks, sick)))
    monkeypatch.setattr(plots_metrics, "_mark_unhealthy", plots_common._mark_unhealthy)
    for fn, name in ((plots.plot_reconstruction_metrics, "reconstruction_metrics"), (plots.plot_model_preservation, "model_preservation"),
                     (plots.plot_final_metrics, "final_metrics"), (plots.plot_position_dependence, "position_dependence"),
                     (plots.plot_redundancy, "redundancy"), (plots.plot_decoder_geometry, "decoder_geometry")):
        labels.clear()
        assert _check_png(fn(evals, tmp_path), name)["unhealthy"] == ["relu"]
        shown = {t.get_text(): t.get_color() for ticks in labels for t in ticks}
        assert shown["relu (unhealthy)"] == plots_common.UNHEALTHY_COLOR and "topk" in shown, shown
    for v in evals:
        evals[v]["health"]["healthy"] = True
    assert _check_png(plots.plot_final_metrics(evals, tmp_path), "final_metrics")["unhealthy"] == []


def test_knob_values_sort_by_number_across_ints_and_floats():
    from tsae_core.plots.ablation import knob_order

    assert sorted([4, 0.5, 2.0, 1, "auto", None], key=knob_order) == [0.5, 1, 2.0, 4, "auto", None]
