"""Every printed fix is the exact command that repairs that run (issue 31, cases 3 and 14): the run's
own params file and `--set` overrides, the stage, `--force` where a plain rerun would skip. Each test
makes a run with `--set run.name=damaged`, damages it, and runs the command the message prints. (A
damaged `load_from` source: tests/reliability/test_import_checks.py; an unreadable checkpoint's
message reaches the terminal: the last test here.)"""

from __future__ import annotations

import json
import re
import shlex

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.reliability.conftest import TINY, write_params
from tsae_core.io import sha256_file
from tsae_core.loading import load_sae
from tsae_core.runner import main
from tsae_core.sae import SAEFileError
from tsae_core.store import ActivationStore, StoreError

ONE = {"topk": TINY["variants"]["topk"]}
NAMED = ["--set", "run.name=damaged"]


@pytest.fixture
def harvested_run(tmp_path):
    """(params file, run directory) of a tiny run named by `--set run.name=damaged`, harvested by `tsae run`."""
    params = write_params(tmp_path, variants=ONE)
    assert main(["run", str(params), *NAMED, "--only", "harvest"]) == 0
    return params, tmp_path / "runs" / "damaged"


def _printed_command(text: str) -> list[str]:
    """The `tsae run ...` command in backticks in `text`, as argv for `main`."""
    commands = re.findall(r"`(tsae run [^`]*)`", text)
    assert commands, text
    return shlex.split(commands[-1])[1:]


def _rewrite_shard(run_dir, name, change):
    """Replace a shard by a valid safetensors file (changed by `change`) and update its checksum."""
    directory = run_dir / "activations"
    shard = directory / name
    tensors = load_file(str(shard))
    save_file(change(tensors), str(shard))
    manifest = json.loads((directory / "manifest.json").read_text())
    for split in manifest["splits"].values():
        for record in split["shards"]:
            if record["file"] == name:
                record["sha256"] = sha256_file(shard)
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return shard


def test_a_missing_stage_names_the_command_of_this_run_with_its_overrides(harvested_run, capsys):
    params, run_dir = harvested_run
    shard = run_dir / "activations" / "train_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-64] ^= 0x40
    shard.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["run", str(params), *NAMED, "--only", "train"]) == 1
    err = capsys.readouterr().err
    command = _printed_command(err)
    assert command == ["run", str(params), "--set", "run.name=damaged", "--only", "harvest"], err
    assert main(command) == 0  # the printed command repairs this run ...
    assert not (run_dir.parent / "tiny").exists(), "... and no other"
    assert main(["run", str(params), *NAMED, "--only", "train"]) == 0

    weights = run_dir / "saes" / "topk" / "sae.safetensors"  # a damaged SAE names this run's train command too
    data = bytearray(weights.read_bytes())
    data[-8] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SAEFileError) as e:
        load_sae(run_dir / "saes" / "topk")
    assert _printed_command(str(e.value)) == ["run", str(params), "--set", "run.name=damaged", "--only", "train"]
    assert main(_printed_command(str(e.value))) == 0
    load_sae(run_dir / "saes" / "topk")


def test_a_nan_shard_names_the_forced_harvest_of_this_run(harvested_run, capsys):
    params, run_dir = harvested_run

    def nan(t):
        t["acts"][0, 3, 1] = float("nan")
        return t

    shard = _rewrite_shard(run_dir, "train_00002.safetensors", nan)
    with pytest.raises(StoreError, match="NaN or Inf") as e:
        ActivationStore.open(run_dir / "activations").split("train").read_shard(2)
    assert "params/<name>.yaml" not in str(e.value) and str(shard) in str(e.value)
    command = _printed_command(str(e.value))
    assert command == ["run", str(params), "--set", "run.name=damaged", "--force", "--only", "harvest"]
    assert main(command) == 0
    assert not torch.isnan(load_file(str(shard))["acts"]).any()


def test_a_shard_of_another_shape_is_named_with_the_repair(harvested_run, capsys):
    """Case 14: a valid file of another shape, checksum updated, stopped training with a bare
    `RuntimeError: Sizes of tensors must match`; the store's shape check now names the shard."""
    params, run_dir = harvested_run
    shard = _rewrite_shard(run_dir, "train_00001.safetensors", lambda t: {k: v[:20].contiguous() for k, v in t.items()})
    capsys.readouterr()
    assert main(["run", str(params), *NAMED, "--only", "train"]) == 1
    err = capsys.readouterr().err
    assert f"shard {shard} does not fit this store: its acts has shape (20, 16, 16)" in err, err[-3000:]
    command = _printed_command(err)
    assert command == ["run", str(params), "--set", "run.name=damaged", "--force", "--only", "harvest"]
    assert main(command) == 0
    assert main(["run", str(params), *NAMED, "--only", "train"]) == 0


def test_checkpoint_recovery_is_shown_on_the_terminal(tmp_path, capsys):
    """An unreadable checkpoint was reported only inside the executed notebook."""
    params = write_params(tmp_path, variants=ONE)
    checkpoints = tmp_path / "runs" / "tiny" / "saes" / "topk" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "step_00000010.pt").write_bytes(b"not a checkpoint")
    assert main(["run", str(params), "--only", "harvest,train"]) == 0
    err = capsys.readouterr().err
    assert "step_00000010.pt is unreadable" in err and "trying the previous one" in err
