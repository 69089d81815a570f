"""A variant with `load_from` is an existing SAE (a SAELens folder or a tsae one): imported into the
run without training, evaluated like a trained one, and refused with a clear message where it cannot
read the run's activations."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ci_config
from tsae_core.config import ConfigError
from tsae_core.evals.core import evaluate_variant
from tsae_core.imported import ImportRefused, check_fits
from tsae_core.interop import export_saelens
from tsae_core.io import read_json
from tsae_core.loading import load_sae
from tsae_core.train import train_variant

TRAINED = {"activation": "topk", "d_sae": 64, "k": 4}


@pytest.fixture(scope="module")
def exported(harvested, tmp_path_factory):
    """(store, folder of a trained TopK SAE, its SAELens export, the eval of the original)."""
    cfg0, store = harvested
    root = tmp_path_factory.mktemp("imported")
    cfg = ci_config(root / "runs", **{"variants": {"topk": TRAINED}, "sweep": {}, "train.steps": 60})
    train_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    original = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    out = export_saelens(cfg.run_dir / "saes" / "topk", root / "saelens")
    assert not out.refused
    return store, cfg.run_dir / "saes" / "topk", root / "saelens", original, root


def _run_with(root, name, folder, **overrides):
    return ci_config(root / f"runs-{name}", **{"variants": {name: {"load_from": str(folder)}}, "sweep": {}, **overrides})


@pytest.mark.parametrize("kind", ["saelens", "tsae"])
def test_imported_sae_evaluates_like_the_original(exported, kind):
    store, tsae_dir, saelens_dir, original, root = exported
    cfg = _run_with(root, f"mine-{kind}", saelens_dir if kind == "saelens" else tsae_dir)
    name = f"mine-{kind}"
    summary = train_variant(cfg, name, store, cfg.run_dir, progress=False)
    assert summary["steps"] == 0 and not summary["skipped"] and summary["source_format"] == kind
    recorded = read_json(cfg.run_dir / "saes" / name / "cfg.json")["training"]
    assert recorded["imported_from"] == str(saelens_dir if kind == "saelens" else tsae_dir)
    assert not (cfg.run_dir / "train" / f"{name}.jsonl").exists()  # no training curve: nothing was trained

    result = evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
    for section, key in [("reconstruction_quality", "explained_variance"), ("sparsity", "l0"), ("shrinkage", "l2_ratio")]:
        ours, theirs = result["eval_result_metrics"][section][key], original["eval_result_metrics"][section][key]
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-6), (section, key)
    assert result["health"]["healthy"], result["health"]
    # imported again only when the source changes
    assert train_variant(cfg, name, store, cfg.run_dir, progress=False)["skipped"]


def test_changed_source_is_imported_again(exported):
    store, tsae_dir, saelens_dir, _, root = exported
    folder = root / "editable"
    export_saelens(tsae_dir, folder)
    cfg = _run_with(root, "editable", folder)
    train_variant(cfg, "editable", store, cfg.run_dir, progress=False)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "sae_weights.safetensors"))
    tensors["b_dec"] = tensors["b_dec"] + 1.0
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    again = train_variant(cfg, "editable", store, cfg.run_dir, progress=False)
    assert not again["skipped"]
    assert torch.allclose(load_sae(cfg.run_dir / "saes" / "editable").b_dec, tensors["b_dec"])


def test_sae_of_another_width_or_hook_is_refused(exported, tmp_path):
    store, tsae_dir, saelens_dir, _, root = exported
    other = tmp_path / "other"
    export_saelens(tsae_dir, other)
    cfg_json = read_json(other / "cfg.json")
    cfg_json["metadata"]["hook_name"] = "blocks.7.hook_resid_post"
    (other / "cfg.json").write_text(json.dumps(cfg_json))
    class LMStore:  # what check_fits reads of a language-model run's store
        d_in = store.d_in
        manifest = {"source": {"hook_name": "blocks.1.hook_resid_post"}}

    with pytest.raises(ImportRefused, match="trained on 'blocks.7.hook_resid_post'.*set source.hook_name"):
        check_fits(load_sae(other), other, LMStore(), "other")
    check_fits(load_sae(other), other, store, "other")  # a synthetic store names no hook: the width decides
    cfg = _run_with(tmp_path, "other", other)

    cfg_json["metadata"]["hook_name"] = None
    cfg_json["d_in"] = 8
    from safetensors.torch import load_file, save_file

    t = load_file(str(other / "sae_weights.safetensors"))
    save_file({"W_enc": t["W_enc"][:8], "b_enc": t["b_enc"], "W_dec": t["W_dec"][:, :8].contiguous(), "b_dec": t["b_dec"][:8]},
              str(other / "sae_weights.safetensors"))
    (other / "cfg.json").write_text(json.dumps(cfg_json))
    with pytest.raises(ImportRefused, match="8-dimensional"):
        train_variant(cfg, "other", store, cfg.run_dir, progress=False)

    missing = _run_with(tmp_path, "gone", tmp_path / "nowhere")
    with pytest.raises(ImportRefused, match="not a folder"):
        train_variant(missing, "gone", store, missing.run_dir, progress=False)


def test_imported_variant_takes_no_architecture(tmp_path):
    with pytest.raises(ConfigError, match="load_from"):
        ci_config(tmp_path, **{"variants": {"x": {"load_from": "somewhere", "architecture": "consistency"}}, "sweep": {}})


@pytest.mark.slow
def test_runner_takes_an_imported_variant_through_every_stage(exported, tmp_path):
    """The notebooks and the stage checks accept an SAE without training curves."""
    from tsae_core.runner import main

    _, _, saelens_dir, _, _ = exported
    args = ["run", "params/ci.yaml", "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", f"plot.figures_dir={tmp_path / 'figs'}",
            "--set", f"variants={{mine: {{load_from: {json.dumps(str(saelens_dir))}}}}}", "--set", "sweep={}",
            "--set", "cluster.n_clusters=2"]
    assert main(args) == 0
    figures = tmp_path / "figs" / "ci"
    assert (figures / "final_metrics.png").is_file() and (tmp_path / "runs" / "ci" / "eval" / "mine.json").is_file()
    assert main(args) == 0  # a second run keeps everything
