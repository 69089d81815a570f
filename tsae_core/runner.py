"""`tsae run PARAMS [--set key=value ...] [--only STAGES] [--force]`: one experiment, end to end.

The params file is validated completely first. Each stage is a numbered notebook executed with
papermill (kernel `python3`); the executed copy is kept in `runs/<run>/notebooks/`. A stage whose
notebook, package code and parameters are unchanged since its last success is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsae_core.config import ConfigError, ExperimentConfig, load_config, parse_override, project_root
from tsae_core.io import provenance, read_json, write_json


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
    Stage("evaluate", "03_evaluate", ("source", "harvest", "variants", "train", "eval")),
    Stage("cluster", "04_cluster_features", ("source", "harvest", "variants", "train", "eval", "cluster")),
    Stage("plot", "05_plot", ("source", "harvest", "variants", "train", "eval", "cluster", "plot")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def notebooks_dir() -> Path:
    return project_root() / "notebooks"


def _code_hash() -> str:
    """Hash of the package sources: changed code means changed results."""
    h = hashlib.sha256()
    for f in sorted((Path(__file__).parent).rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def stage_key(stage: Stage, cfg: ExperimentConfig, upstream_key: str) -> str:
    notebook = (notebooks_dir() / f"{stage.notebook}.py").read_bytes()
    payload = json.dumps(
        {"stage": stage.name, "seed": cfg.run.seed, "config": cfg.hash(*stage.sections), "upstream": upstream_key},
        sort_keys=True,
    ).encode()
    return hashlib.sha256(payload + notebook + _code_hash().encode()).hexdigest()[:16]


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(STAGE_NAMES)
    chosen = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in STAGE_NAMES]
    if unknown:
        raise ConfigError(f"--only: unknown stage {unknown[0]!r}; stages are {', '.join(STAGE_NAMES)}")
    return chosen


def _local_kernel_manager() -> type:
    """A kernel manager on local IPC sockets: the kernel is reachable only through this machine's
    files, not an unencrypted TCP port (which ipykernel rightly warns about at every start)."""
    from jupyter_client.manager import KernelManager

    class LocalKernelManager(KernelManager):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.transport = "ipc"
            # socket files are `<ip>-<n>` and are removed when the kernel shuts down
            self.ip = str(Path(tempfile.gettempdir()) / f"tsae-kernel-{uuid.uuid4().hex[:12]}")

    return LocalKernelManager


def execute_stage(stage: Stage, params_file: Path, overrides: dict[str, Any], out_notebook: Path) -> None:
    """Convert the jupytext script to a notebook and execute it with papermill."""
    import jupytext
    import papermill as pm

    nb = jupytext.read(notebooks_dir() / f"{stage.notebook}.py")
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out_notebook.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{stage.notebook}.ipynb"
        jupytext.write(nb, src)
        pm.execute_notebook(
            str(src),
            str(out_notebook),
            parameters={"params": str(params_file), "overrides": overrides},
            kernel_name="python3",
            cwd=str(project_root()),
            progress_bar=False,
            stderr_file=sys.stderr,  # the kernel's progress bars show live in the terminal
            kernel_manager_class=_local_kernel_manager(),
        )


def run(params: str, overrides: dict[str, Any], only: list[str], force: bool = False) -> ExperimentConfig:
    """Run the selected stages of an experiment; returns the validated config."""
    from tsae_core.config import find_params_file

    # Progress bars refresh at most once a second: readable in a terminal, few notebook outputs.
    os.environ.setdefault("TQDM_MININTERVAL", "1")
    params_file = find_params_file(params)
    cfg = load_config(params_file, overrides)  # validates everything before any heavy work
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {"params_file": str(params_file), "overrides": overrides, "config": cfg.to_dict()},
               stamp=provenance(cfg.hash()))
    state_file = run_dir / "stages.json"
    state: dict[str, Any] = read_json(state_file) if state_file.is_file() else {}
    state.pop("tsae", None)

    upstream = ""
    for stage in STAGES:
        key = stage_key(stage, cfg, upstream)
        upstream = key
        if stage.name not in only:
            continue
        out_nb = run_dir / "notebooks" / f"{stage.notebook}.ipynb"
        if not force and state.get(stage.name, {}).get("key") == key and out_nb.is_file():
            print(f"[tsae] {stage.name:9s} unchanged, skipped  ({out_nb})")
            continue
        print(f"[tsae] {stage.name:9s} running {stage.notebook} ...", flush=True)
        t0 = time.perf_counter()
        state.pop(stage.name, None)
        write_json(state_file, state, stamp=provenance(cfg.hash()))
        try:
            execute_stage(stage, params_file, overrides, out_nb)
        except Exception as e:
            if type(e).__name__ != "PapermillExecutionError":
                raise
            raise StageFailed(f"stage {stage.name} failed: {e.ename}: {e.evalue}\n"
                              f"      the executed notebook, with the full traceback, is {out_nb}") from None
        seconds = time.perf_counter() - t0
        state[stage.name] = {"key": key, "seconds": round(seconds, 1), "notebook": str(out_nb)}
        write_json(state_file, state, stamp=provenance(cfg.hash()))
        print(f"[tsae] {stage.name:9s} done in {seconds:.0f} s  ({out_nb})", flush=True)

    print(f"[tsae] results: {run_dir}")
    print(f"[tsae] figures: {cfg.figures_dir}")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tsae", description="Temporal sparse autoencoders: run an experiment.")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run an experiment's notebooks 01-05 with papermill")
    p_val = sub.add_parser("validate", help="only load and validate a params file")
    for p in (p_run, p_val):
        p.add_argument("params", help="params YAML, e.g. params/default.yaml")
        p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value, e.g. --set train.steps=200 (repeatable)")
    p_run.add_argument("--only", help=f"comma-separated stages among {','.join(STAGE_NAMES)}")
    p_run.add_argument("--force", action="store_true", help="rerun stages even if unchanged")
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_override(s) for s in args.sets)
        if args.command == "validate":
            cfg = load_config(args.params, overrides)
            print(json.dumps(cfg.to_dict(), indent=2))
            return 0
        run(args.params, overrides, parse_only(args.only), force=args.force)
        return 0
    except ConfigError as e:
        print(f"tsae: invalid parameters: {e}", file=sys.stderr)
        return 2
    except StageFailed as e:
        print(f"tsae: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
