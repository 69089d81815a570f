"""A run's results as the report reads them: JSON and JSONL files only, never a weight file.

What is read, all under `runs/<run>/`: `config.json` (the validated parameters), `stages.json` (the
seconds and machine of each stage), `activations/manifest.json` (the data), `saes/<sae>/cfg.json`
(each training's steps, tokens, seconds and device), `train/<sae>.jsonl` (training curves),
`eval/<sae>.json` with the sparse-probing, unlearning and autointerp results beside it
(`tsae_core.plots.attach_analyses`), and `mechanisms.json` where the mechanism tests wrote one. Any
file may be missing: the report then says what it lacks rather than fail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsae_core.io import read_json
from tsae_core.params_file import project_root
from tsae_core.plots import attach_analyses, load_curves, load_evals

_SEED_SUFFIX = re.compile(r"-seed\d+$")


@dataclass(frozen=True)
class RunResults:
    """Everything the report of one run is made from."""

    name: str
    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    """config.json's `config` (the parameters after validation); empty when the run has none."""
    config_stamp: dict[str, Any] = field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    """stages.json without its stamp: stage -> {seconds, machine, ...}."""
    stages_stamp: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    sae_cfgs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """SAE instance -> its saes/<instance>/cfg.json."""
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)
    """SAE instance -> its eval JSON, with its analyses attached."""
    curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """SAE instance -> its training-curve records."""
    mechanisms: dict[str, Any] | None = None
    """mechanisms.json's `mechanisms` (prior -> result), None without the file."""

    @property
    def source(self) -> dict[str, Any]:
        """What the activations came from: the store's manifest, else the parameters, else an SAE's eval."""
        first_eval = next(iter(self.evals.values()), {})
        return (self.manifest.get("source") or self.config.get("source")
                or (first_eval.get("sae_cfg") or {}).get("source") or {})

    def variant_of(self, instance: str) -> str:
        """The variant an SAE instance belongs to: its eval's, its cfg.json's, else its name less `-seed<N>`."""
        e = self.evals.get(instance) or {}
        return e.get("variant") or self.sae_cfgs.get(instance, {}).get("variant_name") or _SEED_SUFFIX.sub("", instance)


def resolve_run(path_or_name: str | Path) -> Path:
    """A run directory given as a path (from the cwd or the project root) or as a run name under `runs/`."""
    p = Path(path_or_name).expanduser()
    for candidate in (p, project_root() / p, project_root() / "runs" / p):
        if candidate.is_dir():
            return candidate.resolve()
    raise FileNotFoundError(f"no run directory {str(path_or_name)!r} (looked in the current directory, "
                            f"{project_root()} and {project_root() / 'runs'})")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = read_json(path) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _instance_names(config: dict[str, Any]) -> list[str] | None:
    """The SAEs the parameters name (stale files of removed variants are left out); None when unknown."""
    if not config:
        return None
    from tsae_core.config import ConfigError, config_from_dict

    try:
        return [i.name for i in config_from_dict(config).instances()]
    except (ConfigError, KeyError, TypeError, ValueError):
        return None


def _control_eval_dir(run_dir: Path, config: dict[str, Any]) -> Path | None:
    name = (config.get("autointerp") or {}).get("control_run")
    control = run_dir.parent / name / "eval" if name else None
    return control if control is not None and control.is_dir() else None


def load_run(run_dir: str | Path) -> RunResults:
    """Read one run directory (see the module docstring)."""
    run_dir = resolve_run(run_dir)
    config_file = _json(run_dir / "config.json")
    config = config_file.get("config") or {}
    stages = _json(run_dir / "stages.json")
    names = _instance_names(config)
    if names is not None:
        names = [n for n in names if (run_dir / "eval" / f"{n}.json").is_file()]
    evals = load_evals(run_dir / "eval", names) if (run_dir / "eval").is_dir() else {}
    evals = attach_analyses(evals, run_dir / "eval", _control_eval_dir(run_dir, config))
    curve_names = [n for n in (names or evals) if (run_dir / "train" / f"{n}.jsonl").is_file()]
    return RunResults(
        name=run_dir.name, run_dir=run_dir, config=config, config_stamp=config_file.get("tsae") or {},
        stages={k: v for k, v in stages.items() if k != "tsae" and isinstance(v, dict)}, stages_stamp=stages.get("tsae") or {},
        manifest=_json(run_dir / "activations" / "manifest.json"),
        sae_cfgs={n: c for n in (names or evals) if (c := _json(run_dir / "saes" / n / "cfg.json"))},
        evals=evals, curves=load_curves(run_dir / "train", curve_names),
        mechanisms=_json(run_dir / "mechanisms.json").get("mechanisms"),
    )
