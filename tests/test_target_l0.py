"""A target L0 for penalised SAEs: the controller's rule, one `train.target_l0` for a whole comparison,
and training that lands on the target from a coefficient 10x too small and 10x too large."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import ci_config
from tsae_core.config import ConfigError, config_from_dict
from tsae_core.evals.core import evaluate_variant
from tsae_core.loading import load_sae
from tsae_core.target_l0 import BOUND, SparsityController
from tsae_core.train import train_variant


def _controller(**kw):
    return SparsityController.for_training(**{"target": 8.0, "coefficient": 1.0, "rate": 0.02, "steps": 1000,
                                               "decay_fraction": 0.2, "lr": 1e-3, "warmup_steps": 0, **kw})


@pytest.mark.parametrize("l0, direction", [(32.0, 1), (2.0, -1), (8.0, 0)])
def test_the_coefficient_rises_when_too_dense_and_falls_when_too_sparse(l0, direction):
    c = _controller()
    for step in range(100):
        c.update(step, l0)
    moved = {1: c.coefficient > 1.0, -1: c.coefficient < 1.0, 0: c.coefficient == pytest.approx(1.0)}
    assert moved[direction], c.coefficient


def test_the_coefficient_is_frozen_in_the_second_half_of_the_decay_and_bounded():
    c = _controller()
    assert c.freeze_step == 900  # decay over the last 20%: frozen from its middle on
    for step in range(900):
        c.update(step, 1000.0)
    assert c.coefficient == pytest.approx(BOUND)  # far too dense for 900 steps: the bound holds it
    for step in range(900, 1000):
        c.update(step, 0.0)
    assert c.coefficient == pytest.approx(BOUND), "frozen after the freeze step"


@pytest.mark.parametrize("l0, grows", [(2.0, True), (32.0, True), (8.1, False)])
def test_the_two_sided_weight_grows_with_a_miss_on_either_side(l0, grows):
    """JumpReLU's penalty pulls towards the target from both sides: its weight grows with any miss
    beyond the tolerance, and relaxes within it."""
    c = _controller(two_sided=True)
    for step in range(100):
        c.update(step, l0)
    assert (c.coefficient > 1.0) == grows and c.coefficient != pytest.approx(1.0)


def test_a_falling_l0_eases_the_push_before_the_target_is_reached():
    """The trend term: with L0 still 4x above its target but falling fast, the coefficient rises at a
    quarter of the rate it rises at while L0 stands still there, and then falls before L0 arrives."""
    c = _controller()
    rises = []
    for step, l0 in enumerate([64.0] * 30 + [64.0 * 0.9 ** i for i in range(1, 25)]):
        before = c.coefficient
        c.update(step, l0)
        rises.append(math.log(c.coefficient / before))
    assert rises[29] == pytest.approx(0.02)  # the full step while L0 stands at 8x its target
    assert rises[44] < 0.3 * rises[29]  # step 44: running L0 32.7, 4x the target, falling 10% a step
    assert min(rises[45:]) < 0 and c.running_l0 > 8.0


def test_state_round_trips():
    a, b = _controller(), _controller()
    for step in range(40):
        a.update(step, 20.0 - step / 4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for step in range(40, 80):
        a.update(step, 10.0)
        b.update(step, 10.0)
    assert a.coefficient == b.coefficient


def _variants(cfg):
    return {name: (v.activation, v.k, v.target_l0) for name, v in cfg.variants.items()}


def test_one_train_target_sets_k_and_every_penalised_target():
    cfg = config_from_dict({"train": {"target_l0": 32}, "variants": {
        "topk": {"activation": "topk"}, "relu": {"activation": "relu"}, "jumprelu": {"activation": "jumprelu"},
        "own_k": {"activation": "batchtopk", "k": 16}, "own_target": {"activation": "relu", "target_l0": 8}}})
    v = _variants(cfg)
    assert v["topk"][1] == 32 and v["relu"][2] == 32 and v["jumprelu"][2] == 32
    assert v["own_k"][1] == 16 and v["own_target"][2] == 8, "a variant's own choice wins"
    plain = config_from_dict({"variants": {"topk": {}, "relu": {"activation": "relu"}}})
    assert _variants(plain) == {"topk": ("topk", 8, 0.0), "relu": ("relu", 8, 0.0)}, "no target: k 8, fixed coefficient"


def test_k_and_a_different_target_for_topk_is_an_error():
    with pytest.raises(ConfigError, match="give k .* or target_l0"):
        config_from_dict({"variants": {"topk": {"activation": "topk", "k": 8, "target_l0": 16}}})


def _eval_l0(sae, store) -> float:
    l0 = []
    for batch in store.split("eval").batches(32, shuffle=False):
        with torch.no_grad():
            f = sae(batch.acts_BTD, batch.mask_BT, batch.doc_start_BT).features
        l0.append((f[batch.mask_BT] > 0).sum(-1).float())
    return torch.cat(l0).mean().item()


# On this benchmark (the CI synthetic data) the controller settles near an L1 coefficient of 2 and a
# weight of ~7 on JumpReLU's (L0 / 4 - 1)^2 for L0 4; each SAE starts 10x below or above that.
STARTS = [("relu", "l1_coefficient", 0.2), ("relu", "l1_coefficient", 20.0),
          ("jumprelu", "l0_coefficient", 0.7), ("jumprelu", "l0_coefficient", 70.0)]


@pytest.mark.parametrize("variant, key, start", STARTS)
def test_training_lands_within_10_percent_of_the_target(harvested, tmp_path, variant, key, start):
    _, store = harvested
    cfg = ci_config(tmp_path, **{"train.steps": 2000, "train.checkpoint_every": 0, "train.log_every": 50,
                                 f"variants.{variant}.target_l0": 4, f"variants.{variant}.{key}": start,
                                 "variants.relu.lr": 0.002})
    summary = train_variant(cfg, variant, store, cfg.run_dir, progress=False)
    reached = _eval_l0(load_sae(cfg.run_dir / "saes" / variant), store)
    assert reached == pytest.approx(4, rel=0.1), f"{variant} from {key} {start}: L0 {reached:.2f}"
    control = summary["target_l0"]
    assert control["start_coefficient"] == start and control["target"] == 4
    assert control["final_coefficient"] != pytest.approx(start, rel=0.5), "the coefficient moved towards its value"
    if start == 0.2:  # the eval JSON records where the controller left the coefficient
        result = evaluate_variant(cfg, variant, store, cfg.run_dir, progress=False)
        assert result["sae_cfg"][key] == pytest.approx(control["final_coefficient"])
        assert result["target_l0_control"]["final_coefficient"] == pytest.approx(control["final_coefficient"])
