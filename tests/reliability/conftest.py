"""Tiny experiments for fault injection: two SAEs, a few dozen steps, every stage in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import sigint_at_default
from tsae_core.config import load_config, project_root

ROOT = project_root()

TINY = {
    "run": {"name": "tiny", "seed": 0},
    "source": {"kind": "synthetic", "synthetic": {
        "d_model": 16, "n_fast": 24, "n_slow": 12, "n_positional": 6, "fast_max_rate": 0.08, "fast_min_rate": 0.01,
        "slow_max_rate": 0.1, "slow_min_rate": 0.02, "positional_max_position": 12, "mean_doc_length": 16}},
    "harvest": {"context_size": 16, "n_train_sequences": 96, "n_eval_sequences": 32, "sequences_per_shard": 32},
    "variants": {"topk": {"activation": "topk", "d_sae": 32, "k": 4},
                 "contrastive": {"architecture": "contrastive", "activation": "topk", "d_sae": 32, "k": 4,
                                 "options": {"window": 4, "queue_size": 128}}},
    "train": {"steps": 40, "batch_sequences": 8, "lr_scale": 10.0, "warmup_steps": 5, "dead_after_tokens": 2000,
              "log_every": 5, "checkpoint_every": 10},
    "eval": {"batch_sequences": 16, "model_max_sequences": 0},
    "cluster": {"n_clusters": 2, "max_lag": 3, "max_sequences": 32},
    "plot": {"dpi": 40},
}


def write_params(directory: Path, **sections) -> Path:
    """A tiny params file in `directory` writing its run under `directory/runs` (sections replace TINY's)."""
    data = {**TINY, **sections}
    data["run"] = {**data["run"], "out_dir": str(directory / "runs")}
    data["plot"] = {**data["plot"], "figures_dir": str(directory / "figures")}
    path = directory / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def tiny(tmp_path):
    """(params file, config) of the tiny experiment in a fresh directory."""
    path = write_params(tmp_path)
    return path, load_config(path)


def tsae_process(*args: str, **popen) -> subprocess.Popen:
    """`tsae ...` in its own session (like a job started from a terminal), SIGINT at its default."""
    return subprocess.Popen(
        [sys.executable, "-m", "tsae_core.runner", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, preexec_fn=sigint_at_default,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, **popen)


def kernel_folders_of(pid: int) -> list[Path]:
    import tempfile

    return list(Path(tempfile.gettempdir()).glob(f"tsae-kernel-{pid}-*"))
