"""The exact command that repairs a run: its own params file and overrides, the stage, `--force` where needed.

Every message that advises a fix (a damaged or NaN shard, a shard of the wrong shape, damaged SAE
files, a stage whose inputs are missing, a damaged blind-rating key) builds its command here, so the
command repairs the run whose file is damaged: `tsae run <params> --set k=v ... [--force] --only <stage>`, with
the `--set` overrides of the run (a dropped `--set run.name=...` would repair another run, and the
default params would start the full default harvest).

Where the run's invocation comes from: `tsae run` (and the distributed trainer) records it in
`runs/<run>/config.json` (`params_file`, `overrides`) before any stage runs (`record_invocation`), and
the stages' code finds it from any path inside the run directory. A run directory that no `tsae run` made (notebooks run by
hand, the Python API) has no record; its messages then say so and name the run directory.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from tsae_core.params_file import parse_override, project_root

INVOCATION_FILE = "config.json"
"""In the run directory: {"params_file", "overrides", "config"}, written by the runner."""


def invocation(run_dir: str | Path) -> tuple[str, dict[str, Any]] | None:
    """(params file, overrides) of the last `tsae run` of `run_dir`, or None where none is recorded."""
    try:
        record = json.loads((Path(run_dir) / INVOCATION_FILE).read_text())
        params, overrides = record["params_file"], record.get("overrides") or {}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(params, str) or not isinstance(overrides, dict):
        return None
    return params, overrides


def record_invocation(cfg: Any, params_file: str | Path, overrides: dict[str, Any]) -> None:
    """Write the run's invocation (and its resolved config) where `invocation` reads it: by `tsae run`
    and by the distributed trainer, under the run directory's lock, before any stage runs."""
    from tsae_core.io import provenance, write_json

    write_json(Path(cfg.run_dir) / INVOCATION_FILE, {"params_file": str(params_file), "overrides": overrides,
                                                     "config": cfg.to_dict()}, stamp=provenance(cfg.hash()))


def _shown_params(params: str) -> str:
    """The params file as the user can pass it from the project root (relative there, else absolute)."""
    path = Path(params)
    try:
        return str(path.resolve().relative_to(project_root().resolve()))
    except ValueError:
        return str(path)


def _override_text(key: str, value: Any) -> str:
    """`key=value` that `--set` reads back as exactly `value` (plain where it can be, else JSON)."""
    for text in ([value] if isinstance(value, str) else []) + [json.dumps(value)]:
        try:
            if parse_override(f"{key}={text}") == (key, value):
                return f"{key}={text}"
        except Exception:  # noqa: BLE001 - a form that does not read back: try the next
            continue
    return f"{key}={json.dumps(value)}"


def run_command(params: str, overrides: dict[str, Any], only: str | None = None, force: bool = False) -> str:
    """`tsae run <params> --set ... [--force] [--only STAGES]`, quoted for a POSIX shell."""
    words = ["tsae", "run", _shown_params(params)]
    for key, value in overrides.items():
        words += ["--set", _override_text(str(key), value)]
    if force:
        words.append("--force")
    if only:
        words += ["--only", only]
    return " ".join(shlex.quote(w) for w in words)


def repair_command(run_dir: str | Path, stage: str, force: bool = False, extra: dict[str, Any] | None = None) -> str:
    """The command, in backticks, that reruns `stage` of the run in `run_dir` with that run's own
    params and overrides (and `extra` overrides after them); without a record, the same with the
    params file left for the user to name."""
    recorded = invocation(run_dir)
    if recorded is not None:
        params, overrides = recorded
        return f"`{run_command(params, {**overrides, **(extra or {})}, only=stage, force=force)}`"
    sets = "".join(f" --set {_override_text(k, v)}" for k, v in (extra or {}).items())
    flags = sets + (" --force" if force else "") + f" --only {stage}"
    return (f"`tsae run PARAMS{flags}` with PARAMS (and any --set) the parameters that made {run_dir} "
            f"(no `tsae run` recorded them in {Path(run_dir) / INVOCATION_FILE})")


def run_dir_of_store(store_dir: str | Path) -> Path:
    """The run directory of an activation store (`runs/<run>/activations`)."""
    return Path(store_dir).parent


def run_dir_of_sae(sae_dir: str | Path) -> Path | None:
    """The run directory of an SAE folder `runs/<run>/saes/<name>`, or None for a folder outside a run."""
    sae_dir = Path(sae_dir)
    return sae_dir.parent.parent if sae_dir.parent.name == "saes" else None
