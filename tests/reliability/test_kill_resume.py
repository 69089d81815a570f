"""kill -9 at random points of harvest and training (mid-write included), then a rerun: the same
bytes as a run that was never killed."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest

from tests.reliability.conftest import ROOT, write_params
from tsae_core.config import load_config
from tsae_core.harvest import harvest
from tsae_core.io import sha256_file
from tsae_core.run_lock import remove_stale_temporaries
from tsae_core.store import ActivationStore
from tsae_core.train import train_variant

# Runs harvest + training of the tiny params and SIGKILLs itself at the N-th call of one function:
# `write` dies half-way through writing a file's temporary copy, `step` after an optimizer step.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import tsae_core.io as io_mod
    import tsae_core.train as train_mod
    from tsae_core.config import load_config
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore

    where, n = sys.argv[2], int(sys.argv[3])
    calls = [0]
    def count():
        calls[0] += 1
        return calls[0] == n
    if where == "write":
        real_fsync = io_mod.os.fsync
        def fsync_then_die(fd):
            if count():
                os.ftruncate(fd, max(0, os.fstat(fd).st_size // 2))  # a half-written temporary file
                os.kill(os.getpid(), signal.SIGKILL)
            real_fsync(fd)
        io_mod.os.fsync = fsync_then_die
    else:
        real_step = train_mod.training_step
        def step_then_die(*args, **kwargs):
            out = real_step(*args, **kwargs)
            if count():
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        train_mod.training_step = step_then_die
    cfg = load_config(sys.argv[1])
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    for inst in cfg.instances():
        train_mod.train_variant(cfg, inst.name, store, cfg.run_dir, progress=False)
    print("finished without being killed")
""")


def _complete(cfg):
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    for inst in cfg.instances():
        train_variant(cfg, inst.name, store, cfg.run_dir, progress=False)
    return {str(p.relative_to(cfg.run_dir)): sha256_file(p) for p in sorted(cfg.run_dir.rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    return _complete(load_config(write_params(directory)))


def _count_calls(tmp_path):
    """How many file writes and training steps a full run makes (the range of kill points)."""
    import tsae_core.io as io_mod
    import tsae_core.train as train_mod

    counts = {"write": 0, "step": 0}
    real_fsync, real_step = io_mod.os.fsync, train_mod.training_step

    def fsync(fd):
        counts["write"] += 1
        real_fsync(fd)

    def step(*a, **k):
        counts["step"] += 1
        return real_step(*a, **k)

    io_mod.os.fsync, train_mod.training_step = fsync, step
    try:
        _complete(load_config(write_params(tmp_path)))
    finally:
        io_mod.os.fsync, train_mod.training_step = real_fsync, real_step
    return counts


@pytest.fixture(scope="module")
def kill_points(tmp_path_factory):
    counts = _count_calls(tmp_path_factory.mktemp("count"))
    rng = random.Random(11)  # random points, the same in every CI run
    writes = sorted(rng.sample(range(1, counts["write"] + 1), 3))
    steps = sorted(rng.sample(range(1, counts["step"] + 1), 3))
    return [("write", n) for n in writes] + [("step", n) for n in steps]


@pytest.mark.parametrize("point", range(6))
def test_killed_run_resumes_to_identical_files(reference, kill_points, tmp_path, point):
    where, n = kill_points[point]
    params = write_params(tmp_path)
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(params), where, str(n)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == -9, f"not killed at {where} #{n}: {proc.stdout[-500:]} {proc.stderr[-2000:]}"
    cfg = load_config(params)
    remove_stale_temporaries(cfg.run_dir)  # what `tsae run` does under its lock
    assert _complete(cfg) == reference, f"killed at {where} #{n}"
    assert not list(cfg.run_dir.rglob("*.tmp")), "no temporary file is left behind"
