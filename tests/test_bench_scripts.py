"""The benchmark scripts run and report what they claim (tiny shapes; the numbers are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

TINY_LM = {"source.kind": "tinylm", "source.hook_name": "blocks.0.hook_resid_post", "source.tinylm.n_layers": 1,
           "source.tinylm.d_model": 32, "source.tinylm.n_heads": 2, "source.tinylm.d_mlp": 64,
           "source.tinylm.train_steps": 20, "source.tinylm.warmup": 4, "source.tinylm.batch_size": 16,
           "source.tinylm.max_documents": 200, "source.tinylm.eval_contexts": 16, "harvest.context_size": 32}


def _train_step(tmp_path, *extra):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "benchmarks/train_step.py", "--shapes", "32x128", "--tokens", "64", "--steps", "2",
           "--warmup", "1", "--repeats", "1", "--json", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text()), done.stdout


def test_train_step_reports_every_activation_against_the_ceiling(tmp_path):
    rows, text = _train_step(tmp_path, "--no-saelens")
    assert [r["activation"] for r in rows] == ["relu", "topk", "batchtopk"]
    for r in rows:
        assert r["shape"] == "32x128" and r["ceiling_gflops"] > 0
        assert r["tsae"]["tokens_per_s"] > 0 and r["tsae"]["peak_mb"] >= 0
        assert "saelens" not in r
    assert "% ceil" in text and text.count("32x128") == 3


def test_train_step_measures_saelens_when_installed(tmp_path):
    pytest.importorskip("sae_lens")
    rows, _ = _train_step(tmp_path)
    assert all(r["saelens"]["tokens_per_s"] > 0 for r in rows)


def test_train_step_times_the_dense_path_beside_the_sparse_one(tmp_path):
    """From MIN_SPARSE_LATENTS latents on, TopK and BatchTopK run the sparse path and the dense one is
    timed beside them; ReLU has only the dense path."""
    rows, text = _train_step(tmp_path, "--no-saelens", "--shapes", "16x4096", "--tokens", "32")
    by = {r["activation"]: r for r in rows}
    assert by["topk"]["tsae"]["sparse_path"] and by["batchtopk"]["tsae"]["sparse_path"]
    assert by["topk"]["dense"]["tokens_per_s"] > 0 and not by["topk"]["dense"]["sparse_path"]
    assert not by["relu"]["tsae"]["sparse_path"] and "dense" not in by["relu"]
    assert text.count("sparse") >= 2


def test_data_path_reports_harvest_and_loader_against_their_bounds(tmp_path):
    """On a tiny language model: bare forward, activations and harvest, then shard reads and the
    loader, each with a positive rate and a ratio to its group's first line."""
    env = {**os.environ, "TSAE_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "benchmarks/data_path.py", "params/ci.yaml", "--sequences", "32",
           *(f"--set={k}={v}" for k, v in TINY_LM.items())]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.split()[:1] in (["harvest"], ["loader"])]
    lines = {tuple(r[:2]): r[2:] for r in rows}
    assert set(lines) == {("harvest", "bare"), ("harvest", "activations"), ("harvest", "harvest"),
                          ("loader", "read"), ("loader", "loader")}
    assert lines[("harvest", "bare")][-1] == "1.00" and lines[("loader", "read")][-1] == "1.00"
    assert all(float(v[-2]) > 0 for v in lines.values())


def test_train_loop_reports_loader_bare_step_and_loop(tmp_path):
    """The whole training loop, the bare step and the loader, each a positive rate, against the bare step."""
    out = tmp_path / "loop.json"
    cmd = [sys.executable, "benchmarks/train_loop.py", "--d-in", "16", "--d-sae", "64", "--batch-sequences", "4",
           "--steps", "20", "--log-every", "5", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": "."})
    assert done.returncode == 0, done.stderr[-2000:]
    rates = json.loads(out.read_text())["tokens_per_s"]
    assert set(rates) == {"loader", "bare step", "train loop"} and all(v > 0 for v in rates.values())
    assert "x bare step" in done.stdout and "train loop" in done.stdout
