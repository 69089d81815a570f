"""The comparison verdict: each variant against its token-wise baseline, with paired intervals over seeds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from tsae_core import plots
from tsae_core.comparison import compare_variants, find_baselines, welch_interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _eval(variant: str, seed: int | None, ev: float, l0: float = 4.0, architecture: str | None = None,
          activation: str = "topk", d_sae: int = 512, healthy: bool = True, **extra) -> dict:
    """An eval JSON with the fields the comparison reads; `extra` adds sections (temporal, ground_truth)."""
    return {
        "variant": variant,
        "instance": variant if seed is None else f"{variant}-seed{seed}",
        "seed": seed,
        "sweep": None,
        "sae_cfg": {"architecture": architecture or variant, "activation": activation, "d_sae": d_sae, "k": 4},
        "eval_result_metrics": {
            "reconstruction_quality": {"explained_variance": ev},
            "sparsity": {"l0": l0, "dead_fraction": 0.05},
        },
        "health": {"healthy": healthy, "problems": [] if healthy else ["51% of latents never fire on the eval split"]},
        **extra,
    }


def _seeds(variant: str, evs: list[float], **kw) -> dict[str, dict]:
    return {f"{variant}-seed{s}": _eval(variant, s, ev, **kw) for s, ev in enumerate(evs)}


def _row(rows: list[dict], variant: str, metric: str) -> dict:
    [row] = [r for r in rows if r["variant"] == variant and r["metric"] == metric]
    return row


BASE_EV = [0.900, 0.905, 0.895]
BETTER_EV = [0.930, 0.934, 0.925]


@pytest.fixture
def three_seeds() -> dict[str, dict]:
    """A topk baseline and a consistency variant clearly better on EV, three seeds each."""
    return {**_seeds("topk", BASE_EV, architecture="standard"), **_seeds("consistency", BETTER_EV)}


def test_three_paired_seeds_give_a_paired_t_interval_excluding_zero(three_seeds):
    row = _row(compare_variants(three_seeds), "consistency", "explained_variance")
    d = np.array(BETTER_EV) - np.array(BASE_EV)  # the same seed on both sides: common random numbers
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert row["baseline"] == "topk" and row["n_variant"] == row["n_baseline"] == row["n_paired"] == 3
    assert row["interval_kind"] == "paired"
    assert row["difference"] == pytest.approx(d.mean()) and d.mean() == pytest.approx(0.0297, abs=1e-4)
    assert row["interval"] == pytest.approx([d.mean() - half, d.mean() + half], rel=1e-9)
    assert row["half_width"] == pytest.approx(half, rel=1e-9)
    assert row["interval"][0] > 0 and row["verdict"] == "better"
    assert _row(compare_variants(three_seeds), "consistency", "l0")["verdict"] == "matched"


def test_pairing_removes_the_noise_that_seeds_share():
    """Seed-to-seed noise common to both sides (data order, initial values) cancels in paired differences:
    a small, consistent gain is detected where comparing the two groups' means (Welch) cannot tell."""
    base = [0.880, 0.900, 0.920]
    gain = [b + 0.002 + e for b, e in zip(base, (0.0, 0.0003, -0.0002))]
    paired = _row(compare_variants({**_seeds("topk", base, architecture="standard"), **_seeds("consistency", gain)}),
                  "consistency", "explained_variance")
    assert paired["interval_kind"] == "paired" and paired["verdict"] == "better"
    unpaired = {**{f"topk-seed{s}": _eval("topk", s, ev, architecture="standard") for s, ev in zip((3, 4, 5), base)},
                **_seeds("consistency", gain)}
    welch = _row(compare_variants(unpaired), "consistency", "explained_variance")
    assert welch["interval_kind"] == "welch" and welch["n_paired"] == 0
    assert welch["interval"] == pytest.approx(list(welch_interval(gain, base)), rel=1e-9)
    assert welch["verdict"] == "no detectable difference"


def test_lower_is_better_metric_turns_a_rise_into_worse(three_seeds):
    for e in three_seeds.values():  # the variant leaves ten times more latents dead
        if e["variant"] == "consistency":
            e["eval_result_metrics"]["sparsity"]["dead_fraction"] = 0.5 + 0.01 * e["seed"]
    assert _row(compare_variants(three_seeds), "consistency", "dead_fraction")["verdict"] == "worse"


def test_overlapping_seeds_give_no_detectable_difference():
    evals = {**_seeds("topk", BASE_EV, architecture="standard"), **_seeds("consistency", [0.897, 0.908, 0.899])}
    row = _row(compare_variants(evals), "consistency", "explained_variance")
    lo, hi = row["interval"]
    assert lo < 0 < hi
    assert row["verdict"] == "no detectable difference"


def test_one_seed_gives_the_difference_and_no_interval():
    evals = {"topk": _eval("topk", None, 0.90, architecture="standard"), "consistency": _eval("consistency", None, 0.93)}
    row = _row(compare_variants(evals), "consistency", "explained_variance")
    assert row["difference"] == pytest.approx(0.03)
    assert row["interval"] is None and row["half_width"] is None
    assert row["verdict"] == "one seed: no interval"


def test_unhealthy_baseline_excludes_every_row_and_names_the_problem(three_seeds):
    three_seeds["topk-seed1"]["health"] = {"healthy": False, "problems": ["CE loss score 0.587 < 0.8"]}
    rows = compare_variants(three_seeds)
    assert rows and all(r["verdict"] == "excluded: unhealthy (topk-seed1: CE loss score 0.587 < 0.8)" for r in rows)


def test_l0_off_by_twenty_percent_is_not_matched(three_seeds):
    for e in three_seeds.values():
        if e["variant"] == "consistency":
            e["eval_result_metrics"]["sparsity"]["l0"] = 4.8
    rows = compare_variants(three_seeds)
    l0 = _row(rows, "consistency", "l0")
    assert l0["relative_difference"] == pytest.approx(0.2)
    assert l0["verdict"] == "not matched: a token's reconstruction reads 4.8 latents against 4.0 for topk"
    assert all(r["l0_matched"] is False for r in rows)
    assert _row(rows, "consistency", "explained_variance")["verdict"] == "better"  # the statistics stay; the flag qualifies them


def test_matching_counts_every_latent_a_token_reconstruction_reads(three_seeds):
    """A predictive-like variant spends 4 sparse codes but its tokens also read a dense predicted code
    of 211 latents: not matched against TopK at 4, and the verdict names both L0s."""
    for e in three_seeds.values():
        if e["variant"] == "consistency":
            e["eval_result_metrics"]["sparsity"].update(l0=4.0, l0_sparse=4.0, l0_reconstruction=211.0)
    row = _row(compare_variants(three_seeds), "consistency", "l0")
    assert row["variant_value"] == pytest.approx(211.0) and row["l0_sparse_variant"] == pytest.approx(4.0)
    assert row["verdict"] == ("not matched: a token's reconstruction reads 211.0 latents against 4.0 for topk "
                              "(sparse code: 4.0 against 4.0)")


def test_a_window_code_is_matched_against_the_topk_at_its_reconstruction_l0(three_seeds):
    """A crosscoder-like variant whose tokens read k T = 16 latents takes the TopK at k 16 of the run as
    its baseline (matched), not the one at k 4."""
    evals = {**three_seeds, **_seeds("topk-k16", [0.95, 0.951, 0.949], architecture="standard", l0=16.0)}
    for e in evals.values():
        if e["variant"] == "consistency":
            e["eval_result_metrics"]["sparsity"].update(l0=16.0, l0_sparse=4.0, l0_reconstruction=16.0)
    assert find_baselines(evals)["consistency"] == "topk-k16"
    assert _row(compare_variants(evals), "consistency", "l0")["verdict"] == "matched"


def test_absent_optional_metrics_give_no_rows_not_nan(three_seeds):
    for e in three_seeds.values():
        e["temporal"] = {"autocorr_lag1_mean": 0.2 + 0.01 * e["seed"], "autocorr_lag1_mean_control": None}
    three_seeds["consistency-seed0"]["redundancy"] = {"score": 0.1}  # on the variant only
    rows = compare_variants(three_seeds)
    metrics = {r["metric"] for r in rows}
    assert metrics == {"explained_variance", "l0", "dead_fraction", "autocorr_lag1"}
    assert all(np.isfinite(r["difference"]) for r in rows)


def test_baseline_rule_same_activation_then_same_d_sae_then_canonical_name():
    evals = {
        "topk": _eval("topk", None, 0.9, architecture="standard", d_sae=256),
        "topk-wide": _eval("topk-wide", None, 0.9, architecture="standard"),
        "jr-small": _eval("jr-small", None, 0.9, architecture="standard", activation="jumprelu"),
        "jumprelu": _eval("jumprelu", None, 0.9, architecture="standard", activation="jumprelu"),
        "consistency": _eval("consistency", None, 0.9),
        "consistency-narrow": _eval("consistency-narrow", None, 0.9, architecture="consistency", d_sae=256),
        "matryoshka": _eval("matryoshka", None, 0.9, activation="batchtopk"),
        "swept": {**_eval("swept", None, 0.9, architecture="consistency"), "sweep": {"sweep": "w", "variant": "consistency"}},
        "conv": _eval("conv", None, 0.9, activation="jumprelu", d_sae=1024),
    }
    assert find_baselines(evals) == {
        "consistency": "topk-wide", "consistency-narrow": "topk", "matryoshka": None, "conv": "jumprelu",
    }


def test_identical_seeds_give_a_zero_width_interval():
    assert welch_interval([4.0, 4.0, 4.0], [4.0, 4.0]) == (0.0, 0.0)


@pytest.mark.filterwarnings("ignore:constrained_layout not applied")  # plot_all's bar grids of these sparse evals
def test_figure_and_json_are_written(three_seeds, tmp_path):
    evals = {**three_seeds, **_seeds("contrastive", [0.899, 0.903, 0.901]),
             **_seeds("orthogonal", BETTER_EV, healthy=False), **_seeds("relu", [0.8, 0.81], architecture="standard",
                                                                         activation="relu")}
    for e in evals.values():
        e["ground_truth"] = {"overall": {"frac_recovered": 0.9}, "by_kind": {"slow": {"frac_recovered": 0.8}}}
    png = plots.plot_comparison(evals, tmp_path)
    assert png == tmp_path / "comparison.png" and png.read_bytes().startswith(PNG_SIGNATURE)
    assert png.stat().st_size > 10_000
    numbers = json.loads(png.with_suffix(".json").read_text())
    assert numbers["figure"] == "comparison" and "tsae" in numbers
    assert numbers["baselines"] == {"consistency": "topk", "contrastive": "topk", "orthogonal": "topk"}
    assert numbers["variants"] == ["consistency", "contrastive", "orthogonal"]
    assert len(numbers["rows"]) == 3 * 5  # EV, L0, dead fraction, GT overall, GT slow
    verdicts = {(r["variant"], r["metric"]): r["verdict"] for r in numbers["rows"]}
    assert verdicts["consistency", "explained_variance"] == "better"
    assert verdicts["contrastive", "explained_variance"] == "no detectable difference"
    assert verdicts["orthogonal", "explained_variance"].startswith("excluded: unhealthy (orthogonal-seed0: 51% of latents")
    assert "comparison" in [p.stem for p in plots.plot_all(evals, {}, None, tmp_path / "all")]


def test_no_figure_without_any_baseline(tmp_path):
    evals = _seeds("contrastive", [0.9, 0.91]) | _seeds("orthogonal", [0.9, 0.92])
    assert compare_variants(evals) == []
    assert plots.plot_comparison(evals, tmp_path) is None and not (tmp_path / "comparison.png").exists()
