"""`tsae run PARAMS [--set key=value ...] [--only STAGES] [--force] [--allow-unhealthy]`: one experiment, end to end.
(`tsae export RUN_OR_SAE_DIR --format saelens OUT` writes SAEs for SAELens: `tsae_core.interop`;
`tsae ratings RUN FILE...` scores blind ratings made on the dashboard: `tsae_core.dashboard.rating`.)

The params file is validated completely first. The run directory is locked for the whole run (a
second run of it fails at once, naming the holder). Each stage is a numbered notebook executed with
papermill (kernel `python3`); the executed copy is kept in `runs/<run>/notebooks/`. A stage whose
notebook, package code, parameters and input files are unchanged since its last success, and whose
outputs are all there and intact, is skipped; a stage whose inputs are stale or damaged is refused
with the command that repairs them. The summary gives each SAE's health verdict; an unhealthy or
failed SAE makes the exit status 3 unless `--allow-unhealthy`, or unless the params file expects it
(`run.expected_unhealthy`, with the reason, which the summary prints beside the verdict).

Exit status: 0 done, 1 a stage failed (or the directory is locked, or the disk is full), 2 invalid
parameters, 3 an SAE is unhealthy, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsae_core.config import ConfigError, ExperimentConfig, load_config, parse_override, project_root
from tsae_core.io import DiskFull, code_hash, machine_description, provenance, read_json, write_json
from tsae_core.repair import record_invocation
from tsae_core.run_lock import RunDirectoryLocked

EXIT_FAILED, EXIT_INVALID, EXIT_UNHEALTHY, EXIT_INTERRUPTED = 1, 2, 3, 130


class StageFailed(RuntimeError):
    """A notebook raised; the message names the stage, the error and the executed notebook."""


@dataclass(frozen=True)
class Stage:
    name: str
    notebook: str
    sections: tuple[str, ...]
    """Config sections the stage's results depend on (cumulative along the pipeline)."""


STAGES = (
    Stage("harvest", "01_harvest", ("source", "harvest")),
    Stage("train", "02_train", ("source", "harvest", "variants", "train")),
    Stage("evaluate", "03_evaluate", ("source", "harvest", "variants", "train", "eval", "probing", "unlearning")),
    Stage("autointerp", "04_autointerp", ("source", "harvest", "variants", "train", "eval", "probing", "unlearning", "autointerp")),
    Stage("cluster", "05_cluster_features", ("source", "harvest", "variants", "train", "eval", "probing", "unlearning", "autointerp",
                                             "cluster")),
    Stage("plot", "06_plot", ("source", "harvest", "variants", "train", "eval", "probing", "unlearning", "autointerp", "cluster",
                              "plot")),
    Stage("dashboard", "07_dashboard", ("source", "harvest", "variants", "train", "eval", "cluster", "dashboard")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def stage_key(stage: Stage, cfg: ExperimentConfig, upstream_key: str) -> str:
    notebook = (notebooks_dir() / f"{stage.notebook}.py").read_bytes()
    payload = json.dumps(
        {"stage": stage.name, "seed": cfg.run.seed, "config": cfg.hash(*stage.sections), "upstream": upstream_key},
        sort_keys=True,
    ).encode()
    return hashlib.sha256(payload + notebook + code_hash().encode()).hexdigest()[:16]


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(STAGE_NAMES)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--only: unknown stage {unknown[0]!r}; stages are {', '.join(STAGE_NAMES)}")
    return chosen


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a stage; the message says where a rerun resumes."""


def resume_point(stage: str, cfg: ExperimentConfig) -> str:
    """Where a rerun of an interrupted stage picks up, read from the run directory."""
    from tsae_core.checkpoints import TrainPaths, checkpoint_step, latest_checkpoint
    from tsae_core.harvest import PROGRESS

    if stage == "train":
        for inst in cfg.instances():
            ckpt = latest_checkpoint(TrainPaths.of(cfg.run_dir, inst.name))
            if ckpt is not None:
                return f"resume from step {checkpoint_step(ckpt)} ({inst.name})"
        return "resume from step 0"
    if stage == "harvest":
        try:
            done = len(read_json(cfg.run_dir / "activations" / PROGRESS)["shards"])
        except (OSError, ValueError, KeyError, TypeError):
            done = 0
        return f"resume from shard {done}"
    return "resume (finished stages are kept)"


def execute_stage(stage: Stage, params_file: Path, overrides: dict[str, Any], out_notebook: Path, force: bool = False) -> None:
    """Execute the stage's notebook (see `tsae_core.notebook_exec`)."""
    from tsae_core.notebook_exec import execute_notebook

    parameters = {"params": str(params_file), "overrides": overrides}
    if stage.name in ("harvest", "train", "evaluate", "autointerp"):  # the stages that keep finished work between runs
        parameters["force"] = force
    execute_notebook(notebooks_dir() / f"{stage.notebook}.py", out_notebook, parameters, cwd=project_root())


@dataclass
class RunOutcome:
    cfg: ExperimentConfig
    unhealthy: list[str]
    """SAEs whose training failed or whose health verdict is unhealthy."""


def _check_inputs(stage: Stage, cfg: ExperimentConfig, params_file: Path, overrides: dict[str, Any], out_nb: Path) -> None:
    """Refuse to run a stage on inputs that are missing, damaged or made for other parameters, naming
    the command that makes them: this run's own params file and overrides (`tsae_core.repair`)."""
    from tsae_core.repair import run_command
    from tsae_core.stage_outputs import NEEDS, output_problems

    for upstream in NEEDS[stage.name]:
        problems = output_problems(upstream, cfg)
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise StageFailed(f"stage {stage.name} failed before running {out_nb.name}: it needs the {upstream} stage's "
                              f"outputs for these parameters, but {problems[0]}{more}; run "
                              f"`{run_command(str(params_file), overrides, only=upstream)}` "
                              f"first, or run without --only")


def _print_health(cfg: ExperimentConfig) -> list[str]:
    """Print each SAE's verdict; returns the unhealthy ones that count against the run, i.e. all but
    those `run.expected_unhealthy` names with a reason."""
    from tsae_core.stage_outputs import sae_health

    verdicts = sae_health(cfg)
    if all(v.healthy is None for v in verdicts):
        print("[tsae] health: no SAE evaluated yet (the evaluate stage gives each one a verdict)")
        return []
    print("[tsae] health of each SAE:")
    counted = []
    for v in verdicts:
        expected = cfg.run.expected_unhealthy.get(cfg.instance(v.name).variant)
        word = {True: "healthy", False: "UNHEALTHY", None: "-"}[v.healthy]
        line = f"[tsae]   {v.name:28s} {word}" + ("" if v.healthy or v.healthy is None and v.detail == word else f": {v.detail}")
        if expected and v.healthy is False:
            line += f" (expected, run.expected_unhealthy: {expected})"
        elif expected and v.healthy:
            line += " (listed in run.expected_unhealthy, but healthy: the entry can go)"
        elif v.healthy is False:
            counted.append(v.name)
        print(line)
    return counted


def run(params: str, overrides: dict[str, Any], only: list[str], force: bool = False) -> RunOutcome:
    """Run the selected stages of an experiment under the run directory's lock."""
    from tsae_core.config import find_params_file
    from tsae_core.notebook_exec import remove_stale_kernel_files
    from tsae_core.run_lock import run_lock

    # Progress bars refresh at most once a second: readable in a terminal, few notebook outputs.
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    params_file = find_params_file(params)
    cfg = load_config(params_file, overrides)  # validates everything before any heavy work
    remove_stale_kernel_files()
    with run_lock(cfg.run_dir):
        _run_stages(cfg, params_file, overrides, only, force)
        unhealthy = _print_health(cfg) if set(only) - {"harvest"} else []
    print(f"[tsae] results: {cfg.run_dir}")
    print(f"[tsae] figures: {cfg.figures_dir}")
    return RunOutcome(cfg, unhealthy)


def _run_stages(cfg: ExperimentConfig, params_file: Path, overrides: dict[str, Any], only: list[str], force: bool) -> None:
    from tsae_core.notebook_exec import NotebookFailed, NotebookInterrupted
    from tsae_core.stage_outputs import inputs_fingerprint, output_problems

    run_dir = cfg.run_dir
    record_invocation(cfg, params_file, overrides)  # what every printed repair command repeats (`tsae_core.repair`)
    state_file = run_dir / "stages.json"
    try:
        state: dict[str, Any] = read_json(state_file) if state_file.is_file() else {}
    except (OSError, ValueError):
        state = {}
    state = {k: v for k, v in state.items() if isinstance(v, dict)} if isinstance(state, dict) else {}
    state.pop("tsae", None)

    for stage in STAGES:
        if stage.name not in only:
            continue
        out_nb = run_dir / "notebooks" / f"{stage.notebook}.ipynb"
        _check_inputs(stage, cfg, params_file, overrides, out_nb)
        key = stage_key(stage, cfg, inputs_fingerprint(stage.name, cfg))
        if not force and state.get(stage.name, {}).get("key") == key and out_nb.is_file():
            problems = output_problems(stage.name, cfg)
            if not problems:
                print(f"[tsae] {stage.name:9s} unchanged, skipped  ({out_nb})")
                continue
            print(f"[tsae] {stage.name:9s} outputs need repair: {problems[0]}"
                  + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), flush=True)
        print(f"[tsae] {stage.name:9s} running {stage.notebook} ...", flush=True)
        t0 = time.perf_counter()
        state.pop(stage.name, None)
        write_json(state_file, state, stamp=provenance(cfg.hash()))
        try:
            execute_stage(stage, params_file, overrides, out_nb, force=force)
        except NotebookFailed as e:
            if e.ename == "DiskFull" or "[Errno 28]" in e.evalue:
                raise DiskFull(run_dir, f"during {stage.name}") from None
            raise StageFailed(f"stage {stage.name} failed: {e.ename}: {e.evalue}\n"
                              f"      the executed notebook, with the full traceback, is {out_nb}") from None
        except (NotebookInterrupted, KeyboardInterrupt):
            raise StageInterrupted(stage.name) from None
        seconds = time.perf_counter() - t0
        state[stage.name] = {"key": key, "seconds": round(seconds, 1), "notebook": str(out_nb), "machine": machine_description()}
        write_json(state_file, state, stamp=provenance(cfg.hash()))
        print(f"[tsae] {stage.name:9s} done in {seconds:.0f} s  ({out_nb})", flush=True)


def main(argv: list[str] | None = None) -> int:
    """`tsae COMMAND ...`: parse the command line and run the command; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "report":
        from tsae_core.report import report_command

        return report_command(args.runs, args.out)
    if args.command == "ratings":
        from tsae_core.dashboard.rating import ratings_command

        return ratings_command(args.run_dir, args.files)
    if args.command == "export":
        from tsae_core.interop import export_command

        return export_command(args.source, args.out, args.format, force=args.force)
    return _run_or_validate(args)


def _parser() -> argparse.ArgumentParser:
    """The `tsae` command line: run, validate, export, ratings and report."""
    parser = argparse.ArgumentParser(prog="tsae", description="Temporal sparse autoencoders: run an experiment.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run an experiment's notebooks 01-07 with papermill")
    p_val = sub.add_parser("validate", help="only load and validate a params file")
    for p in (p_run, p_val):
        p.add_argument("params", help="params YAML, e.g. params/default.yaml")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value, e.g. --set train.steps=200 (repeatable)")
    p_run.add_argument("--only", help=f"comma-separated stages among {','.join(STAGE_NAMES)}")
    p_run.add_argument("--force", action="store_true", help="rerun stages even if unchanged")
    p_run.add_argument("--allow-unhealthy", action="store_true",
                       help="exit 0 even if an SAE's training failed or its health verdict is unhealthy")
    p_exp = sub.add_parser("export", help="write an SAE, or every SAE of a run, in another library's format")
    p_exp.add_argument("source", metavar="RUN_OR_SAE_DIR", help="runs/<run> (every SAE, into OUT/<name>/) or runs/<run>/saes/<name>")
    p_exp.add_argument("out", metavar="OUT", help="the folder to write")
    p_exp.add_argument("--format", required=True, choices=["saelens"], help="saelens: a SAELens 6.x folder (SAE.load_from_disk)")
    p_exp.add_argument("--force", action="store_true", help="replace folders that already exist")
    p_rate = sub.add_parser("ratings", help="unblind and score ratings downloaded from a run's dashboard (rate.html)")
    p_rate.add_argument("run_dir", metavar="RUN", help="the run directory, e.g. runs/default")
    p_rate.add_argument("files", metavar="FILE", nargs="+", help="ratings JSON files (several raters pool)")
    p_rep = sub.add_parser("report", help="write a results report per run from its JSON files (docs/reports.md)")
    p_rep.add_argument("runs", metavar="RUN", nargs="+", help="a run directory (runs/<run>) or a run name")
    p_rep.add_argument("--out", default="docs/results", help="folder of the reports (default: docs/results)")
    return parser


def _run_or_validate(args: argparse.Namespace) -> int:
    """`tsae validate` or `tsae run`, each failure turned into its message and exit status."""
    cfg: ExperimentConfig | None = None
    try:
        overrides = dict(parse_override(s) for s in args.sets)
        cfg = load_config(args.params, overrides)
        if args.command == "validate":
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        outcome = run(args.params, overrides, parse_only(args.only), force=args.force)
        if outcome.unhealthy and not args.allow_unhealthy:
            print(f"tsae: unhealthy SAEs: {', '.join(outcome.unhealthy)} (see the health summary above); "
                  f"pass --allow-unhealthy to accept them", file=sys.stderr)
            return EXIT_UNHEALTHY
        return 0
    except ConfigError as e:
        print(f"tsae: invalid parameters: {e}", file=sys.stderr)
        return EXIT_INVALID
    except StageInterrupted as e:
        assert cfg is not None
        again = " without --force" if args.force else ""
        print(f"\ntsae: interrupted during {e}; rerun the same command{again} to {resume_point(str(e), cfg)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        # outside a stage: while reading the params, between two stages or during the health summary
        print("\ntsae: interrupted outside a stage; every finished stage is kept: rerun the same command to go on",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DiskFull, StageFailed, RunDirectoryLocked) as e:
        print(f"\ntsae: {e}", file=sys.stderr)  # on a line of its own, after any unfinished progress bar
        return EXIT_FAILED

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
