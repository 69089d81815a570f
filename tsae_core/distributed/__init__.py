"""Several processes training one SAE together: the process group, and what crosses it.

    torchrun --standalone --nproc_per_node=8 -m tsae_core.distributed params/<name>.yaml [--set k=v] [--only a,b]
    python -m tsae_core.distributed harvest params/<name>.yaml --part 0/4      # one machine's share of the harvest

(the commands are in `__main__.py`).

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

import atexit
import datetime
import gc
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

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
    from tsae_core.device import resolve_device

    chosen = resolve_device(device)
    if world_size() > 1 and chosen.type == "cuda":
        chosen = torch.device("cuda", local_rank())
        torch.cuda.set_device(chosen)
    if world_size() > 1 and not _initialised():
        if chosen.type == "cuda":
            dist.init_process_group("cpu:gloo,cuda:nccl", timeout=TIMEOUT, device_id=chosen)
        else:
            dist.init_process_group("gloo", timeout=TIMEOUT)
        atexit.register(shutdown)  # however the process ends, the group is gone before the interpreter is
    return chosen


def finish() -> None:
    """The last collective of a run that succeeded on every rank: wait for the others, so that no rank
    tears its connections down (`shutdown`) while another still sends on them. Not for a failing
    rank: the others may be inside another collective, and a barrier would not match it."""
    barrier()


def shutdown() -> None:
    """Leave the process group: destroy it, then collect it now, while the interpreter is whole.

    A finished 2-process training once died at exit under load (rank 1: `terminate called without an
    active exception`, SIGABRT, after its last step). The process group's C++ side owns the gloo
    worker threads and the transport's event loop; when it is freed only by the interpreter's
    finalization or by static destructors at exit, those threads can be torn down with tensors and
    Python references still held, which aborts the process (the failure mode described in
    pytorch/pytorch#179291). Here the group is destroyed and garbage-collected on the main thread
    before Python begins to finalize; `init` registers this with `atexit` so that an exception or
    `sys.exit` on the way out takes the same path. Idempotent."""
    if _initialised():
        dist.destroy_process_group()
    gc.collect()


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
    tokens, the active codes (a 0-d tensor, read only when a number is asked for), and whether any
    rank was asked to stop (Ctrl-C)."""

    fired_F: torch.Tensor
    n_tokens: int
    stop: bool
    active_codes: torch.Tensor

    @classmethod
    def of(cls, fired_F: torch.Tensor, active_codes: torch.Tensor, n_tokens: int, stop: bool) -> BatchCounts:
        """From this rank's firing latents and active codes over its counted tokens."""
        if not active():
            return cls(fired_F, n_tokens, stop, active_codes)
        device = fired_F.device
        counts = torch.cat([fired_F.long(), active_codes.reshape(1).long(), torch.as_tensor([n_tokens, int(stop)], device=device)])
        all_reduce(counts)
        total, stops = counts[-2:].tolist()
        return cls(counts[:-3] > 0, int(total), stops > 0, counts[-3])

    def l0(self) -> float:
        """Mean active codes per counted token (0 without tokens)."""
        return float(self.active_codes) / self.n_tokens if self.n_tokens else 0.0


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
