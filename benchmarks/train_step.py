"""Training-step throughput of the base SAEs against the matmul ceiling and against SAELens.

    python benchmarks/train_step.py [--device cpu|cuda] [--shapes 128x2048,768x16384] [--tokens 1024]

For each shape d_in x d_sae and each activation (relu, topk, batchtopk; k = 32, AuxK on), times one
optimizer step of tsae's recipe (`tsae_core.train.training_step`: forward, loss, backward, parallel
decoder gradient removed, clip, Adam, decoder renormalised) and, when `sae_lens` is importable, of
SAELens's training SAE with the same shape (what its `SAETrainer._train_step` does: the
training forward pass, firing statistics, backward, clip, Adam). The two run interleaved, each measurement in a fresh process (its own peak memory),
`--repeats` times; the median counts. On CUDA both run under bf16 autocast with fp32 weights.

tsae runs on the path training takes (`train.sparse_codes: auto`, see `tsae_core.sparse_codes`);
where that is the sparse path, the dense path is timed beside it ("other path", tokens/s); with
`--both-paths` the sparse path is also timed where auto takes the dense one.

Columns: path (sparse or dense); tokens/s; GFLOP/s counting the dense step's 10 T d F FLOPs (encoder, decoder, and their
gradients: 2 T d F each, the decoder's input gradient included); the share of the ceiling, a plain
(T x d) @ (d x F) matmul timed in the same run (fp32 on CPU, bf16 on CUDA); for TopK and BatchTopK
also the share of the sparse ceiling, the time a step needs when only the encoder is dense
(2 T d F + 8 T k d FLOPs at the ceiling's rate); peak memory (CUDA: max allocated; CPU: the rise of
the process's peak resident set during the timed steps); SAELens's tokens/s and tsae / SAELens.
Measure on a quiet machine: another busy process on the same cores makes every number meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variant_step import _current_rss  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ACTIVATIONS = ("relu", "topk", "batchtopk")
K = 32


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_steps(step, steps: int, warmup: int, device) -> tuple[float, float]:
    """Seconds per step and peak bytes of `step()` run `steps` times after `warmup`."""
    import resource

    import torch

    for i in range(warmup):
        step(i)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rss_before = _current_rss()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    _sync(device)
    seconds = (time.perf_counter() - t0) / steps
    if device.type == "cuda":
        return seconds, float(torch.cuda.max_memory_allocated())
    return seconds, max(0.0, float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before))


def _inputs(tokens: int, d_in: int, device):
    import torch

    gen = torch.Generator().manual_seed(0)
    return [torch.randn(tokens, d_in, generator=gen).to(device) for _ in range(4)]


def measure_tsae(activation: str, d_in: int, d_sae: int, tokens: int, steps: int, warmup: int, device_name: str,
                 sparse_codes: str = "auto") -> dict:
    import torch

    from tsae_core.sae import LossContext, SAEConfig
    from tsae_core.sources.base import SequenceBatch
    from tsae_core.sparse_codes import use_sparse_path
    from tsae_core.train import make_optimizer, training_step
    from tsae_core.variants.registry import build_sae

    device = torch.device(device_name)
    cfg = SAEConfig(architecture="standard", activation=activation, d_in=d_in, d_sae=d_sae,
                    k=None if activation == "relu" else K, unit_norm_decoder=activation != "relu",
                    l1_coefficient=5.0 if activation == "relu" else 0.0,
                    aux_k_coefficient=0.0 if activation == "relu" else 1 / 32, aux_k=d_in // 2)
    sae = build_sae(cfg).to(device)
    sae.sparse_path = use_sparse_path(sparse_codes, activation, d_sae, device)
    opt = make_optimizer(sae, 1e-4, (0.9, 0.999))
    no = torch.zeros(1, tokens, dtype=torch.bool)
    batches = [SequenceBatch(x.cpu().unsqueeze(0), no, torch.zeros(1, tokens, dtype=torch.long), no).to(device)
               for x in _inputs(tokens, d_in, device)]
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[: d_sae // 10] = True  # AuxK does its work on a tenth of the latents
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        training_step(sae, opt, b, LossContext(b.mask_BT, b.doc_start_BT, 1.0, dead, step=i, seed=0), 1.0, autocast)

    seconds, peak = _time_steps(step, steps, warmup, device)
    return {"seconds": seconds, "peak_bytes": peak, "sparse_path": sae.sparse_path}


def measure_dense(activation: str, d_in: int, d_sae: int, tokens: int, steps: int, warmup: int, device_name: str) -> dict:
    """tsae's step on the dense path (`train.sparse_codes: never`)."""
    return measure_tsae(activation, d_in, d_sae, tokens, steps, warmup, device_name, sparse_codes="never")


def measure_sparse(activation: str, d_in: int, d_sae: int, tokens: int, steps: int, warmup: int, device_name: str) -> dict:
    """tsae's step on the sparse path (`train.sparse_codes: always`)."""
    return measure_tsae(activation, d_in, d_sae, tokens, steps, warmup, device_name, sparse_codes="always")


def measure_saelens(activation: str, d_in: int, d_sae: int, tokens: int, steps: int, warmup: int, device_name: str) -> dict:
    """One training step of SAELens (6.x) with the same shape and options as tsae's."""
    import sae_lens
    import torch
    from sae_lens.saes.sae import TrainStepInput

    device = torch.device(device_name)
    common = {"d_in": d_in, "d_sae": d_sae, "device": device_name, "dtype": "float32"}
    if activation == "relu":
        sae = sae_lens.StandardTrainingSAE(sae_lens.StandardTrainingSAEConfig(**common, l1_coefficient=5.0))
        coefficients = {"l1": 5.0}
    else:
        make = {"topk": (sae_lens.TopKTrainingSAE, sae_lens.TopKTrainingSAEConfig),
                "batchtopk": (sae_lens.BatchTopKTrainingSAE, sae_lens.BatchTopKTrainingSAEConfig)}[activation]
        sae = make[0](make[1](**common, k=K, aux_loss_coefficient=1 / 32))
        coefficients = {}
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4)
    inputs = _inputs(tokens, d_in, device)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=device)
    dead[: d_sae // 10] = True
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    since_fired = torch.zeros(d_sae, device=device)

    def step(i: int) -> None:  # what SAELens's SAETrainer._train_step does
        with autocast:
            out = sae.training_forward_pass(TrainStepInput(sae_in=inputs[i % len(inputs)], coefficients=coefficients,
                                                           dead_neuron_mask=dead, n_training_steps=i, is_logging_step=False))
            with torch.no_grad():
                fired = out.feature_acts.bool().float().sum(-2).bool()
                since_fired.add_(1)
                since_fired[fired] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()

    seconds, peak = _time_steps(step, steps, warmup, device)
    return {"seconds": seconds, "peak_bytes": peak}


def measure_ceiling(d_in: int, d_sae: int, tokens: int, steps: int, warmup: int, device_name: str) -> dict:
    """Seconds of one (T x d) @ (d x F) matmul: fp32 on CPU, bf16 on CUDA (what the step's matmuls run in)."""
    import torch

    device = torch.device(device_name)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(tokens, d_in, device=device, dtype=dtype)
    b = torch.randn(d_in, d_sae, device=device, dtype=dtype)
    seconds, _ = _time_steps(lambda i: a @ b, steps * 4, warmup, device)
    return {"seconds": seconds, "gflops": 2 * tokens * d_in * d_sae / seconds / 1e9}


MEASURES = {"tsae": measure_tsae, "dense": measure_dense, "sparse": measure_sparse, "saelens": measure_saelens}


def _child(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    what, activation, shape = args._child.split(":")
    d_in, d_sae = (int(n) for n in shape.split("x"))
    if what == "ceiling":
        return measure_ceiling(d_in, d_sae, args.tokens, args.steps, args.warmup, args.device)
    return MEASURES[what](activation, d_in, d_sae, args.tokens, args.steps, args.warmup, args.device)


def _run(args: argparse.Namespace, job: str) -> dict | None:
    cmd = [sys.executable, __file__, "--device", args.device, "--tokens", str(args.tokens), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--_child", job]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=os.environ.copy())
    if out.returncode != 0:
        print(f"[bench] {job} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _has_saelens() -> bool:
    return subprocess.run([sys.executable, "-c", "import sae_lens"], capture_output=True).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shapes", default="", help="comma-separated d_inxd_sae (default: 128x2048,768x16384; "
                                                 "2304x16384 added on CUDA)")
    ap.add_argument("--activations", default=",".join(ACTIVATIONS))
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per step")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved measurements per row; the median counts")
    ap.add_argument("--both-paths", action="store_true", help="also time the sparse path where auto takes the dense one")
    ap.add_argument("--no-saelens", action="store_true", help="skip SAELens even when it is installed")
    ap.add_argument("--json", default="", help="also write the rows to this JSON file")
    ap.add_argument("--_child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(_child(args)))
        return

    shapes = args.shapes.split(",") if args.shapes else ["128x2048", "768x16384"] + (["2304x16384"] if args.device.startswith("cuda") else [])
    tools = ["tsae"] + (["saelens"] if not args.no_saelens and _has_saelens() else [])
    rows = []
    for shape in shapes:
        d_in, d_sae = (int(n) for n in shape.split("x"))
        ceiling = statistics.median(r["seconds"] for r in (_run(args, f"ceiling:-:{shape}") for _ in range(args.repeats)) if r)
        ceiling_gflops = 2 * args.tokens * d_in * d_sae / ceiling / 1e9
        for activation in args.activations.split(","):
            row_tools = tools[:1] + _other_path(activation, d_sae, args) + tools[1:]
            runs: dict[str, list[dict]] = {t: [] for t in row_tools}
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both
                for tool in row_tools:
                    r = _run(args, f"{tool}:{activation}:{shape}")
                    if r:
                        runs[tool].append(r)
            row = {"activation": activation, "shape": shape, "tokens_per_step": args.tokens, "ceiling_gflops": ceiling_gflops}
            for tool, results in runs.items():
                if results:
                    seconds = statistics.median(r["seconds"] for r in results)
                    row[tool] = {"tokens_per_s": args.tokens / seconds, "peak_mb": max(r["peak_bytes"] for r in results) / 2**20,
                                 "seconds": seconds, "sparse_path": bool(results[0].get("sparse_path"))}
            rows.append(row)
            _print_row(row, d_in, d_sae, first=len(rows) == 1, args=args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _other_path(activation: str, d_sae: int, args: argparse.Namespace) -> list[str]:
    """The path `auto` does not take, timed beside it: the dense one where auto is sparse; with
    --both-paths also the sparse one where auto is dense (the TopK family only)."""
    import torch

    from tsae_core.sparse_codes import use_sparse_path

    if activation not in ("topk", "batchtopk"):
        return []
    if use_sparse_path("auto", activation, d_sae, torch.device(args.device)):
        return ["dense"]
    return ["sparse"] if args.both_paths else []


def _print_row(row: dict, d_in: int, d_sae: int, first: bool, args: argparse.Namespace) -> None:
    if first:
        precision = "bf16 autocast" if args.device.startswith("cuda") else "fp32"
        print(f"device {args.device} ({precision}), {args.tokens} tokens per step, k {K}, AuxK on, median of {args.repeats}")
        print(f"{'activation':10s} {'d_in x d_sae':>12s} {'path':>6s} {'tok/s':>9s} {'GFLOP/s':>8s} {'% ceil':>7s} {'% sparse':>9s} "
              f"{'peak MB':>8s} {'other path':>13s} {'SAELens':>9s} {'x SAELens':>9s} {'ceiling GFLOP/s':>16s}")
    t = row.get("tsae")
    if t is None:
        print(f"{row['activation']:10s} {row['shape']:>12s} failed")
        return
    T = args.tokens
    gflops = 10 * T * d_in * d_sae / t["seconds"] / 1e9
    sparse_seconds = (2 * T * d_in * d_sae + 8 * T * K * d_in) / (row["ceiling_gflops"] * 1e9)
    sparse = f"{sparse_seconds / t['seconds']:9.0%}" if row["activation"] != "relu" else f"{'-':>9s}"
    s = row.get("saelens")
    lens = f"{s['tokens_per_s']:9.0f} {t['tokens_per_s'] / s['tokens_per_s']:9.2f}" if s else f"{'-':>9s} {'-':>9s}"
    other = next((f"{p} {row[p]['tokens_per_s']:.0f}" for p in ("dense", "sparse") if p in row), "-")
    path = "sparse" if t.get("sparse_path") else "dense"
    print(f"{row['activation']:10s} {row['shape']:>12s} {path:>6s} {t['tokens_per_s']:9.0f} {gflops:8.1f} "
          f"{gflops / row['ceiling_gflops']:7.0%} {sparse} {t['peak_mb']:8.1f} {other:>13s} {lens} {row['ceiling_gflops']:16.1f}", flush=True)


if __name__ == "__main__":
    main()
