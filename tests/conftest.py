"""Shared fixtures: a tiny harvested run directory built once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

from tsae_core.config import load_config  # noqa: E402


def ci_config(out_dir, **overrides):
    """The tiny CI experiment, writing under `out_dir`."""
    return load_config("params/ci.yaml", {"run.out_dir": str(out_dir), **overrides})


@pytest.fixture(scope="session")
def harvested(tmp_path_factory):
    """(config, store) of the CI experiment with its activations harvested once."""
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore

    cfg = ci_config(tmp_path_factory.mktemp("runs"))
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    return cfg, ActivationStore.open(cfg.run_dir / "activations")
