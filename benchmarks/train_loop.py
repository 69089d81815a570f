"""Throughput of the whole training loop against the bare optimizer step and the loader.

    python benchmarks/train_loop.py [params/synthetic.yaml] [--device cuda] [--d-in 768] [--d-sae 16384]
                                    [--variant topk] [--batch-sequences 32] [--steps 300]

Harvests the params' synthetic source at width `--d-in` into a temporary directory, then times, in
tokens per second of training:
  loader        `SequenceLoader` batches moved to the device (what the loop reads), nothing else;
  bare step     `tsae_core.train.training_step` on one batch already on the device, repeated;
  train loop    `tsae_core.train.train_variant`: loader, step, dead-latent tracker, controller, curves
                and checkpoints, read from the curves' own tokens/s records after the first;
The ratio column is each line against the bare step. The gap between the bare step and the loop is
what the loop adds around the step: on a GPU, the host work the device waits for.
Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import _sync, _time_steps  # noqa: E402


def _config(args: argparse.Namespace, out_dir: str):
    from tsae_core.config import config_from_dict
    from tsae_core.params_file import find_params_file, read_params

    data = read_params(find_params_file(args.params))
    spec = dict(data["variants"][args.variant])
    spec["d_sae"] = args.d_sae
    data["variants"] = {args.variant: spec}
    data["run"] = {**data.get("run", {}), "out_dir": out_dir, "device": args.device, "name": "train_loop"}
    data["source"]["synthetic"]["d_model"] = args.d_in
    n_train = max(4 * args.batch_sequences, 1024)
    data["harvest"] = {**data["harvest"], "n_train_sequences": n_train, "n_eval_sequences": args.batch_sequences,
                       "sequences_per_shard": 256}
    data["train"] = {**data["train"], "steps": args.steps, "batch_sequences": args.batch_sequences,
                     "log_every": args.log_every, "checkpoint_every": 0}
    return config_from_dict(data, origin=f"{args.params} (benchmark)")


def _loader_rate(cfg, store, device, batches: int) -> float:
    loader = store.split("train").loader(cfg.train.batch_sequences, seed=0)
    next(loader).to(device)
    _sync(device)
    t0 = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        batch = next(loader).to(device)
        tokens += int(batch.mask_BT.shape.numel())
    _sync(device)
    return tokens / (time.perf_counter() - t0)


def _bare_step_rate(cfg, name, store, device, steps: int) -> float:
    import torch

    from tsae_core.sae import LossContext
    from tsae_core.train import _init_sae, make_optimizer, sparse_path_for, tf32_matmuls, training_step

    v = cfg.variants[name]
    sae = _init_sae(cfg, name, store, device)
    sae.sparse_path = sparse_path_for(sae, cfg.train.sparse_codes, device)
    opt = make_optimizer(sae, v.lr or v.default_lr * cfg.train.lr_scale, cfg.train.adam_betas)
    batch = next(store.split("train").loader(cfg.train.batch_sequences, seed=0)).to(device)
    dead = torch.zeros(v.d_sae, dtype=torch.bool, device=device)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def fail(terms, grad_norm):
        raise RuntimeError("non-finite step in the benchmark")

    def step(i: int) -> None:
        ctx = LossContext(batch.mask_BT, batch.doc_start_BT, 1.0, dead, step=i, seed=0, doc_id_BT=batch.doc_id_BT)
        training_step(sae, opt, batch, ctx, cfg.train.grad_clip, autocast, on_nonfinite=fail)

    with tf32_matmuls(device):
        seconds, _ = _time_steps(step, steps, steps // 10 + 3, device)
    return batch.mask_BT.numel() / seconds


def _loop_rate(cfg, name, store) -> float:
    from tsae_core.checkpoints import TrainPaths
    from tsae_core.train import train_variant

    train_variant(cfg, name, store, cfg.run_dir, progress=False, force=True)
    records = [json.loads(line) for line in TrainPaths.of(cfg.run_dir, name).curves.read_text().splitlines()]
    return statistics.median(r["tokens_per_s"] for r in records[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="?", default="params/synthetic.yaml")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--variant", default="topk")
    ap.add_argument("--d-in", type=int, default=768)
    ap.add_argument("--d-sae", type=int, default=16384)
    ap.add_argument("--batch-sequences", type=int, default=32)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = ap.parse_args()

    import torch

    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore

    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(args, tmp)
        t0 = time.perf_counter()
        harvest(cfg, cfg.run_dir / "activations", progress=False)
        store = ActivationStore.open(cfg.run_dir / "activations")
        print(f"params {args.params}, device {device}, {args.variant} at {args.d_in} x {args.d_sae}, "
              f"{args.batch_sequences} x {cfg.harvest.context_size} tokens per step, {args.steps} steps "
              f"(harvest {time.perf_counter() - t0:.0f} s)")
        rows = {
            "loader": _loader_rate(cfg, store, device, args.steps),
            "bare step": _bare_step_rate(cfg, args.variant, store, device, args.steps),
            "train loop": _loop_rate(cfg, args.variant, store),
        }
    base = rows["bare step"]
    print(f"{'line':<12} {'tokens/s':>12} {'x bare step':>12}")
    for line, rate in rows.items():
        print(f"{line:<12} {rate:12.0f} {rate / base:12.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "tokens_per_s": rows}, indent=1))


if __name__ == "__main__":
    main()
