"""`tsae run` under faults: damaged or stale stage outputs, a removed variant, a collapsed or
unhealthy SAE, a full disk, a locked run directory, stale kernel files."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from tests.reliability.conftest import TINY, kernel_folders_of, tsae_process, write_params
from tsae_core.config import load_config
from tsae_core.runner import EXIT_FAILED, EXIT_UNHEALTHY, STAGE_NAMES, main


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny experiment run end to end once: its folder (params, runs/, figures/)."""
    directory = tmp_path_factory.mktemp("finished")
    assert main(["run", str(write_params(directory))]) == 0
    return directory


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished run: (params file, config)."""
    for name in ("runs", "figures"):
        shutil.copytree(finished / name, tmp_path / name, symlinks=True)
    params = write_params(tmp_path)
    return params, load_config(params)


def _tsae(capsys, *args):
    capsys.readouterr()
    code = main(["run", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_tiny_run_is_healthy_and_every_stage_is_skipped_on_rerun(copy, capsys):
    params, cfg = copy
    assert _tsae(capsys, params)[0] == 0  # the copy's figures folder differs: its plot stage runs again
    code, out, _ = _tsae(capsys, params)
    assert code == 0 and out.count("unchanged, skipped") == len(STAGE_NAMES)
    assert "[tsae] health of each SAE:" in out
    for inst in cfg.instances():
        assert f"{inst.name:28s} healthy" in out


def test_corrupted_sae_is_refused_downstream_and_the_advised_command_repairs_it(copy, capsys):
    params, cfg = copy
    weights = cfg.run_dir / "saes" / "topk" / "sae.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[:-64] + bytes(b ^ 0x40 for b in original[-64:]))
    code, _, err = _tsae(capsys, params, "--only", "evaluate")
    assert code == EXIT_FAILED and "Traceback" not in err
    assert f"corrupted SAE weights {weights}" in err
    advised = f"tsae run {params} --only train"
    assert advised in err
    code, out, _ = _tsae(capsys, *advised.split()[2:])
    assert code == 0 and "outputs need repair" in out and weights.read_bytes() == original
    code, out, _ = _tsae(capsys, params, "--only", "evaluate,cluster,plot")
    assert code == 0


def test_results_of_other_parameters_are_refused(copy, capsys):
    params, cfg = copy
    code, _, _ = _tsae(capsys, params, "--set", "train.steps=45", "--only", "train")
    assert code == 0
    code, out, err = _tsae(capsys, params, "--only", "evaluate,cluster,plot")
    assert code == EXIT_FAILED and "unchanged, skipped" not in out
    assert f"{cfg.run_dir / 'saes' / 'topk'} was trained with other parameters" in err
    assert f"tsae run {params} --only train" in err


def test_deleted_shard_is_repaired_by_the_advised_forced_harvest(copy, capsys):
    params, cfg = copy
    shard = cfg.run_dir / "activations" / "train_00001.safetensors"
    shard.unlink()
    code, _, err = _tsae(capsys, params, "--only", "train")
    assert code == EXIT_FAILED and f"missing shard {shard}" in err and f"tsae run {params} --only harvest" in err
    code, _, err = _tsae(capsys, params, "--force", "--only", "harvest")
    assert code == 0, err
    assert shard.is_file()
    code, out, _ = _tsae(capsys, params)
    assert code == 0 and "train     unchanged, skipped" in out, "identical data: the SAEs stay valid"


def test_removed_variant_leaves_the_figures(copy, capsys):
    params, cfg = copy
    stale = cfg.figures_dir / "ablation_contrastive.png"
    stale.write_bytes(b"\x89PNG old")
    stale.with_suffix(".json").write_text("{}")
    data = yaml.safe_load(params.read_text())
    del data["variants"]["contrastive"]
    params.write_text(yaml.safe_dump(data))
    code, _, _ = _tsae(capsys, params)
    assert code == 0
    assert not stale.exists() and not stale.with_suffix(".json").exists()
    recon = json.loads((cfg.figures_dir / "reconstruction_metrics.json").read_text())
    assert "contrastive" not in json.dumps(recon)


def test_collapsed_sae_is_recorded_the_others_go_on_and_the_exit_status_says_so(tmp_path, capsys):
    variants = {**TINY["variants"], "relu": {"activation": "relu", "d_sae": 32, "l1_coefficient": 1e6, "lr": 1.0}}
    params = write_params(tmp_path, variants=variants)
    code, out, err = _tsae(capsys, params)
    assert code == EXIT_UNHEALTHY, out + err
    cfg = load_config(params)
    failed = json.loads((cfg.run_dir / "saes" / "relu" / "failed.json").read_text())
    assert "L0 = 0" in failed["reason"] and not (cfg.run_dir / "saes" / "relu" / "sae.safetensors").exists()
    for name in ("topk", "contrastive"):
        assert (cfg.run_dir / "eval" / f"{name}.json").is_file(), "the other SAEs are trained and evaluated"
    assert f"{'relu':28s} UNHEALTHY: training failed: variant 'relu': every latent is silent" in out
    assert "unhealthy SAEs: relu" in err and "--allow-unhealthy" in err
    code, out, _ = _tsae(capsys, params, "--allow-unhealthy")
    assert code == 0 and out.count("unchanged, skipped") == len(STAGE_NAMES), "a recorded failure is not retrained"


def test_unhealthy_eval_verdict_gives_a_nonzero_status(copy, capsys):
    params, cfg = copy
    eval_file = cfg.run_dir / "eval" / "topk.json"
    result = json.loads(eval_file.read_text())
    result["health"] = {"healthy": False, "problems": ["90% of latents never fire on the eval split"]}
    eval_file.write_text(json.dumps(result))
    code, out, err = _tsae(capsys, params, "--only", "plot")
    assert code == EXIT_UNHEALTHY and f"{'topk':28s} UNHEALTHY: 90% of latents never fire" in out
    assert _tsae(capsys, params, "--only", "plot", "--allow-unhealthy")[0] == 0


def test_expected_unhealthy_sae_is_reported_with_its_reason_and_not_counted(copy, capsys):
    """`run.expected_unhealthy` keeps a known failure in the comparison: still flagged, with the reason
    beside the verdict, but only the other unhealthy SAEs set the exit status."""
    params, cfg = copy
    healthy_topk = (cfg.run_dir / "eval" / "topk.json").read_text()
    for name in ("topk", "contrastive"):
        eval_file = cfg.run_dir / "eval" / f"{name}.json"
        result = json.loads(eval_file.read_text())
        result["health"] = {"healthy": False, "problems": ["CE score 0.61 < 0.8"]}
        eval_file.write_text(json.dumps(result))
    reason = "run.expected_unhealthy={topk: L1 at L0 32 leaves most tokens silent}"
    code, out, err = _tsae(capsys, params, "--only", "plot", "--set", reason)
    assert code == EXIT_UNHEALTHY and "unhealthy SAEs: contrastive (" in err
    assert f"{'topk':28s} UNHEALTHY: CE score 0.61 < 0.8 (expected, run.expected_unhealthy: L1 at L0 32" in out
    (cfg.run_dir / "eval" / "topk.json").write_text(healthy_topk)
    both = "run.expected_unhealthy={topk: known, contrastive: a smoothing control}"
    code, out, _ = _tsae(capsys, params, "--only", "plot", "--set", both)
    assert code == 0 and f"{'topk':28s} healthy (listed in run.expected_unhealthy, but healthy: the entry can go)" in out
    assert "(expected, run.expected_unhealthy: a smoothing control)" in out


def test_full_disk_is_one_line_and_truncates_nothing(copy, capsys, monkeypatch):
    params, cfg = copy
    notebook = cfg.run_dir / "notebooks" / "06_plot.ipynb"
    before = notebook.read_bytes()
    import tsae_core.io as io_mod

    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(".ipynb"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(io_mod.os, "replace", replace)
    code, _, err = _tsae(capsys, params, "--only", "plot", "--force")
    assert code == EXIT_FAILED
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("\r", " "))]
    assert lines[-1].startswith("tsae: no space left on device writing 06_plot.ipynb: ")
    assert " free; free some space, then rerun the same command to resume" in lines[-1] and "Traceback" not in err
    assert notebook.read_bytes() == before, "the executed notebook is replaced whole or not at all"
    assert not [p for p in notebook.parent.iterdir() if p.name != notebook.name and "06_plot" in p.name]


def test_full_disk_during_training_on_a_small_tmpfs(tmp_path):
    """A real full disk, where the machine lets us mount one (root): one line, no truncated file."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        params = write_params(mount)
        assert main(["run", str(params), "--only", "harvest"]) == 0
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * (free - 40_000))
        proc = tsae_process("run", str(params), "--only", "train")
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == EXIT_FAILED
        last = err.strip().splitlines()[-1]
        assert "no space left on device" in last and str(mount / "runs" / "tiny") in last and "free" in last
        for nb in (mount / "runs" / "tiny" / "notebooks").glob("*.ipynb"):
            json.loads(nb.read_text())  # whole notebooks only
        assert not list(mount.rglob("*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_locked_run_directory_is_refused_naming_the_holder(copy, capsys):
    params, cfg = copy
    from tsae_core.run_lock import run_lock

    with run_lock(cfg.run_dir):
        code, _, err = _tsae(capsys, params, "--only", "plot")
    assert code == EXIT_FAILED and f"run directory {cfg.run_dir} is in use by another tsae run (pid {os.getpid()}" in err
    assert _tsae(capsys, params, "--only", "plot")[0] == 0, "the lock is released with its holder"


def test_concurrent_runs_one_waits_out_the_other(tmp_path):
    params = write_params(tmp_path)
    first = tsae_process("run", str(params), "--only", "harvest,train")
    lock = tmp_path / "runs" / "tiny" / ".lock"
    while first.poll() is None and not (lock.is_file() and lock.read_text()):
        pass
    second = tsae_process("run", str(params), "--only", "harvest,train")
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=300)
    assert first.returncode == 0, err1
    assert second.returncode == EXIT_FAILED and f"in use by another tsae run (pid {first.pid}" in err2


def test_stale_kernel_files_of_dead_runs_are_removed(tmp_path):
    from tsae_core.notebook_exec import remove_stale_kernel_files

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    dead_folder = tmp_path / f"tsae-kernel-{dead_pid}-abcd1234"
    dead_folder.mkdir()
    (dead_folder / "kernel.json").write_text("{}")
    live_folder = tmp_path / f"tsae-kernel-{os.getpid()}-abcd1234"
    live_folder.mkdir()
    legacy = tmp_path / "tsae-kernel-0123456789ab-1"  # a socket nobody listens on
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(legacy))
    listening = tmp_path / "tsae-kernel-ba9876543210-1"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(listening))
    server.listen()
    try:
        removed = remove_stale_kernel_files(tmp_path)
    finally:
        server.close()
    assert set(removed) == {dead_folder, legacy}
    assert live_folder.is_dir() and listening.exists()


def test_sigkilled_runner_leaves_kernel_files_that_the_next_run_removes(tmp_path, capsys):
    params = write_params(tmp_path, train={**TINY["train"], "steps": 100_000})
    proc = tsae_process("run", str(params), "--only", "harvest,train")
    curves = tmp_path / "runs" / "tiny" / "train" / "topk.jsonl"
    while proc.poll() is None and not (curves.is_file() and curves.stat().st_size):
        pass
    folders = kernel_folders_of(proc.pid)
    assert folders, "the kernel's files are in the runner's folder while it runs"
    proc.kill()
    proc.communicate()
    assert kernel_folders_of(proc.pid) == folders, "SIGKILL leaves them"
    assert main(["run", str(write_params(tmp_path)), "--only", "harvest"]) == 0
    assert kernel_folders_of(proc.pid) == []
    assert not list((tmp_path / "runs").rglob(".*.tmp*"))
