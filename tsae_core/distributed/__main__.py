"""The commands of several processes: train a run's SAEs together under torchrun, harvest in parts.

    torchrun --standalone --nproc_per_node=8 -m tsae_core.distributed params/<name>.yaml [--set k=v] [--only a,b]
    python -m tsae_core.distributed harvest params/<name>.yaml --part 0/4      # one machine's share of the harvest
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from tsae_core.config import ConfigError
from tsae_core.distributed import (
    active,
    all_ranks,
    barrier,
    check_batch_divisible,
    check_device,
    finish,
    init,
    is_main,
    rank,
    shutdown,
    world_size,
)

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
        finish()
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
    """Train the run's SAEs (all, or those `--only` names) in one process or several; returns the exit status."""
    from tsae_core.interrupts import Interrupted
    from tsae_core.io import DiskFull
    from tsae_core.run_lock import RunDirectoryLocked
    from tsae_core.store import StoreError
    from tsae_core.train import TrainingDiverged

    args = _parser("torchrun --nproc_per_node=N -m tsae_core.distributed", harvest=False).parse_args(argv)
    n = world_size()
    try:
        cfg, overrides, names = _train_settings(args, n)
    except ConfigError as e:
        _say(f"tsae: invalid parameters: {e}", error=True)
        return EXIT_INVALID
    device = _started(cfg.run.device)
    if device is None:
        return EXIT_FAILED
    try:
        failed = _train_chosen(cfg, args.params, overrides, names, device, n)
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


def _train_settings(args: argparse.Namespace, n: int) -> tuple[Any, dict[str, Any], list[str]]:
    """The run's config, the `--set` overrides and the SAEs to train, checked for `n` processes (`ConfigError` if not)."""
    from tsae_core.config import load_config, parse_override

    overrides = dict(parse_override(s) for s in args.sets)
    cfg = load_config(args.params, overrides)
    names = _chosen_instances(cfg, args.only)
    check_batch_divisible(cfg.train.batch_sequences, n)
    check_device(cfg.run.device, n)
    return cfg, overrides, names


def _train_chosen(cfg: Any, params: str, overrides: dict[str, Any], names: list[str], device: torch.device, n: int) -> list[str]:
    """Harvest, then train the SAEs `names` under the run's lock, saying how each went; returns those that failed."""
    from tsae_core.config import find_params_file
    from tsae_core.repair import record_invocation, run_command
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    failed: list[str] = []
    _say(f"[tsae] {n} process{'es' if n > 1 else ''} on {device.type}"
         + (f" ({'NCCL' if device.type == 'cuda' else 'gloo'})" if n > 1 else "")
         + f"; each reads {cfg.train.batch_sequences // n} of every {cfg.train.batch_sequences} sequences")
    with run_lock_on_main(cfg.run_dir):
        if is_main():  # repair messages repeat this run's params and overrides (`tsae_core.repair`)
            record_invocation(cfg, find_params_file(params), overrides)
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
    _say(f"[tsae] SAEs in {cfg.run_dir / 'saes'}; `{run_command(str(find_params_file(params)), overrides)}` "
         "evaluates, clusters and plots them (their training is skipped)")
    finish()
    return failed

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
