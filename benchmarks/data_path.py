"""Throughput of the data path: harvest against a bare forward pass, the loader against reading shards.

    python benchmarks/data_path.py [params/default.yaml] [--sequences 256] [--set key=value ...]

Harvest (tokens/s):
  bare forward  the model run to the hooked block and no further, no hooks, nothing kept: the bound
                any harvest has on this machine (language-model sources only);
  activations   the source's `sequences` (the forward with the hook's activations cached and copied
                out, with positions and document boundaries);
  harvest       `tsae_core.harvest.harvest` into a fresh directory: activations, shards written with
                checksums, the manifest and the scaling factor.
Loader (tokens/s):
  read shards   every train shard read from disk and verified, as the loader does;
  loader        one epoch of training batches (`train.batch_sequences` each) through `SequenceLoader`:
                shuffled across shards, gathered and converted to float32.
The ratio column is each line against the first line of its group. Measure on a quiet machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    import torch

    from tsae_core.config import load_config, parse_override
    from tsae_core.harvest import harvest
    from tsae_core.sources.factory import make_source
    from tsae_core.store import ActivationStore

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params", nargs="?", default="params/default.yaml")
    ap.add_argument("--sequences", type=int, default=256, help="train sequences harvested and loaded")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    overrides = dict(parse_override(s) for s in args.sets)
    overrides.update({"harvest.n_train_sequences": args.sequences, "harvest.n_eval_sequences": 1})
    cfg = load_config(args.params, overrides)
    T = cfg.harvest.context_size
    tokens = args.sequences * T
    source = make_source(cfg, progress=False)  # the tiny model trains once here if it is not cached
    rows: list[tuple[str, str, float]] = []

    model = getattr(source, "model", None)
    if model is not None:  # a language model: its bare forward to the hooked block
        contexts = source.contexts["train"]["tokens_NT"][: args.sequences]

        @torch.no_grad()
        def bare() -> None:
            for lo in range(0, args.sequences, source.batch_size):
                model(contexts[lo : lo + source.batch_size].to(source.device), stop_at_layer=source.layer + 1)

        bare()  # warm-up
        rows.append(("harvest", "bare forward", tokens / _timed(bare)[0]))
    rows.append(("harvest", "activations", tokens / _timed(lambda: source.sequences("train", 0, args.sequences))[0]))
    with tempfile.TemporaryDirectory() as tmp:
        seconds, _ = _timed(lambda: harvest(cfg, Path(tmp) / "activations", progress=False))
        rows.append(("harvest", "harvest", tokens / seconds))
        split = ActivationStore.open(Path(tmp) / "activations").split("train")
        seconds, _ = _timed(lambda: [split.read_shard(i) for i in range(len(split.shard_sizes))])
        rows.append(("loader", "read shards", split.n_tokens / seconds))
        loader = split.loader(cfg.train.batch_sequences, seed=0)
        n_batches = loader.batches_per_epoch
        seconds, _ = _timed(lambda: [next(loader) for _ in range(n_batches)])
        rows.append(("loader", "loader", n_batches * cfg.train.batch_sequences * T / seconds))

    print(f"{args.params}: {cfg.source.kind} source, {args.sequences} sequences x {T} tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"{'group':8s} {'line':14s} {'tokens/s':>12s} {'ratio':>7s}")
    first: dict[str, float] = {}
    for group, line, rate in rows:
        first.setdefault(group, rate)
        print(f"{group:8s} {line:14s} {rate:12.0f} {rate / first[group]:7.2f}")


if __name__ == "__main__":
    main()
