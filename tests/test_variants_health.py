"""Every variant of the synthetic benchmark trains to a healthy SAE next to its TopK baseline.

On `params/synthetic.yaml` with a shorter training (1500 steps; the ablations' budget), each temporal
variant built on TopK must be healthy, keep its explained variance within 0.05 of TopK's at the same L0,
and leave no more than 5 points more dead latents than TopK. JumpReLU has no TopK to match: it must land
within 10% of its target L0 (the target-L0 controller) and reconstruct within 0.05 of TopK's explained variance. Its pre-activation
loss keeps latents alive, but slowly: measured 5.9% dead at this budget against TopK's 0% (bounded here
at 8 points), and 0.4% against TopK's 21% at the benchmark's 5000 steps (the dead-only revival it
replaced left 53%).
"""

from __future__ import annotations

import pytest

from tsae_core.config import load_config
from tsae_core.evals.core import evaluate_variant
from tsae_core.harvest import harvest
from tsae_core.store import ActivationStore
from tsae_core.train import train_variant

pytestmark = pytest.mark.slow(minutes=10)  # its cost on 2 cores: the costliest files start first

STEPS = 1500


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cfg = load_config("params/synthetic.yaml", {"run.out_dir": str(tmp_path_factory.mktemp("family")), "train.steps": STEPS,
                                                "train.warmup_steps": 150})
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    out = {}
    for name, v in cfg.variants.items():
        if v.architecture != "standard" or name in ("topk", "jumprelu"):
            train_variant(cfg, name, store, cfg.run_dir, progress=False)
            out[name] = evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
    return cfg, out


def _core(r):
    """(EV, the L0 matched against TopK, dead fraction): a variant whose features are not its sparse
    code (crosscoder: a window's code seen from each token) reports the matched L0 as `l0_sparse`."""
    m = r["eval_result_metrics"]
    l0 = r.get("variant_metrics", {}).get("l0_sparse", m["sparsity"]["l0"])
    return m["reconstruction_quality"]["explained_variance"], l0, m["sparsity"]["dead_fraction"]


# Extra dead latents allowed beyond TopK's: 5 points, except Matryoshka, whose late latents reconstruct
# only as refinements of the earlier prefixes and die more often (measured: 6 points at 1500 steps here,
# 27% ± 6 against 21% ± 2 over 3 seeds at 5000 steps): a reported trade-off, bounded at 10 points.
EXTRA_DEAD = {"matryoshka": 0.10}
# Explained variance allowed below TopK's: 0.05, except the crosscoder (T = 4), whose latents tie to
# (feature, position) pairs and run short for fast features: measured 0.049 below TopK at this budget
# (0.847 against 0.896) and 0.034 at 5000 steps over 3 seeds; bounded at 0.06 so float noise across
# machines does not decide the test.
EV_GAP = {"crosscoder": 0.06}


TEMPORAL = ["consistency", "contrastive", "matryoshka", "orthogonal", "orthogonal_ortsae", "predictive", "crosscoder", "relational",
            "conv"]


CONTROLS = ["pooled"]


def test_every_temporal_variant_of_the_benchmark_is_checked(results):
    cfg, _ = results
    assert {v.architecture for v in cfg.variants.values()} - {"standard"} <= set(TEMPORAL + CONTROLS)


def test_the_smoother_control_persists_more_and_reconstructs_less(results):
    """The mean-pooled encoder is what a temporal statistic must beat: averaging 4 tokens alone raises
    lag-1 autocorrelation far above TopK's (measured 0.518 against 0.135 at this budget) and costs half
    the explained variance (0.427 against 0.896), the fast features being the ones it blurs."""
    _, r = results
    pooled, topk = r["pooled"], r["topk"]
    assert pooled["health"]["healthy"], pooled["health"]
    ev, l0, _ = _core(pooled)
    ev_topk, l0_topk, _ = _core(topk)
    assert l0 == pytest.approx(l0_topk, rel=0.1)
    assert pooled["temporal"]["autocorr_lag1_mean"] > topk["temporal"]["autocorr_lag1_mean"] + 0.2
    assert ev < ev_topk - 0.2
    kinds = pooled["ground_truth"]["by_kind"]
    assert kinds["slow"]["frac_recovered"] >= 0.9 > kinds["fast"]["frac_recovered"]


@pytest.mark.parametrize("variant", TEMPORAL)
def test_temporal_variant_is_as_healthy_as_topk(results, variant):
    cfg, r = results
    ev, l0, dead = _core(r[variant])
    ev_topk, l0_topk, dead_topk = _core(r["topk"])
    assert r[variant]["health"]["healthy"], r[variant]["health"]
    assert l0 == pytest.approx(l0_topk, rel=0.1), "compared at matched L0"
    assert ev >= ev_topk - EV_GAP.get(variant, 0.05), (ev, ev_topk)
    assert dead <= dead_topk + EXTRA_DEAD.get(variant, 0.05), (dead, dead_topk)


def test_jumprelu_reaches_its_target_and_reconstructs(results):
    cfg, r = results
    ev, l0, dead = _core(r["jumprelu"])
    assert l0 == pytest.approx(cfg.variants["jumprelu"].target_l0, rel=0.1)
    ev_topk, _, dead_topk = _core(r["topk"])
    assert ev >= ev_topk - 0.05, (ev, ev_topk)
    assert dead <= dead_topk + 0.08, (dead, dead_topk)
