"""The benchmark scripts run and report what they claim (tiny shapes; the numbers are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


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
