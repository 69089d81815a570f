"""Per-step training time and peak memory of every variant of a params file, against its baseline.

    python benchmarks/variant_step.py params/default.yaml [--steps 30] [--device cpu|cuda] [--d-in N]

The activation width is the source's setting (synthetic, tinylm) or the run's harvested activations' (other sources;
--d-in overrides either).

Each variant runs in its own process (so peak memory is its own): `--warmup` steps, then `--steps`
timed training steps (`tsae_core.train.training_step`: forward, loss terms, backward, clip, Adam,
after-step hooks) on batches shaped like the params' (train.batch_sequences x context_size tokens,
documents of ~64 tokens, BOS at each context start). The baseline of a variant is the token-wise
`standard` SAE with the same activation, d_sae and k. Peak memory is, on CPU, the rise of the process's
peak resident set during the timed steps above what it held before them (weights, optimizer state,
activations, queues), and `torch.cuda.max_memory_allocated` on CUDA. Prints a table; measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _d_in(cfg) -> int:
    """The activation width: the source's own setting, else that of the run's harvested activations."""
    kind = cfg.source.kind
    if kind == "synthetic":
        return cfg.source.synthetic.d_model
    if kind == "tinylm":
        return cfg.source.tinylm.d_model
    from tsae_core.store import ActivationStore, StoreError

    try:
        return ActivationStore.open(cfg.run_dir / "activations").d_in
    except StoreError:
        raise SystemExit(f"source kind {kind!r}: harvest first (`tsae run PARAMS --only harvest`) or give the "
                         "activation width with --d-in") from None


def _batch(B: int, T: int, D: int, device, gen):
    import torch

    from tsae_core.sources.base import SequenceBatch

    doc_start = torch.rand(B, T, generator=gen) < 1 / 64
    doc_start[:, 0] = True
    special = torch.zeros(B, T, dtype=torch.bool)
    special[:, 0] = True
    position = torch.zeros(B, T, dtype=torch.long)
    return SequenceBatch(torch.randn(B, T, D, generator=gen), doc_start, position, special).to(device)


def _current_rss() -> int:
    """Resident set size of this process now, in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(params: str, variant: str, steps: int, warmup: int, device_name: str, d_in: int | None,
            d_sae: int | None = None, batch_sequences: int | None = None) -> dict:
    """Time `steps` training steps of one variant in this process; returns the numbers."""
    import dataclasses

    import torch

    from tsae_core.config import load_config
    from tsae_core.sae import LossContext
    from tsae_core.train import make_optimizer, sparse_path_for, training_step
    from tsae_core.variants.registry import build_sae, sae_config

    cfg = load_config(params)
    base = variant.endswith("@baseline")
    name = variant.removesuffix("@baseline")
    v = cfg.variants[name]
    if base:
        v = dataclasses.replace(v, architecture="standard", options={})
    if d_sae:
        v = dataclasses.replace(v, d_sae=d_sae)
    D = d_in or _d_in(cfg)
    device = torch.device(device_name)
    sae = build_sae(sae_config(v, D, 1.0, {})).to(device)
    sae.sparse_path = sparse_path_for(sae, cfg.train.sparse_codes, device)  # as training chooses
    opt = make_optimizer(sae, 1e-4, cfg.train.adam_betas)
    B, T = batch_sequences or cfg.train.batch_sequences, cfg.harvest.context_size
    gen = torch.Generator().manual_seed(0)
    batches = [_batch(B, T, D, device, gen) for _ in range(4)]
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    dead = torch.zeros(v.d_sae, dtype=torch.bool, device=device)
    dead[: v.d_sae // 10] = True  # AuxK does its work on a tenth of the latents
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _current_rss()

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        training_step(sae, opt, b, LossContext(b.mask_BT, b.doc_start_BT, 1.0, dead, step=i, seed=0), 1.0, autocast)

    for i in range(warmup):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:  # the training steps' own peak: above what the process held before them (imports, weights, data)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"variant": name, "baseline": base, "ms_per_step": 1e3 * seconds, "tokens_per_s": B * T / seconds,
            "peak_mb": peak / 2**20, "architecture": v.architecture, "activation": v.activation, "d_sae": v.d_sae, "d_in": D}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d-in", type=int, default=None, help="activation width (default: the source's)")
    ap.add_argument("--d-sae", type=int, default=None, help="dictionary size of every variant (default: the params')")
    ap.add_argument("--batch-sequences", type=int, default=None, help="sequences per step (default: train.batch_sequences)")
    ap.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--_child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(measure(args.params, args._child, args.steps, args.warmup, args.device, args.d_in,
                                 args.d_sae, args.batch_sequences)))
        return

    from tsae_core.config import load_config

    cfg = load_config(args.params)
    names = [n for n in cfg.variants if not args.only or n in args.only.split(",")]
    names = [n for n in names if n not in cfg.sweep_points()]
    rows = {}
    for name in names:
        jobs = [name] + ([f"{name}@baseline"] if cfg.variants[name].architecture != "standard" else [])
        for job in jobs:
            cmd = [sys.executable, __file__, args.params, "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device, "--_child", job]
            for flag, value in (("--d-in", args.d_in), ("--d-sae", args.d_sae), ("--batch-sequences", args.batch_sequences)):
                cmd += [flag, str(value)] if value else []
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
            if out.returncode != 0:
                raise SystemExit(f"{job} failed:\n{out.stderr[-3000:]}")
            rows[job] = json.loads(out.stdout.strip().splitlines()[-1])
    header = f"{'variant':14s} {'arch':12s} {'act':9s} {'ms/step':>9s} {'x base':>7s} {'tok/s':>9s} {'peak MB':>9s} {'x base':>7s}"
    first = next(iter(rows.values()))
    print(f"params {args.params}, device {args.device}, d_in {first['d_in']}, d_sae {first['d_sae']}, "
          f"{args.batch_sequences or cfg.train.batch_sequences} x {cfg.harvest.context_size} tokens per step, {args.steps} timed steps")
    print(header)
    print("-" * len(header))
    for name in names:
        r = rows[name]
        b = rows.get(f"{name}@baseline", r)
        print(f"{name:14s} {r['architecture']:12s} {r['activation']:9s} {r['ms_per_step']:9.2f} {r['ms_per_step'] / b['ms_per_step']:7.2f} "
              f"{r['tokens_per_s']:9.0f} {r['peak_mb']:9.1f} {r['peak_mb'] / max(b['peak_mb'], 1e-9):7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
