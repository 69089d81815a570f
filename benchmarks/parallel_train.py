"""Train and evaluate every SAE of an experiment in parallel processes, one CPU thread each.

    python benchmarks/parallel_train.py params/synthetic.yaml [--set run.seeds=[0,1,2]] [--workers 16]

For many-core machines: the notebooks train the SAEs one after another, this trains them side by side
(harvesting first, once). Results land where `tsae run` puts them (`runs/<run>/saes`, `train`, `eval`),
so a later `tsae run` with the same params skips the training and draws the figures. Each process
uses one thread (OMP_NUM_THREADS=1): more processes than cores slow each other down many times over.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context


def _work(params: str, overrides: dict, name: str) -> tuple[str, float, dict]:
    import torch

    torch.set_num_threads(1)
    from tsae_core import ActivationStore
    from tsae_core.config import load_config
    from tsae_core.evals.core import evaluate_variant, summary_row
    from tsae_core.train import train_variant

    t0 = time.perf_counter()
    cfg = load_config(params, overrides)
    store = ActivationStore.open(cfg.run_dir / "activations")
    train_variant(cfg, name, store, cfg.run_dir, progress=False)
    result = evaluate_variant(cfg, name, store, cfg.run_dir, progress=False)
    return name, time.perf_counter() - t0, summary_row(name, result)


def main() -> None:
    from tsae_core.config import load_config, parse_override
    from tsae_core.harvest import harvest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    args = ap.parse_args()
    overrides = dict(parse_override(s) for s in args.sets)
    cfg = load_config(args.params, overrides)
    harvest(cfg, cfg.run_dir / "activations")
    only = set(filter(None, args.only.split(",")))
    names = [i.name for i in cfg.instances() if not only or i.variant in only]
    print(f"{len(names)} SAEs on {args.workers} workers", flush=True)
    os.environ["OMP_NUM_THREADS"] = "1"
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_work, args.params, overrides, n) for n in names]
        for f in as_completed(futures):
            name, seconds, row = f.result()
            cells = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items() if k != "variant")
            print(f"{name:36s} {seconds:6.0f} s  {cells}", flush=True)


if __name__ == "__main__":
    main()
