"""Training: the recipe's schedule, health on the tiny benchmark, exact resume, loud divergence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ci_config
from tsae_core.train import TrainingDiverged, TrainPaths, lr_multiplier, sparsity_scale, train_variant

ROOT = Path(__file__).resolve().parent.parent


def test_lr_schedule_warms_up_holds_and_decays_to_zero():
    total, warm = 1000, 100
    lrs = [lr_multiplier(s, total, warm, 0.2) for s in range(total)]
    assert lrs[0] == pytest.approx(0.01) and lrs[99] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in lrs[100:800])
    assert lrs[900] == pytest.approx(0.5, abs=0.01) and lrs[-1] < 0.01
    assert sparsity_scale(0, 1000, 0.05) == pytest.approx(1 / 50) and sparsity_scale(60, 1000, 0.05) == 1.0


def test_variants_train_to_healthy_saes(harvested):
    cfg, store = harvested
    for name in cfg.variants:
        summary = train_variant(cfg, name, store, cfg.run_dir, progress=False)
        final = summary["final"]
        assert summary["steps"] == cfg.train.steps
        # the pooled control reconstructs each token from a 4-token mean: it trades reconstruction for
        # smoothness by design (FVU 0.61 on this data), which is what it is there to show
        max_fvu = 0.75 if cfg.variants[name].architecture == "pooled" else 0.5
        assert final["fvu"] < max_fvu, f"{name} barely reconstructs: {final}"
        assert final["l0"] > 0.5, f"{name} is silent: {final}"
        records = [json.loads(ln) for ln in (cfg.run_dir / "train" / f"{name}.jsonl").read_text().splitlines()]
        assert records[-1]["step"] == cfg.train.steps
        assert records[-1]["fvu"] < records[0]["fvu"], "training must reduce the reconstruction error"
        assert not (cfg.run_dir / "saes" / name / "checkpoints").exists(), "checkpoints are removed after success"
    topk = json.loads((cfg.run_dir / "saes" / "topk" / "cfg.json").read_text())
    assert topk["training"]["final"]["l0"] == pytest.approx(cfg.variants["topk"].k, abs=0.01)


def test_trained_variant_is_skipped_when_unchanged(harvested):
    cfg, store = harvested
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    again = train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    assert again["skipped"] is True


CONTROLS = {
    "pooled-window1": {"architecture": "pooled", "options": {"window": 1}},
    "conv-buffer1": {"architecture": "conv", "options": {"buffer": 1, "coefficient": 0.0}},
    "relational-off": {"architecture": "relational", "options": {"attention": False, "positions": False}},
}


def test_controls_that_reduce_to_topk_reproduce_it_with_the_same_seed(harvested, tmp_path):
    """Common random numbers: at one run seed every variant reads the same batches and starts from the
    same values of the parameters it shares with TopK, so the controls that reduce to TopK train to
    TopK's weights (to float rounding), and any difference between a variant and its baseline is the
    variant's, not its initial values' or data order's."""
    _, store = harvested
    spec = {"activation": "topk", "d_sae": 64, "k": 4}
    cfg = ci_config(tmp_path, **{"train.steps": 60, "train.checkpoint_every": 0, "sweep": {},
                                 "variants": {"topk": spec, **{n: {**spec, **c} for n, c in CONTROLS.items()}}})
    names = ["topk", *CONTROLS]
    for name in names:
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
    weights = {n: load_file(str(cfg.run_dir / "saes" / n / "sae.safetensors")) for n in names}
    for name in CONTROLS:
        for key in ("W_enc", "W_dec", "b_enc", "b_dec"):
            assert torch.allclose(weights[name][key], weights["topk"][key], atol=1e-5), f"{name}.{key} differs from topk's"


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.conftest import ci_config
    from tsae_core.store import ActivationStore
    import tsae_core.train as T

    cfg = ci_config({out!r}, **{overrides!r})
    store = ActivationStore.open({acts!r})
    real_record = T._record
    def record_then_maybe_die(step, *args, **kwargs):
        rec = real_record(step, *args, **kwargs)
        if step == 90:  # after the checkpoint at step 80, mid-way between two checkpoints
            os.kill(os.getpid(), signal.SIGKILL)
        return rec
    T._record = record_then_maybe_die
    T.train_variant(cfg, {variant!r}, store, cfg.run_dir, progress=False)
    """
)


# relu with a target L0: the penalty coefficient's controller (tsae_core.target_l0) has moved by the checkpoint
TARGET_L0 = {"variants.relu.target_l0": 4, "variants.relu.l1_coefficient": 0.5}


@pytest.mark.parametrize("variant", ["topk", "contrastive", "orthogonal", "relational", "relu"])
def test_killed_training_resumes_to_identical_result(harvested, tmp_path, variant):
    """Also for variants with training state: the contrastive queue, the orthogonal sketches and groups,
    the relational curriculum (mid-way at the checkpoint: window 3 of 4), and the target-L0 controller."""
    cfg0, store = harvested
    acts = str(cfg0.run_dir / "activations")
    interrupted = tmp_path / "interrupted"
    overrides = {"train.checkpoint_every": 40, **(TARGET_L0 if variant == "relu" else {})}
    script = KILL_SCRIPT.format(root=str(ROOT), out=str(interrupted), acts=acts, variant=variant, overrides=overrides)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, f"the training process should have been killed: {proc.stderr[-2000:]}"
    cfg = ci_config(interrupted, **overrides)
    paths = TrainPaths.of(cfg.run_dir, variant)
    assert sorted(p.name for p in paths.checkpoints.glob("*.pt"))[-1] == "step_00000080.pt"
    assert not (paths.sae_dir / "sae.safetensors").exists()

    resumed = train_variant(cfg, variant, store, cfg.run_dir, progress=False)
    assert resumed["resumed_from"] == 80

    reference_cfg = ci_config(tmp_path / "reference", **overrides)
    train_variant(reference_cfg, variant, store, reference_cfg.run_dir, progress=False)
    a = load_file(str(paths.sae_dir / "sae.safetensors"))
    b = load_file(str(reference_cfg.run_dir / "saes" / variant / "sae.safetensors"))
    for name in b:
        assert torch.allclose(a[name], b[name], atol=1e-6), name
    curve = lambda c: [json.loads(ln) for ln in (c.run_dir / "train" / f"{variant}.jsonl").read_text().splitlines()]  # noqa: E731
    got, want = curve(cfg), curve(reference_cfg)
    assert [r["step"] for r in got] == [r["step"] for r in want], "curves are truncated to the checkpoint, not duplicated"
    assert got[-1]["fvu"] == pytest.approx(want[-1]["fvu"], rel=1e-5)
    if variant == "relu":
        coefficient = lambda c: json.loads((c.run_dir / "saes" / variant / "cfg.json").read_text())["l1_coefficient"]  # noqa: E731
        assert coefficient(reference_cfg) != pytest.approx(TARGET_L0["variants.relu.l1_coefficient"]), "the controller moved it"
        assert coefficient(cfg) == pytest.approx(coefficient(reference_cfg), rel=1e-9)


def test_diverging_loss_stops_loudly_and_keeps_last_good_checkpoint(harvested, tmp_path):
    _, store = harvested
    # An absurd learning rate after a normal start: the weights overflow within a few steps.
    cfg = ci_config(tmp_path, **{"train.checkpoint_every": 1, "train.warmup_steps": 0,
                                 "variants.relu.lr": 1e25, "train.sparsity_warmup_fraction": 0.0})
    with pytest.raises(TrainingDiverged) as e:
        train_variant(cfg, "relu", store, cfg.run_dir, progress=False)
    msg = str(e.value)
    assert "non-finite" in msg and "'relu'" in msg and "learning rate" in msg
    paths = TrainPaths.of(cfg.run_dir, "relu")
    kept = sorted(paths.checkpoints.glob("*.pt"))
    assert kept, "the last good checkpoint is kept"
    assert str(kept[-1]) in msg
    state = torch.load(kept[-1], weights_only=False)
    assert all(torch.isfinite(t).all() for t in state["sae"].values() if t.is_floating_point())
    assert not (paths.sae_dir / "sae.safetensors").exists(), "a diverged SAE is never saved as final"
