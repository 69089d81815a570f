"""A run directory never runs code, and an unreadable checkpoint falls back to the older one."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from tests.conftest import ci_config
from tsae_core.train import TrainPaths, train_variant


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_does_not_run_code(harvested, tmp_path, capsys):
    _, store = harvested
    cfg = ci_config(tmp_path, **{"train.steps": 20})
    paths = TrainPaths.of(cfg.run_dir, "topk")
    paths.checkpoints.mkdir(parents=True)
    marker = tmp_path / "pwned"
    with open(paths.checkpoints / "step_99999999.pt", "wb") as f:
        pickle.dump({"step": 1, "payload": _RunsCode(marker)}, f)
    summary = train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    assert not marker.exists(), "loading a checkpoint from a run directory executed code"
    assert summary["resumed_from"] == 0 and summary["steps"] == 20
    assert "step_99999999.pt is unreadable" in capsys.readouterr().err  # stderr: `tsae run` shows it on the terminal


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(harvested, tmp_path):
    _, store = harvested
    cfg = ci_config(tmp_path, **{"train.checkpoint_every": 40})
    paths = TrainPaths.of(cfg.run_dir, "contrastive")
    # a finished training leaves no checkpoint: rebuild two from a shorter run of the same recipe
    import tsae_core.train as T

    real_record = T._record

    class Stop(Exception):
        pass

    def stop_at_100(step, *args, **kwargs):
        if step == 100:
            raise Stop
        return real_record(step, *args, **kwargs)

    T._record = stop_at_100
    try:
        train_variant(cfg, "contrastive", store, cfg.run_dir, progress=False)
    except Stop:
        pass
    finally:
        T._record = real_record
    ckpts = sorted(paths.checkpoints.glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_00000040.pt", "step_00000080.pt"]
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 3])  # truncated, as by a full disk or a kill mid-copy
    resumed = train_variant(cfg, "contrastive", store, cfg.run_dir, progress=False)
    assert resumed["resumed_from"] == 40 and resumed["steps"] == cfg.train.steps
