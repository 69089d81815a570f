"""Training with several processes (`torchrun`, gloo on CPU) gives the SAE one process gives for the same
global batch; only rank 0 writes; an interrupted run resumes exactly; the harvest splits into parts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import ci_config
from tsae_core import distributed
from tsae_core.checkpoints import trained_state
from tsae_core.config import ConfigError
from tsae_core.distributed import __main__ as cli
from tsae_core.harvest import PART_PROGRESS, harvest, harvest_hash
from tsae_core.seeds import derive_seed
from tsae_core.stage_outputs import output_problems
from tsae_core.store import MANIFEST, ActivationStore, write_manifest, write_shard
from tsae_core.train import TrainPaths, train_variant, variant_train_hash

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["topk", "relu", "batchtopk"]
TRAIN = {"train.steps": 20, "train.checkpoint_every": 10, "train.log_every": 5}
"""20 steps of 8 sequences (4 per process), a checkpoint at step 10, a curve point every 5 steps."""
SETS = [a for k, v in TRAIN.items() for a in ("--set", f"{k}={v}")]

WORKER = textwrap.dedent(
    """
    # One torchrun process: the command line of tsae_core.distributed, keeping each SAE it trains so that
    # the test can compare the processes' copies; STOP_AT=<rank>:<step> sends that process a Ctrl-C there.
    # Once joined, it checks the group's sum, mean and max.
    import os, signal, sys
    import torch
    import tsae_core.train as T
    from tsae_core import distributed

    made, real_init, real_step = {}, T._init_sae, T.training_step
    def keep(cfg, name, store, device):
        made[name] = real_init(cfg, name, store, device)
        return made[name]
    T._init_sae = keep
    stop_rank, stop_step = (int(x) for x in (os.environ.get("STOP_AT") or "-1:-1").split(":"))
    def step(sae, opt, batch, ctx, *args, **kwargs):
        out = real_step(sae, opt, batch, ctx, *args, **kwargs)
        if distributed.rank() == stop_rank and ctx.step == stop_step:
            os.kill(os.getpid(), signal.SIGINT)  # this process only: the others hear of it through the step's counts
        return out
    T.training_step = step
    from tsae_core.distributed import __main__ as cli
    real_join = cli.init
    def join(device="auto"):
        joined = real_join(device)
        got = [float(distributed.all_reduce(torch.tensor([distributed.rank() + 1.0]), op)) for op in ("sum", "mean", "max")]
        assert got == [3.0, 1.5, 2.0], got
        return joined
    cli.init = join
    code = cli.main(sys.argv[2:])
    torch.save({n: {k: t.detach().cpu() for k, t in [*s.state_dict().items(), *s.named_buffers()]} for n, s in made.items()},
               os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
    sys.exit(code)
    """
)


def _torchrun(tmp: Path, args: list[str], stop_at: str = "") -> subprocess.CompletedProcess:
    """Two gloo processes on this machine, one thread each, running WORKER with `args`."""
    script = tmp / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "STOP_AT": stop_at}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), str(tmp), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _mask_unevenly(directory: Path) -> None:
    """Mark special (excluded) tokens in a third of the training sequences: 20 of their 32 positions,
    so that the two halves of a batch hold different numbers of counted tokens."""
    store = ActivationStore.open(directory)
    m = store.manifest
    split, records = store.split("train"), []
    for i in range(len(split.shards)):
        batch = split.load_shard(i)
        rows = torch.arange(batch.n_sequences) + 64 * i
        batch.special_BT[rows % 3 == 0, :20] = True
        records.append(write_shard(directory, "train", i, batch, m["dtype"], m["source"]["kind"]))
    write_manifest(directory, d_in=store.d_in, context_size=store.context_size, dtype=m["dtype"], scaling_factor=store.scaling_factor,
                   source=m["source"], splits={"train": records, "eval": m["splits"]["eval"]["shards"]},
                   ground_truth=m["ground_truth"], config_hash=m["config_hash"])


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """A harvested CI store with unevenly masked sequences (a run directory's `activations/` to copy)."""
    cfg = ci_config(tmp_path_factory.mktemp("masked"), **TRAIN)
    acts = cfg.run_dir / "activations"
    harvest(cfg, acts, progress=False)
    _mask_unevenly(acts)
    return acts


def _run_dir_with(acts: Path, out: Path, **overrides):
    cfg = ci_config(out, **TRAIN, **overrides)
    shutil.copytree(acts, cfg.run_dir / "activations")
    return cfg


@pytest.fixture(scope="module")
def two_processes(masked, tmp_path_factory):
    """topk, relu and batchtopk trained by 2 processes: (cfg, each rank's final SAE states, output)."""
    tmp = tmp_path_factory.mktemp("two")
    cfg = _run_dir_with(masked, tmp / "runs")
    proc = _torchrun(tmp, ["params/ci.yaml", "--set", f"run.out_dir={tmp / 'runs'}", *SETS, "--only", ",".join(VARIANTS)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp / f"rank{r}.pt") for r in range(2)]
    return cfg, ranks, proc


@pytest.fixture(scope="module")
def one_process(masked, tmp_path_factory):
    """The same SAEs trained in this process (one process, the whole batch of 8 sequences)."""
    cfg = _run_dir_with(masked, tmp_path_factory.mktemp("one"))
    store = ActivationStore.open(cfg.run_dir / "activations")
    for name in VARIANTS:
        train_variant(cfg, name, store, cfg.run_dir, progress=False)
    return cfg


def _weights(cfg, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(cfg.run_dir / "saes" / name / "sae.safetensors"))


def test_batches_split_unevenly_between_the_two_processes(masked):
    """The premise of the comparison below: the processes' shares hold different numbers of tokens."""
    split = ActivationStore.open(masked).split("train")
    seed = derive_seed(0, "data", "topk")
    halves = [split.loader(8, seed=seed, part=(r, 2)) for r in range(2)]
    counts = [[int(next(h).mask_BT.sum()) for _ in range(20)] for h in halves]
    assert sum(a != b for a, b in zip(*counts)) >= 10, counts


@pytest.mark.parametrize("name", ["topk", "relu"])
def test_two_processes_train_the_weights_of_one(two_processes, one_process, name):
    """Token-weighted gradient averaging: the global batch's gradient although the two shares hold
    different numbers of counted tokens. Measured: at most 6e-8 apart after 20 steps (float32 rounding)."""
    cfg, ranks, _ = two_processes
    got, want = _weights(cfg, name), _weights(one_process, name)
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")
    for k, t in ranks[0][name].items():
        assert torch.equal(t, ranks[1][name][k]), f"{name}.{k} differs between the processes"
    rank0 = {k: v for k, v in ranks[0][name].items() if not k.startswith("activation.")}
    for k in rank0:
        assert torch.equal(rank0[k], got[k]), f"rank 0 saved its own {name}.{k}"
    curve = lambda c: [json.loads(ln) for ln in (c.run_dir / "train" / f"{name}.jsonl").read_text().splitlines()]  # noqa: E731
    for a, b in zip(curve(cfg), curve(one_process)):  # the logged numbers are the whole batch's
        assert a["step"] == b["step"] and a["tokens"] == b["tokens"]
        for key in ("loss", "fvu", "l0", "dead_fraction"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_batchtopk_ranks_share_one_threshold_and_train_healthily(two_processes, one_process):
    """Each process keeps the top k*N of its own share (not bit-identical to one process), but the
    inference threshold (the running mean and the final calibration) is the ranks' mean, on both."""
    cfg, ranks, _ = two_processes
    a, b = ranks[0]["batchtopk"], ranks[1]["batchtopk"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), "the processes' BatchTopK SAEs differ"
    threshold = _weights(cfg, "batchtopk")["threshold"]
    assert torch.equal(threshold, a["activation.threshold"]) and (threshold > 0).all() and torch.isfinite(threshold).all()
    records = [json.loads(ln) for ln in (cfg.run_dir / "train" / "batchtopk.jsonl").read_text().splitlines()]
    assert records[-1]["l0"] == pytest.approx(4.0) and records[-1]["fvu"] < records[0]["fvu"]
    single = _weights(one_process, "batchtopk")["threshold"]
    assert float(threshold.mean()) == pytest.approx(float(single.mean()), rel=0.2)


def test_only_rank_zero_writes_and_the_train_stage_skips_the_saes(two_processes):
    cfg, _, proc = two_processes
    run = cfg.run_dir
    written = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "activations" not in p.parts)
    assert written == [".lock", "config.json",  # the invocation, which repair messages repeat (`tsae_core.repair`)
                       *(f"saes/{n}/{f}" for n in sorted(VARIANTS) for f in ("cfg.json", "sae.safetensors")),
                       *(f"train/{n}.jsonl" for n in sorted(VARIANTS))]
    for name in VARIANTS:
        steps = [json.loads(ln)["step"] for ln in (run / "train" / f"{name}.jsonl").read_text().splitlines()]
        assert steps == [5, 10, 15, 20], f"{name}: one curve, written once"
    assert proc.stdout.count("batchtopk ") == 1, "one summary line per SAE (rank 0 prints)"
    # what `tsae run` checks before it skips an SAE's training (stage_outputs, then train_variant): its train hash
    for name in VARIANTS:
        assert trained_state(TrainPaths.of(run, name), variant_train_hash(cfg, name, harvest_hash(cfg))) == ("trained", "")
    assert not [p for p in output_problems("train", cfg) if any(f"saes/{n} " in p or f"{n}.jsonl" in p for n in VARIANTS)]
    store = ActivationStore.open(run / "activations")
    assert train_variant(cfg, "topk", store, run, progress=False)["skipped"] is True


def test_interrupted_two_process_training_resumes_to_the_same_weights(two_processes, masked, tmp_path):
    """Ctrl-C reaching one process only: both stop after the same step, rank 0 saves a checkpoint there,
    and the rerun of the command finishes with the uninterrupted run's weights and curve."""
    reference, _, _ = two_processes
    cfg = _run_dir_with(masked, tmp_path / "runs")
    args = ["params/ci.yaml", "--set", f"run.out_dir={tmp_path / 'runs'}", *SETS]
    stopped = _torchrun(tmp_path, [*args, "--only", "batchtopk"], stop_at="1:12")
    assert stopped.returncode != 0
    assert "interrupted at step 13 of 20" in stopped.stderr and "rerun" in stopped.stderr, stopped.stderr[-3000:]
    paths = TrainPaths.of(cfg.run_dir, "batchtopk")
    assert sorted(p.name for p in paths.checkpoints.glob("*.pt")) == ["step_00000010.pt", "step_00000013.pt"]
    assert not (paths.sae_dir / "sae.safetensors").exists()

    resumed = _torchrun(tmp_path, [*args, "--only", ",".join(VARIANTS)])
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    for name in VARIANTS:
        got, want = _weights(cfg, name), _weights(reference, name)
        for k in want:
            assert torch.equal(got[k], want[k]), f"{name}.{k}"
    curve = lambda c: (c.run_dir / "train" / "batchtopk.jsonl").read_text().splitlines()  # noqa: E731
    assert [json.loads(ln)["step"] for ln in curve(cfg)] == [5, 10, 15, 20]
    assert json.loads(curve(cfg)[-1])["fvu"] == pytest.approx(json.loads(curve(reference)[-1])["fvu"], rel=1e-6)


# -- the harvest in parts ---------------------------------------------------------------------------


def _store_records(directory: Path) -> dict:
    m = json.loads((directory / MANIFEST).read_text())
    return {"splits": m["splits"], "scaling_factor": m["scaling_factor"], "ground_truth": m["ground_truth"], "d_in": m["d_in"]}


def test_harvest_in_parts_then_finalised_equals_one_harvest(harvested, tmp_path):
    cfg0, store = harvested
    cfg = ci_config(tmp_path)
    out = cfg.run_dir / "activations"
    parts = [harvest(cfg, out, progress=False, part=(i, 2)) for i in (1, 0)]
    assert not (out / MANIFEST).exists(), "a part writes no manifest"
    assert [sorted(p["shards"]) for p in parts] == [["train_00001.safetensors", "train_00003.safetensors"],
                                                  ["eval_00000.safetensors", "train_00000.safetensors", "train_00002.safetensors"]]
    assert sorted(p.name for p in out.glob(".progress*")) == [PART_PROGRESS.format(index=i, parts=2) for i in (0, 1)]
    assert harvest(cfg, out, progress=False, part=(0, 2))["written"] == 0, "a rerun part keeps its intact shards"
    harvest(cfg, out, progress=False)
    assert _store_records(out) == _store_records(store.directory)
    assert not list(out.glob(PART_PROGRESS.format(index="*", parts="*"))), "the manifest replaces the parts' records"


def test_finalising_harvest_writes_a_missing_part_and_keeps_the_others(harvested, tmp_path, monkeypatch):
    import tsae_core.harvest as harvest_mod

    _, store = harvested
    cfg = ci_config(tmp_path)
    out = cfg.run_dir / "activations"
    for i in (0, 1):  # of 3: part 0 writes train 0 and 3 and eval 0, part 1 train 1; part 2 (train 2) never runs
        harvest(cfg, out, progress=False, part=(i, 3))
    (out / "train_00003.safetensors").write_bytes(b"damaged since")
    written: list[str] = []
    real = harvest_mod.write_shard
    monkeypatch.setattr(harvest_mod, "write_shard",
                        lambda d, split, idx, *a, **k: written.append(f"{split}_{idx}") or real(d, split, idx, *a, **k))
    harvest(cfg, out, progress=False)
    assert sorted(written) == ["train_2", "train_3"], "only the missing part's shard and the damaged one are written"
    assert _store_records(out) == _store_records(store.directory)


def test_harvest_command_in_parts_and_its_errors(harvested, tmp_path, capsys):
    _, store = harvested
    sets = ["--set", f"run.out_dir={tmp_path}"]
    assert cli.main(["harvest", "params/ci.yaml", *sets, "--part", "1/2"]) == 0
    assert "harvest part 1/2: 2 shards written" in capsys.readouterr().out
    assert cli.main(["harvest", "params/ci.yaml", *sets, "--part", "2/2"]) == cli.EXIT_INVALID
    assert "the index must be 0 to 1" in capsys.readouterr().err
    assert cli.main(["harvest", "params/ci.yaml", *sets]) == 0  # part 0 never ran: the final one writes it
    assert "activation store complete" in capsys.readouterr().out
    assert _store_records(tmp_path / "ci" / "activations") == _store_records(store.directory)


def test_batch_that_the_processes_cannot_share_is_refused_before_anything_runs(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"train.batch_sequences: 8 .* 3 processes; use --set train.batch_sequences=6 or 9 .*run 2 processes"):
        distributed.check_batch_divisible(8, 3)
    distributed.check_batch_divisible(8, 4)
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert cli.main(["params/ci.yaml", "--set", f"run.out_dir={tmp_path}"]) == cli.EXIT_INVALID
    assert "train.batch_sequences" in capsys.readouterr().err
    assert not (tmp_path / "ci").exists(), "nothing was harvested or written"
    with pytest.raises(RuntimeError, match="has not joined its group"):
        distributed.batch_share(6)  # train_variant under torchrun, without the process group
