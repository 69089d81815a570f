"""Several processes training one SAE together: the process group, and what crosses it.

    torchrun --standalone --nproc_per_node=8 -m tsae_core.distributed params/<name>.yaml [--set k=v] [--only a,b]
    python -m tsae_core.distributed harvest params/<name>.yaml --part 0/4      # one machine's share of the harvest

`torchrun` starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `init` joins them (NCCL
between GPUs, one per process by LOCAL_RANK; gloo on CPU). Every helper below is a no-op in a single
process, so the one-process code paths are unchanged.

Per training step the ranks exchange (`tsae_core.train`):
- the gradients (`reduce_gradients`): each rank's, from its per-token-mean loss, weighted by its
  share of the batch's counted tokens, so that their sum is the gradient of the whole batch even
  when special tokens are spread unevenly; with them the loss terms (logged as the whole batch's);
- the batch's counts (`BatchCounts`): which latents fired (for the dead-latent tracker), how many
  tokens counted and how many codes were active (the target-L0 controller's L0), and whether Ctrl-C
  reached any rank (all stop at the same step);
- the SAE's buffers (`sync_buffers`): BatchTopK's inference threshold is averaged over the ranks,
  every other buffer (a queue of negatives, latent groups) is taken from rank 0, as
  DistributedDataParallel does (the largest, the contrastive queue, is 0.7x the SAE's size at
  d_sae 16384 with its defaults).
The gradients are reduced explicitly, in buckets, after the backward pass, instead of by wrapping the
SAE in DistributedDataParallel: the loss terms and the optimizer step use the SAE's own methods
(`loss_terms`, the decoder-norm handling, `after_step`), parameters serve outside `forward`, and a
variant may leave one without a gradient in a step, all of which DDP handles only with its
unused-parameter search; the token weights and the loss terms ride in the same collective.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tsae_core.activations import BatchTopK
from tsae_core.config import ConfigError

BUCKET_ELEMENTS = 1 << 24
"""Gradients are summed across ranks in flat float32 buckets of about this many elements (64 MiB);
a larger parameter has a bucket of its own."""
TIMEOUT = datetime.timedelta(hours=2)
"""How long a rank waits for the others, e.g. while rank 0 checks and completes the harvest alone."""


# -- the process group ----------------------------------------------------------------------------


def world_size() -> int:
    """The number of processes: the group's size, or WORLD_SIZE as torchrun sets it (1 without)."""
    return dist.get_world_size() if _initialised() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if _initialised() else int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def active() -> bool:
    """True in a process group of several processes (what the helpers below act on)."""
    return _initialised() and dist.get_world_size() > 1


def is_main() -> bool:
    """Rank 0: the process that writes files (curves, checkpoints, SAEs) and prints."""
    return rank() == 0


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def init(device: str = "auto") -> torch.device:
    """Join the processes torchrun started (a no-op for one process); returns this process's device.

    On CUDA each process takes the GPU of its LOCAL_RANK and the group talks NCCL (gloo for CPU
    tensors); on CPU, gloo."""
    from tsae_core.train import resolve_device

    chosen = resolve_device(device)
    if world_size() > 1 and chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank())
        torch.cuda.set_device(chosen)
    if world_size() > 1 and not _initialised():
        if chosen.type == "cuda":
            dist.init_process_group("cpu:gloo,cuda:nccl", timeout=TIMEOUT, device_id=chosen)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
    return chosen


def shutdown() -> None:
    if _initialised():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here."""
    if active():
        dist.barrier()


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`t` summed (`sum`), averaged (`mean`) or maximised (`max`) over the ranks, in place; returned."""
    if not active():
        return t
    if op not in ("sum", "mean", "max"):
        raise ValueError(f"unknown reduction {op!r}: sum, mean or max")
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    if op == "mean":
        t.div_(dist.get_world_size())
    return t


def all_ranks(ok: bool) -> bool:
    """True when `ok` holds on every rank (so that all take the same branch)."""
    if not active():
        return ok
    flag = torch.tensor([0 if ok else 1], dtype=torch.int64)  # a CPU tensor: gloo in either group
    return int(all_reduce(flag, "max")) == 0


def batch_share(batch_sequences: int) -> tuple[int, int]:
    """(rank, number of ranks): this process's share of every batch of `batch_sequences` sequences."""
    n = world_size()
    if n > 1 and not active():
        raise RuntimeError(f"WORLD_SIZE is {n} but this process has not joined its group; start training with "
                           f"`torchrun --nproc_per_node={n} -m tsae_core.distributed params/<name>.yaml`")
    check_batch_divisible(batch_sequences, n)
    return rank(), n


def check_batch_divisible(batch_sequences: int, n_processes: int) -> None:
    """ConfigError unless the batch splits into equal shares, one per process."""
    if batch_sequences % n_processes == 0:
        return
    lower = batch_sequences - batch_sequences % n_processes
    sizes = " or ".join(str(b) for b in (lower, lower + n_processes) if b > 0)
    fits = [n for n in range(n_processes - 1, 1, -1) if batch_sequences % n == 0][:1]
    raise ConfigError(f"train.batch_sequences: {batch_sequences} sequences per batch cannot be shared equally by "
                      f"{n_processes} processes; use --set train.batch_sequences={sizes} (a multiple of {n_processes})"
                      + (f", or run {fits[0]} processes" if fits else ""))


def check_device(device: str, n_processes: int) -> None:
    """ConfigError if several processes would share the one GPU that `run.device` names."""
    if n_processes > 1 and device.startswith("cuda:"):
        raise ConfigError(f"run.device: {device} names one GPU but {n_processes} processes run; use auto or cuda "
                          f"(each process takes the GPU of its LOCAL_RANK)")


# -- what crosses the group in a training step ----------------------------------------------------


def broadcast_state(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank (before training starts, as DDP does)."""
    if not active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def reduce_gradients(parameters: Iterable[torch.nn.Parameter], terms: dict[str, torch.Tensor],
                     n_tokens: torch.Tensor | int) -> dict[str, torch.Tensor]:
    """Make every rank's gradients those of the whole batch; returns the whole batch's loss terms.

    Each rank's gradient g_r comes from a mean over its n_r counted tokens; the batch's is
    sum_r n_r g_r / sum_r n_r, and so are the loss terms. A parameter that no rank gave a gradient
    keeps none (Adam then skips it, as in one process)."""
    params = [p for p in parameters if p.requires_grad]
    if not active() or not params:
        return terms
    device = params[0].device
    n = torch.as_tensor(n_tokens, device=device).to(torch.float32).reshape(1)
    names = list(terms)
    local = [p.grad is not None for p in params]
    head = torch.cat([n, *(terms[k].detach().float().reshape(1) * n for k in names),
                      torch.tensor(local, dtype=torch.float32).to(device)])
    total, reduced_head = None, None
    for i, bucket in enumerate(_buckets(params)):
        size = sum(p.numel() for p in bucket) + (head.numel() if i == 0 else 0)
        flat = torch.empty(size, dtype=torch.float32, device=device)
        offset = 0
        if i == 0:
            flat[: head.numel()] = head
            offset = head.numel()
        for p in bucket:
            view = flat[offset: offset + p.numel()]
            if p.grad is None:
                view.zero_()
            else:
                torch.mul(p.grad.reshape(-1), n, out=view)
            offset += p.numel()
        all_reduce(flat)
        if i == 0:
            reduced_head = flat[: head.numel()].clone()
            total = reduced_head[0].clamp_min(1.0)
            offset = head.numel()
        else:
            offset = 0
        for p in bucket:
            view = flat[offset: offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = torch.empty_like(p)
            torch.div(view, total, out=p.grad)
            offset += p.numel()
    if not all(local):  # a parameter without a gradient here: keep none if no rank had one
        had = reduced_head[1 + len(names):].tolist()
        for p, count in zip(params, had):
            if count == 0:
                p.grad = None
    return {k: reduced_head[1 + j] / total for j, k in enumerate(names)}


def _buckets(params: list[torch.nn.Parameter]) -> Iterator[list[torch.nn.Parameter]]:
    bucket: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if bucket and size + p.numel() > BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
        bucket.append(p)
        size += p.numel()
    if bucket:
        yield bucket


@torch.no_grad()
def sync_buffers(module: torch.nn.Module) -> None:
    """After a step: BatchTopK's threshold averaged over the ranks that have one; every other buffer
    (training state that the ranks' different data made differ: a queue of negatives, latent groups)
    set to rank 0's, sent in its own dtype, one broadcast per dtype, as DistributedDataParallel does."""
    if not active():
        return
    averaged = [m for m in module.modules() if isinstance(m, BatchTopK)]
    if averaged:
        parts = []
        for m in averaged:
            weight = m.threshold_initialised.to(torch.float64).reshape(1)
            parts += [m.threshold.to(torch.float64).reshape(-1) * weight, weight]
        flat, offset = all_reduce(torch.cat(parts)), 0
        for m in averaged:
            F = m.threshold.numel()
            total, count = flat[offset: offset + F], flat[offset + F]
            mean = torch.where(count > 0, total / count.clamp_min(1.0), m.threshold.reshape(-1).double())
            m.threshold.copy_(mean.view_as(m.threshold))
            m.threshold_initialised.logical_or_(count > 0)
            offset += F + 1
    own = {id(t) for m in averaged for t in (m.threshold, m.threshold_initialised)}
    by_dtype: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for b in module.buffers():
        if id(b) not in own and b.numel():
            by_dtype.setdefault((b.dtype, b.device), []).append(b)
    for (dtype, _), buffers in by_dtype.items():
        wire = torch.uint8 if dtype == torch.bool else dtype  # not every backend sends bool
        flat = torch.cat([b.reshape(-1).to(wire) for b in buffers])
        dist.broadcast(flat, src=0)
        if not is_main():
            offset = 0
            for b in buffers:
                b.copy_(flat[offset: offset + b.numel()].view_as(b))
                offset += b.numel()


@dataclass
class BatchCounts:
    """A step's counts over the whole batch (every rank's share): the latents that fired, the counted
    tokens, the active codes, and whether any rank was asked to stop (Ctrl-C)."""

    fired_F: torch.Tensor
    n_tokens: int
    stop: bool
    _active: int = 0
    _features_NF: torch.Tensor | None = None

    @classmethod
    def of(cls, features_NF: torch.Tensor, n_tokens: int, stop: bool) -> BatchCounts:
        """From this rank's codes of its counted tokens (N, F)."""
        fired_F = (features_NF > 0).any(0)
        if not active():
            return cls(fired_F, n_tokens, stop, _features_NF=features_NF)
        counts = torch.cat([fired_F.long(), torch.stack([(features_NF > 0).sum(), torch.as_tensor(n_tokens, device=fired_F.device),
                                                         torch.as_tensor(int(stop), device=fired_F.device)])])
        all_reduce(counts)
        active_codes, total, stops = counts[-3:].tolist()
        return cls(counts[:-3] > 0, int(total), stops > 0, _active=int(active_codes))

    def l0(self) -> float:
        """Mean active codes per counted token (0 without tokens)."""
        if not self.n_tokens:
            return 0.0
        if self._features_NF is not None:
            return float((self._features_NF > 0).sum(-1).float().mean())
        return self._active / self.n_tokens


def fraction_unexplained(x_ND: torch.Tensor, recon_ND: torch.Tensor, mask_N: torch.Tensor) -> float:
    """`losses.fraction_unexplained` over the counted tokens of every rank's share of the batch."""
    from tsae_core import losses

    if not active():
        return float(losses.fraction_unexplained(x_ND, recon_ND, mask_N))
    m = mask_N.to(torch.float64).unsqueeze(-1)
    x, r = x_ND.double(), recon_ND.double()
    sums = torch.cat([((x - r).pow(2) * m).sum().reshape(1), (x * m).sum(0), (x.pow(2) * m).sum().reshape(1), m.sum().reshape(1)])
    all_reduce(sums)
    err, sum_D, sum_sq, n = sums[0], sums[1:-2], sums[-2], sums[-1].clamp_min(1.0)
    return float(err / (sum_sq - sum_D.pow(2).sum() / n).clamp_min(1e-12))


# -- the command line -----------------------------------------------------------------------------

EXIT_FAILED, EXIT_INVALID, EXIT_UNHEALTHY, EXIT_INTERRUPTED = 1, 2, 3, 130


def _say(message: str, error: bool = False) -> None:
    """Print once (rank 0) what every rank would print."""
    if is_main():
        print(message, file=sys.stderr if error else sys.stdout, flush=True)


def harvest_all(cfg: Any, progress: bool = True) -> dict[str, Any]:
    """The run's activation store, harvested by every rank (shards rank mod N each), then completed
    (checked, anything missing written, the manifest) by rank 0; returns its manifest."""
    from tsae_core.harvest import harvest
    from tsae_core.io import read_json
    from tsae_core.store import MANIFEST

    out_dir = cfg.run_dir / "activations"
    if active():
        harvest(cfg, out_dir, progress=progress and is_main(), part=(rank(), world_size()))
        barrier()
    error: BaseException | None = None
    if is_main():
        try:
            harvest(cfg, out_dir, progress=progress)
        except BaseException as e:  # noqa: BLE001 - re-raised below, once the others know
            error = e
    if not all_ranks(error is None):
        raise error or HarvestFailedElsewhere("rank 0 failed to complete the harvest")
    return read_json(out_dir / MANIFEST)


class HarvestFailedElsewhere(RuntimeError):
    """Rank 0 failed while the other ranks waited (rank 0 prints why)."""


@contextlib.contextmanager
def run_lock_on_main(run_dir: Path) -> Iterator[None]:
    """`tsae_core.run_lock.run_lock` held by rank 0 for the block; every rank fails if it is taken."""
    from tsae_core.run_lock import RunDirectoryLocked, run_lock

    with contextlib.ExitStack() as stack:
        error: RunDirectoryLocked | None = None
        if is_main():
            try:
                stack.enter_context(run_lock(run_dir))
            except RunDirectoryLocked as e:
                error = e
        if not all_ranks(error is None):
            raise error or RunDirectoryLocked(f"run directory {run_dir} is in use (rank 0 says by whom)")
        yield


def _started(device: str) -> torch.device | None:
    """`init`, or None after saying why it failed (no GPU, the processes could not meet)."""
    try:
        return init(device)
    except (RuntimeError, ValueError) as e:
        print(f"tsae: cannot start: {e}", file=sys.stderr, flush=True)
        return None


def _chosen_instances(cfg: Any, only: str | None) -> list[str]:
    """SAE names of the run, all or those named (an SAE's name, or a variant's for all its seeds)."""
    names = [i.name for i in cfg.instances()]
    if not only:
        return names
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    by_variant = {i.variant: [] for i in cfg.instances()}
    for i in cfg.instances():
        by_variant[i.variant].append(i.name)
    chosen: list[str] = []
    for w in wanted:
        found = [w] if w in names else by_variant.get(w)
        if not found:
            raise ConfigError(f"--only: no SAE or variant named {w!r} in this run; SAEs: {', '.join(names)}")
        chosen += [n for n in found if n not in chosen]
    return chosen


def _parse_part(text: str) -> tuple[int, int]:
    try:
        index, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--part: expected INDEX/PARTS such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= index < n:
        raise ConfigError(f"--part {text}: the index must be 0 to {n - 1} (parts are numbered from 0)")
    return index, n


def _parser(prog: str, harvest: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("params", help="params YAML, e.g. params/default.yaml")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. --set train.steps=200 (repeatable)")
    if harvest:
        p.add_argument("--part", help="INDEX/PARTS: write only the shards of index INDEX modulo PARTS (e.g. 0/4 on the "
                                      "first of four machines); without it, complete the store and write its manifest")
    else:
        p.add_argument("--only", help="comma-separated SAE (or variant) names to train; default: every SAE of the run")
        p.add_argument("--allow-unhealthy", action="store_true", help="exit 0 even if an SAE's training collapsed")
    return p


def main(argv: list[str] | None = None) -> int:
    """`python -m tsae_core.distributed [harvest] params/<name>.yaml ...` under torchrun or alone."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["harvest"]:
        return _main_harvest(argv[1:])
    return _main_train(argv)


def _main_harvest(argv: list[str]) -> int:
    from tsae_core.config import load_config, parse_override
    from tsae_core.harvest import harvest
    from tsae_core.io import DiskFull
    from tsae_core.store import StoreError

    args = _parser("python -m tsae_core.distributed harvest", harvest=True).parse_args(argv)
    try:
        cfg = load_config(args.params, dict(parse_override(s) for s in args.sets))
        part = _parse_part(args.part) if args.part else None
        check_device(cfg.run.device, world_size())
        if part and world_size() > 1:
            raise ConfigError("--part splits the harvest between separate commands; under torchrun leave it out "
                              "(the processes share the shards among themselves)")
    except ConfigError as e:
        _say(f"tsae: invalid parameters: {e}", error=True)
        return EXIT_INVALID
    out_dir = cfg.run_dir / "activations"
    if _started(cfg.run.device) is None:
        return EXIT_FAILED
    try:
        if part is not None:
            done = harvest(cfg, out_dir, part=part)
            print(f"[tsae] harvest part {part[0]}/{part[1]}: {done['written']} shards written, {done['kept']} kept, in {out_dir}; "
                  f"when every part is done: python -m tsae_core.distributed harvest {args.params}"
                  + "".join(f" --set {s}" for s in args.sets) + " (checks them and writes the manifest)", flush=True)
            return 0
        manifest = harvest_all(cfg)
        n = sum(len(s["shards"]) for s in manifest["splits"].values())
        _say(f"[tsae] activation store complete: {n} shards, scaling factor {manifest['scaling_factor']:.4f}, in {out_dir}")
        return 0
    except (StoreError, DiskFull, ValueError) as e:
        print(f"tsae: harvest failed: {e}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    except HarvestFailedElsewhere:
        return EXIT_FAILED
    except KeyboardInterrupt:
        _say(f"\ntsae: harvest interrupted; rerun the same command to resume (finished shards are kept in {out_dir})", error=True)
        return EXIT_INTERRUPTED
    finally:
        shutdown()


def _main_train(argv: list[str]) -> int:
    from tsae_core.config import load_config, parse_override
    from tsae_core.interrupts import Interrupted
    from tsae_core.io import DiskFull
    from tsae_core.run_lock import RunDirectoryLocked
    from tsae_core.store import ActivationStore, StoreError
    from tsae_core.train import TrainingDiverged, train_variant

    args = _parser("torchrun --nproc_per_node=N -m tsae_core.distributed", harvest=False).parse_args(argv)
    n = world_size()
    try:
        cfg = load_config(args.params, dict(parse_override(s) for s in args.sets))
        names = _chosen_instances(cfg, args.only)
        check_batch_divisible(cfg.train.batch_sequences, n)
        check_device(cfg.run.device, n)
    except ConfigError as e:
        _say(f"tsae: invalid parameters: {e}", error=True)
        return EXIT_INVALID
    device = _started(cfg.run.device)
    if device is None:
        return EXIT_FAILED
    failed: list[str] = []
    try:
        _say(f"[tsae] {n} process{'es' if n > 1 else ''} on {device.type}"
             + (f" ({'NCCL' if device.type == 'cuda' else 'gloo'})" if n > 1 else "")
             + f"; each reads {cfg.train.batch_sequences // n} of every {cfg.train.batch_sequences} sequences")
        with run_lock_on_main(cfg.run_dir):
            harvest_all(cfg)
            store = ActivationStore.open(cfg.run_dir / "activations")
            for name in names:
                s = train_variant(cfg, name, store, cfg.run_dir, progress=is_main())
                if s.get("failed"):
                    failed.append(f"{name} ({s['failed']})")
                    _say(f"[tsae] {name:28s} FAILED: {s['failed']}")
                    continue
                final = {k: v if isinstance(v, (int, float)) else float("nan") for k, v in s.get("final", {}).items()}
                state = "skipped (already trained)" if s["skipped"] else f"{s['steps']} steps"
                _say(f"[tsae] {name:28s} {state:26s} loss {final.get('loss', float('nan')):.4g}  "
                     f"FVU {final.get('fvu', float('nan')):.4f}  L0 {final.get('l0', float('nan')):.2f}")
        _say(f"[tsae] SAEs in {cfg.run_dir / 'saes'}; `tsae run {args.params}"
             + "".join(f" --set {s}" for s in args.sets) + "` evaluates, clusters and plots them (their training is skipped)")
    except ConfigError as e:
        _say(f"tsae: invalid parameters: {e}", error=True)
        return EXIT_INVALID
    except Interrupted as e:
        _say(f"\ntsae: {e} (the same command)", error=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        _say("\ntsae: interrupted; rerun the same command to resume (finished shards and SAEs are kept)", error=True)
        return EXIT_INTERRUPTED
    except (TrainingDiverged, StoreError, DiskFull, RunDirectoryLocked) as e:
        _say(f"\ntsae: {e}", error=True)
        return EXIT_FAILED
    except HarvestFailedElsewhere:
        return EXIT_FAILED
    finally:
        shutdown()
    if failed and not args.allow_unhealthy:
        _say(f"tsae: training failed for {'; '.join(failed)}; pass --allow-unhealthy to exit 0 anyway", error=True)
        return EXIT_UNHEALTHY
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
