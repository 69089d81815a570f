"""One Ctrl-C stops `tsae run` at a training step: the kernel is shut down and its files removed,
the message says where a rerun resumes, the status is 130, and the rerun gives the same SAE as a
training that was never interrupted."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess

from tests.reliability.conftest import TINY, kernel_folders_of, tsae_process, write_params
from tsae_core.config import load_config
from tsae_core.harvest import harvest
from tsae_core.io import sha256_file
from tsae_core.runner import EXIT_INTERRUPTED, main
from tsae_core.store import ActivationStore
from tsae_core.train import train_variant

STEPS = 1500


def _kernel_processes_of(runner_pid: int) -> list[int]:
    """Processes whose command line names a kernel folder of this runner."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if f"tsae-kernel-{runner_pid}-" in cmdline:
                found.append(int(entry))
    return found


def test_ctrl_c_stops_training_at_a_step_and_the_rerun_resumes_there(tmp_path):
    variants = {"topk": TINY["variants"]["topk"]}
    params = write_params(tmp_path, variants=variants, train={**TINY["train"], "steps": STEPS, "checkpoint_every": 500})
    args = ["run", str(params), "--only", "harvest,train"]
    proc = tsae_process(*args)
    curves = tmp_path / "runs" / "tiny" / "train" / "topk.jsonl"
    while proc.poll() is None and not (curves.is_file() and curves.read_text().count("\n") >= 3):
        pass
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends to its foreground job
    _, err = proc.communicate(timeout=120)

    assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
    match = re.search(r"interrupted during train; rerun the same command to resume from step (\d+) \(topk\)", err)
    assert match, err[-3000:]
    step = int(match.group(1))
    assert 0 < step < STEPS
    ckpt = tmp_path / "runs" / "tiny" / "saes" / "topk" / "checkpoints" / f"step_{step:08d}.pt"
    assert ckpt.is_file(), "a checkpoint is saved at the step where training stopped"
    assert "Traceback" not in err
    assert kernel_folders_of(proc.pid) == [] and _kernel_processes_of(proc.pid) == [], "the kernel and its files are gone"

    assert main(args) == 0  # the same command
    cfg = load_config(params)
    trained = json.loads((cfg.run_dir / "saes" / "topk" / "cfg.json").read_text())
    assert trained["training"]["resumed_from"] == step

    (tmp_path / "reference").mkdir()
    reference = load_config(write_params(tmp_path / "reference", variants=variants,
                                         train={**TINY["train"], "steps": STEPS, "checkpoint_every": 500}))
    harvest(reference, reference.run_dir / "activations", progress=False)
    train_variant(reference, "topk", ActivationStore.open(reference.run_dir / "activations"), reference.run_dir, progress=False)
    assert sha256_file(cfg.run_dir / "saes" / "topk" / "sae.safetensors") == \
        sha256_file(reference.run_dir / "saes" / "topk" / "sae.safetensors")


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    """Issue 31, case 1: two Ctrl-C 0.3 s apart during training steps of ~1 s. The second killed the
    kernel and then the runner waited on it without a timeout inside nbclient (10+ minutes); now it
    exits 130 within seconds, kernel and kernel files gone."""
    import time

    slow = {"topk": {"activation": "topk", "d_sae": 32768, "k": 4}}  # ~1 s a step on one thread
    params = write_params(tmp_path, variants=slow, train={**TINY["train"], "steps": 100000, "log_every": 1,
                                                          "checkpoint_every": 100000})
    proc = tsae_process("run", str(params), "--only", "harvest,train")
    curves = tmp_path / "runs" / "tiny" / "train" / "topk.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (curves.is_file() and curves.read_text().count("\n") >= 2):
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise AssertionError("a second Ctrl-C did not stop the run within 60 s") from None
    assert proc.returncode == EXIT_INTERRUPTED, err[-3000:]
    assert time.monotonic() - t0 < 30
    assert "stopping at once" in err and "interrupted during train; rerun the same command" in err, err[-3000:]
    assert "Traceback" not in err
    assert kernel_folders_of(proc.pid) == [] and _kernel_processes_of(proc.pid) == [], "the kernel and its files are gone"


def test_ctrl_c_between_stages_says_the_finished_ones_are_kept(tmp_path, monkeypatch, capsys):
    """A Ctrl-C outside any stage (here: during the health summary, after every stage) is status 130
    and says that a rerun goes on from the finished stages, not that nothing ran."""
    from tsae_core import runner

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_run_stages", lambda *a, **k: None)
    monkeypatch.setattr(runner, "_print_health", interrupted)
    params = write_params(tmp_path)
    assert main(["run", str(params)]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err
    assert "interrupted outside a stage; every finished stage is kept" in err and "nothing to resume" not in err
