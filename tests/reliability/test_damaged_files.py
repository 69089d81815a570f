"""Damaged files of every kind in a run directory: each is a named error (file and fix) and the
advised fix, or simply rerunning the stage, repairs it to the same bytes."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.reliability.conftest import write_params
from tsae_core.config import load_config
from tsae_core.harvest import harvest
from tsae_core.io import sha256_file
from tsae_core.loading import load_sae
from tsae_core.sae import SAEFileError
from tsae_core.stage_outputs import output_problems
from tsae_core.store import ActivationStore, StoreError
from tsae_core.train import TrainPaths, train_variant

HARVEST_FIX = "--force --only harvest"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A harvested and trained tiny run, and the checksum of every file in it."""
    directory = tmp_path_factory.mktemp("pristine")
    cfg = load_config(write_params(directory))
    harvest(cfg, cfg.run_dir / "activations", progress=False)
    store = ActivationStore.open(cfg.run_dir / "activations")
    for inst in cfg.instances():
        train_variant(cfg, inst.name, store, cfg.run_dir, progress=False)
    return cfg, {p.relative_to(cfg.run_dir): sha256_file(p) for p in cfg.run_dir.rglob("*.safetensors")}


@pytest.fixture
def run(pristine, tmp_path):
    """A private copy of the pristine run: (config, checksums of the pristine tensor files)."""
    cfg0, sums = pristine
    cfg = load_config(write_params(tmp_path))
    shutil.copytree(cfg0.run_dir, cfg.run_dir)
    return cfg, sums


def _sums(cfg):
    return {p.relative_to(cfg.run_dir): sha256_file(p) for p in cfg.run_dir.rglob("*.safetensors")}


def _reharvest(cfg, force=False):
    harvest(cfg, cfg.run_dir / "activations", progress=False, force=force)
    return ActivationStore.open(cfg.run_dir / "activations")


def _flip(path, offset=-64):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ activation store

@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_damaged_shard_is_named_and_a_rerun_of_the_harvest_repairs_it(run, damage):
    cfg, sums = run
    shard = cfg.run_dir / "activations" / "train_00001.safetensors"
    {"delete": shard.unlink, "truncate": lambda: shard.write_bytes(shard.read_bytes()[:100]), "flip": lambda: _flip(shard)}[damage]()
    problems = output_problems("harvest", cfg)
    assert len(problems) == 1 and str(shard) in problems[0]
    with pytest.raises(StoreError) as e:
        ActivationStore.open(cfg.run_dir / "activations").split("train").read_shard(1)
    assert str(shard) in str(e.value) and HARVEST_FIX in str(e.value)
    _reharvest(cfg)
    assert output_problems("harvest", cfg) == [] and _sums(cfg) == sums


def test_deleted_shard_is_repaired_by_the_advised_forced_harvest(run):
    cfg, sums = run
    (cfg.run_dir / "activations" / "eval_00000.safetensors").unlink()
    _reharvest(cfg, force=True)  # what `--force --only harvest` runs: crashed with FileNotFoundError before
    assert _sums(cfg) == sums


def test_nan_shard_with_a_matching_checksum_is_named_and_the_forced_harvest_replaces_it(run):
    cfg, sums = run
    directory = cfg.run_dir / "activations"
    shard = directory / "train_00002.safetensors"
    tensors = load_file(str(shard))
    tensors["acts"][0, 3, 1] = float("nan")
    save_file(tensors, str(shard))
    manifest = json.loads((directory / "manifest.json").read_text())
    for record in manifest["splits"]["train"]["shards"]:
        if record["file"] == shard.name:
            record["sha256"] = sha256_file(shard)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="NaN or Inf") as e:
        ActivationStore.open(directory).split("train").read_shard(2)
    assert str(shard) in str(e.value) and HARVEST_FIX in str(e.value)
    _reharvest(cfg, force=True)
    assert not torch.isnan(load_file(str(shard))["acts"]).any() and _sums(cfg) == sums


@pytest.mark.parametrize("content", ["null", "[]", "{}", '{"format": 3}', "{trunc", ""])
def test_damaged_manifest_is_named_and_a_rerun_of_the_harvest_repairs_it(run, content):
    cfg, sums = run
    manifest = cfg.run_dir / "activations" / "manifest.json"
    manifest.write_text(content)
    with pytest.raises(StoreError) as e:
        ActivationStore.open(manifest.parent)
    assert f"invalid manifest {manifest}" in str(e.value) and HARVEST_FIX in str(e.value)
    assert output_problems("harvest", cfg) and str(manifest) in output_problems("harvest", cfg)[0]
    _reharvest(cfg)
    assert output_problems("harvest", cfg) == [] and _sums(cfg) == sums


def test_damaged_ground_truth_is_named_and_repaired(run):
    cfg, sums = run
    truth = cfg.run_dir / "activations" / "ground_truth.safetensors"
    _flip(truth)
    with pytest.raises(StoreError, match="corrupted ground truth") as e:
        ActivationStore.open(truth.parent).ground_truth()
    assert str(truth) in str(e.value)
    _reharvest(cfg)
    assert _sums(cfg) == sums


# ------------------------------------------------------------------ SAE files

@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_weights", "null_cfg", "garbage_cfg", "no_checksum"])
def test_damaged_sae_is_named_and_retrained_to_the_same_bytes(run, damage):
    cfg, sums = run
    sae_dir = cfg.run_dir / "saes" / "topk"
    weights, cfg_file = sae_dir / "sae.safetensors", sae_dir / "cfg.json"
    if damage == "flip":
        _flip(weights)
    elif damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "delete_weights":
        weights.unlink()
    elif damage == "no_checksum":
        raw = json.loads(cfg_file.read_text())
        raw.pop("weights_sha256")
        cfg_file.write_text(json.dumps(raw))
    else:
        cfg_file.write_text("null" if damage == "null_cfg" else "{\x00")
    with pytest.raises(SAEFileError) as e:
        load_sae(sae_dir)
    named = weights if damage in ("flip", "truncate", "delete_weights") else cfg_file
    assert str(named) in str(e.value) and "--only train" in str(e.value)
    problems = output_problems("train", cfg)
    assert len(problems) == 1 and str(sae_dir) in problems[0]

    store = ActivationStore.open(cfg.run_dir / "activations")
    summary = train_variant(cfg, "topk", store, cfg.run_dir, progress=False)  # the stage retrains what fails its check
    assert summary["skipped"] is False
    assert output_problems("train", cfg) == [] and _sums(cfg) == sums
    load_sae(sae_dir)


def test_force_retrains_an_intact_sae_to_the_same_bytes(run):
    cfg, sums = run
    store = ActivationStore.open(cfg.run_dir / "activations")
    assert train_variant(cfg, "topk", store, cfg.run_dir, progress=False)["skipped"] is True
    assert train_variant(cfg, "topk", store, cfg.run_dir, progress=False, force=True)["skipped"] is False
    assert _sums(cfg) == sums


def test_sae_files_are_byte_identical_across_processes(pristine, tmp_path):
    """safetensors alone writes its header in a per-process hash order; our files are canonical."""
    import subprocess
    import sys

    from tests.reliability.conftest import ROOT

    cfg0, sums = pristine
    code = ("import sys; from tsae_core.loading import load_sae; from tsae_core.sae import save_sae; "
            "save_sae(load_sae(sys.argv[1]), sys.argv[2])")
    digests = set()
    for i in range(3):
        out = tmp_path / f"copy{i}"
        subprocess.run([sys.executable, "-c", code, str(cfg0.run_dir / "saes" / "contrastive"), str(out)], cwd=ROOT, check=True)
        digests.add(sha256_file(out / "sae.safetensors"))
    assert digests == {sums[TrainPaths.of(cfg0.run_dir, "contrastive").sae_dir.relative_to(cfg0.run_dir) / "sae.safetensors"]}


def test_stale_eval_and_clustering_are_detected(run):
    cfg, _ = run
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.evals.probing.run import SparseProbingData, evaluate_sparse_probing
    from tsae_core.evals.unlearning.run import evaluate_unlearning_run

    store = ActivationStore.open(cfg.run_dir / "activations")
    probing = SparseProbingData(cfg, progress=False)
    for name in ("topk", "contrastive"):
        evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
        evaluate_sparse_probing(cfg, name, cfg.run_dir, probing, progress=False)
    evaluate_unlearning_run(cfg, names=["topk", "contrastive"], progress=False)
    assert output_problems("evaluate", cfg) == []
    retrained = load_config(write_params(cfg.run_dir.parent.parent), {"train.steps": 45})
    train_variant(retrained, "topk", store, cfg.run_dir, progress=False)
    problems = output_problems("evaluate", cfg)
    assert problems == [f"{cfg.run_dir / 'eval' / sub / 'topk.json'} describes an SAE that is no longer in {cfg.run_dir / 'saes' / 'topk'}"
                        for sub in ("", "sparse_probing", "unlearning")]
    (cfg.run_dir / "eval" / "contrastive.json").write_text("null")
    assert len(output_problems("evaluate", cfg)) == 4


def test_evaluation_is_kept_until_its_sae_changes(run):
    """Rerunning the evaluate stage after one SAE is retrained re-evaluates that SAE alone."""
    cfg, _ = run
    from tsae_core.evals.core import evaluate_variant

    store = ActivationStore.open(cfg.run_dir / "activations")
    first = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    path = cfg.run_dir / "eval" / "topk.json"
    marked = {**json.loads(path.read_text()), "marker": "kept"}
    path.write_text(json.dumps(marked))
    assert evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)["marker"] == "kept"
    forced = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False, force=True)
    assert "marker" not in forced
    quality = "eval_result_metrics", "reconstruction_quality", "explained_variance"
    assert _at(forced, quality) == pytest.approx(_at(first, quality), abs=1e-6)
    path.write_text(json.dumps(marked))
    other_eval = load_config(write_params(cfg.run_dir.parent.parent), {"eval.batch_sequences": 3})
    assert "marker" not in evaluate_variant(other_eval, "topk", store, cfg.run_dir, progress=False)
    path.write_text(json.dumps(marked))
    retrained = load_config(write_params(cfg.run_dir.parent.parent), {"train.steps": 45})
    train_variant(retrained, "topk", store, cfg.run_dir, progress=False)
    again = evaluate_variant(cfg, "topk", store, cfg.run_dir, progress=False)
    assert "marker" not in again and again["sae_weights_sha256"] != first["sae_weights_sha256"]


def _at(d, keys):
    for k in keys:
        d = d[k]
    return d
