"""Mechanism tests: the runner trains each prior at 0, 1 and 10 times its coefficient with paired seeds
and reads the statistic the prior targets; here on the tiny CI source, for the machinery and for the
priors whose mechanism shows even at this size (the full tests: `python -m tsae_core.mechanisms`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tsae_core.config import apply_overrides, read_params
from tsae_core.mechanisms import LEVELS, format_table, mechanism_config, run_mechanism

PRIORS = ["consistency", "orthogonal", "jumprelu"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    base = apply_overrides(read_params(Path("params/ci.yaml")), {
        "run.out_dir": str(tmp_path_factory.mktemp("mechanisms")), "train.steps": 200, "train.target_l0": 4,
        "train.checkpoint_every": 0, "probing.enabled": False, "unlearning.enabled": False})
    base["variants"] = {"topk": {"activation": "topk", "d_sae": 64, "k": 4}}
    cfg = mechanism_config(base, PRIORS, [0, 1], "params/ci.yaml")
    return run_mechanism(cfg, PRIORS)


def test_every_prior_is_read_at_every_level_and_seed(results):
    for prior in PRIORS:
        r = results[prior]
        assert [row["level"] for row in r["levels"]] == list(LEVELS) and r["seeds"] == [0, 1]
        assert all(len(row["values"]) == 2 for row in r["levels"])
        assert r["verdict"] in ("acts", "does not act")
        moved = [row for row in r["levels"] if row["level"]]
        assert all(row["interval"][0] <= row["paired_difference"] <= row["interval"][1] for row in moved)
    assert "consistency" in format_table(results) and "paired vs 0" in format_table(results)


def test_the_coefficient_zero_sae_is_the_same_topk_for_every_prior(results):
    """Common random numbers: at coefficient 0 consistency and orthogonal are TopK with TopK's initial values
    and batches, so what each level changes is the prior's doing."""
    ev = {p: [row for row in results[p]["levels"] if row["level"] == 0][0]["explained_variance"] for p in ("consistency", "orthogonal")}
    assert ev["consistency"] == pytest.approx(ev["orthogonal"], abs=1e-6)


def test_jumprelu_l0_penalty_brings_l0_to_its_target(results):
    r = results["jumprelu"]
    assert r["verdict"] == "acts", format_table({"jumprelu": r})
    without, default = r["levels"][0]["mean"], r["levels"][1]["mean"]
    assert default < 0.2 and without > 2 * default, format_table({"jumprelu": r})
