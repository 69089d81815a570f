"""`tsae run` end to end on the tiny params: notebooks executed with papermill, stages skipped
when unchanged, reruns limited to what a change affects, bad input refused up front."""

from __future__ import annotations

import json

import pytest

from tsae_core.io import read_json
from tsae_core.runner import STAGE_NAMES, main

pytestmark = pytest.mark.slow(minutes=3)  # its cost on 2 cores: the costliest files start first

FIGURES = ("reconstruction_metrics", "sparsity_metrics", "training_metrics", "final_metrics", "gt_recovery")


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e")
    sets = ["--set", f"run.out_dir={out / 'runs'}", "--set", f"plot.figures_dir={out / 'figures'}"]
    assert main(["run", "params/ci.yaml", *sets]) == 0
    return out, sets


def test_full_run_leaves_every_artifact(ci_run):
    out, _ = ci_run
    run = out / "runs" / "ci"
    assert read_json(run / "config.json")["config"]["run"]["name"] == "ci"
    manifest = read_json(run / "activations" / "manifest.json")
    assert manifest["splits"]["train"]["n_sequences"] == 256
    for variant in ("topk", "batchtopk", "relu"):
        assert (run / "saes" / variant / "sae.safetensors").is_file()
        ev = read_json(run / "eval" / f"{variant}.json")
        for key in ("tsae", "eval_result_metrics", "ground_truth", "temporal", "health"):
            assert key in ev, f"{variant}: {key} missing"
        assert ev["tsae"]["config_hash"] and ev["tsae"]["version"]
        assert ev["eval_result_metrics"]["sparsity"]["l0"] > 0
        assert ev["health"]["healthy"], ev["health"]
        assert (run / "analysis" / f"clusters_{variant}.json").is_file()
    for nb in ("01_harvest", "02_train", "03_evaluate", "04_autointerp", "05_cluster_features", "06_plot", "07_dashboard"):
        executed = json.loads((run / "notebooks" / f"{nb}.ipynb").read_text())
        assert executed["metadata"]["papermill"]["parameters"]["params"].endswith("ci.yaml")
        assert not any(o.get("output_type") == "error" for c in executed["cells"] for o in c.get("outputs", []))
    dashboard = read_json(run / "dashboard" / "manifest.json")
    page = (run / "dashboard" / "topk" / f"{dashboard['saes']['topk']['pages'][0]}.html").read_text()
    assert "true feature:" in page and "true feature (scaled)" in page, "a synthetic feature page names its true feature"
    for fig in FIGURES:
        png = out / "figures" / "ci" / f"{fig}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert (png.with_suffix(".json")).is_file()


def test_rerun_skips_unchanged_stages(ci_run, capsys):
    _, sets = ci_run
    capsys.readouterr()
    assert main(["run", "params/ci.yaml", *sets]) == 0
    printed = capsys.readouterr().out
    assert printed.count("unchanged, skipped") == len(STAGE_NAMES)


def test_changed_parameter_reruns_only_downstream_stages(ci_run, capsys):
    _, sets = ci_run
    capsys.readouterr()
    assert main(["run", "params/ci.yaml", *sets, "--set", "cluster.n_clusters=2"]) == 0
    printed = capsys.readouterr().out
    for stage in ("harvest", "train", "evaluate"):
        assert f"{stage:9s} unchanged, skipped" in printed
    for stage in ("cluster", "plot", "dashboard"):
        assert f"{stage:9s} done" in printed
    assert "autointerp unchanged, skipped" in printed  # it reads no clustering


def test_only_and_force(ci_run, capsys):
    _, sets = ci_run
    capsys.readouterr()
    assert main(["run", "params/ci.yaml", *sets, "--only", "plot", "--force"]) == 0
    printed = capsys.readouterr().out
    assert "plot      done" in printed and "harvest" not in printed


def test_bad_parameters_are_refused_before_any_work(tmp_path, capsys):
    code = main(["run", "params/ci.yaml", "--set", f"run.out_dir={tmp_path}", "--set", "train.stepz=3"])
    err = capsys.readouterr().err
    assert code == 2 and "train.stepz" in err and "ci.yaml" in err
    assert not (tmp_path / "ci").exists(), "nothing is written for an invalid configuration"
    assert main(["run", "params/ci.yaml", "--only", "trian"]) == 2
    assert "unknown stage 'trian'" in capsys.readouterr().err


def test_failing_stage_names_the_notebook(tmp_path, capsys):
    # Training without harvested activations: the stage fails with the store's own explanation.
    code = main(["run", "params/ci.yaml", "--set", f"run.out_dir={tmp_path}", "--only", "train"])
    err = capsys.readouterr().err
    assert code == 1
    assert "stage train failed" in err and "02_train.ipynb" in err and "harvest" in err
