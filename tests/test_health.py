"""The health verdict: each failure it promises to catch is flagged with its cure, and a healthy SAE
is left alone."""

from __future__ import annotations

import pytest

from tsae_core.evals.core import assess_health


def _result(l0=16.0, dense=0.01, dead=0.02, ev=0.95, ce=0.98, activation="topk", d_in=128, target=0.0, silent=0.0):
    return {
        "sae_cfg": {"d_in": d_in, "activation": activation, "target_l0": target},
        "eval_result_metrics": {
            "reconstruction_quality": {"explained_variance": ev},
            "sparsity": {"l0": l0, "l0_sparse": l0, "dead_fraction": dead, "dense_fraction": dense,
                         "silent_token_fraction": silent},
            "model_performance_preservation": {"ce_loss_score": ce},
        },
    }


def test_a_healthy_sae_is_left_alone():
    assert assess_health(_result()) == {"healthy": True, "problems": []}
    assert assess_health(_result(activation="jumprelu", l0=17.0, target=16.0))["healthy"]
    # each half of the not-sparse rule alone is not a problem: a crosscoder's window code makes many
    # latents dense at a low L0, and a small input can see L0 above d_in / 2 with selective latents
    assert assess_health(_result(l0=16.0, dense=0.64))["healthy"]
    assert assess_health(_result(l0=9.0, d_in=16, dense=0.3, activation="relu"))["healthy"]
    # on the synthetic benchmark a few percent of tokens carry no true feature at all
    assert assess_health(_result(silent=0.05))["healthy"]


@pytest.mark.parametrize("kwargs, words", [
    # the L1 SAE measured on Gemma 3 270M: L0 543 on d_in 640, 63% dense latents, CE score 0.776
    (dict(l0=543.0, dense=0.63, d_in=640, activation="relu", ce=0.776),
     ["CE loss score 0.776", "not sparse: L0 543.0 > 0.5 d_in (640) and 63% of latents are dense", "set target_l0"]),
    (dict(l0=400.0, dense=0.6, d_in=640, activation="jumprelu"), ["not sparse", "l0_coefficient"]),
    (dict(l0=400.0, dense=0.6, d_in=640, activation="topk"), ["not sparse", "lower k"]),
    (dict(ce=0.6), ["CE loss score 0.600", "breaks the model"]),
    (dict(activation="jumprelu", l0=24.0, target=16.0), ["50% from its target 16", "train longer"]),
    (dict(activation="relu", l0=10.0, target=16.0), ["38% from its target 16", "target_l0_rate"]),
    # the L1 SAE on Gemma 3 270M at target L0 32: L0 51, yet 76% of tokens have no active latent
    (dict(activation="relu", l0=51.4, target=32.0, silent=0.76, ev=0.27),
     ["76% of tokens have no active latent", "spent on a few tokens", "use TopK or JumpReLU"]),
    (dict(l0=0.0), ["L0 = 0"]),
    (dict(dead=0.7), ["never fire"]),
    (dict(ev=-0.1), ["worse than predicting the mean"]),
])
def test_each_problem_is_flagged_with_its_cure(kwargs, words):
    verdict = assess_health(_result(**kwargs))
    assert not verdict["healthy"]
    text = " | ".join(verdict["problems"])
    for w in words:
        assert w in text, (w, text)


def test_model_preservation_counts_only_when_measured():
    r = _result()
    del r["eval_result_metrics"]["model_performance_preservation"]
    assert assess_health(r)["healthy"]
