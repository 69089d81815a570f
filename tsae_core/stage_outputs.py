"""What each stage leaves in a run directory, whether it is there, intact and made for these
parameters, and a fingerprint of what each stage reads.

`output_problems(stage, cfg)` lists what is wrong with a stage's outputs (each item names the file):
the runner reruns a stage whose outputs have problems instead of skipping it, and refuses to run a
stage whose inputs (the outputs of the stages it reads) have problems. `inputs_fingerprint(stage,
cfg)` changes whenever the files a stage reads change, so a stage's results never describe inputs
that are no longer on disk. `sae_health(cfg)` gives each SAE's verdict for the run summary.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsae_core.checkpoints import TrainPaths, recorded_failure, trained_state
from tsae_core.config import ExperimentConfig
from tsae_core.evals.core import latents_path
from tsae_core.harvest import harvest_hash
from tsae_core.io import read_json
from tsae_core.sae import recorded_weights_sha256
from tsae_core.store import ActivationStore, StoreError, verify_file
from tsae_core.train import trained_instances, variant_train_hash

NEEDS = {"harvest": (), "train": ("harvest",), "evaluate": ("harvest", "train"), "cluster": ("harvest", "train"),
         "plot": ("train", "evaluate", "autointerp", "cluster"), "autointerp": ("harvest", "train"),
         "dashboard": ("harvest", "train", "evaluate", "cluster")}
"""The stages whose outputs each stage reads."""


def output_problems(stage: str, cfg: ExperimentConfig) -> list[str]:
    """What is missing, damaged or made for other parameters among a stage's outputs (empty: all good)."""
    return {"harvest": _harvest, "train": _train, "evaluate": _evaluate, "cluster": _cluster, "plot": _plot,
            "autointerp": _autointerp, "dashboard": _dashboard}[stage](cfg)


def _harvest(cfg: ExperimentConfig) -> list[str]:
    directory = cfg.run_dir / "activations"
    try:
        store = ActivationStore.open(directory)
        if store.manifest.get("config_hash") != harvest_hash(cfg):
            return [f"{directory} holds activations harvested with other parameters"]
        for split in store.splits:
            for shard in store.split(split).shards:
                verify_file(directory / shard["file"], shard["sha256"])
        store.ground_truth()
    except StoreError as e:
        return [str(e).split("; ")[0]]
    return []


def _train_hash(cfg: ExperimentConfig, name: str) -> str:
    return variant_train_hash(cfg, name, harvest_hash(cfg))


def _train(cfg: ExperimentConfig) -> list[str]:
    problems = []
    for inst in cfg.instances():
        paths = TrainPaths.of(cfg.run_dir, inst.name)
        state, why = trained_state(paths, _train_hash(cfg, inst.name))
        if state == "missing":
            problems.append(why)
        elif state == "trained" and not paths.curves.is_file() and not cfg.variants[inst.variant].load_from:
            problems.append(f"training curves {paths.curves} are missing")
    return problems


def _weights_sha(cfg: ExperimentConfig, name: str) -> str | None:
    return recorded_weights_sha256(cfg.run_dir / "saes" / name)


def _describes_current_sae(cfg: ExperimentConfig, name: str, path: Path) -> str | None:
    """None if `path` (an eval or clustering JSON) was made from the SAE now on disk, else the problem."""
    try:
        recorded = read_json(path).get("sae_weights_sha256")
    except FileNotFoundError:
        return f"{path} is missing"
    except (OSError, ValueError, AttributeError) as e:
        return f"{path} is unreadable ({type(e).__name__})"
    if recorded is None or recorded != _weights_sha(cfg, name):
        return f"{path} describes an SAE that is no longer in {cfg.run_dir / 'saes' / name}"
    return None


def _evaluate(cfg: ExperimentConfig) -> list[str]:
    problems = []
    for inst in trained_instances(cfg, cfg.run_dir):
        if p := _describes_current_sae(cfg, inst.name, cfg.run_dir / "eval" / f"{inst.name}.json"):
            problems.append(p)
        elif not (latents := latents_path(cfg.run_dir, inst.name)).is_file():
            problems.append(f"{latents} is missing")
        problems += [p for path in analysis_files(cfg, inst.name) if (p := _describes_current_sae(cfg, inst.name, path))]
    return problems


def analysis_files(cfg: ExperimentConfig, name: str, with_autointerp: bool = False) -> list[Path]:
    """One SAE's files beside its core eval, where enabled: sparse probing and unlearning (the evaluate
    stage's), and with `with_autointerp` its autointerp result (the autointerp stage's)."""
    kinds = (("sparse_probing", cfg.probing.enabled), ("unlearning", cfg.unlearning.enabled),
             ("autointerp", with_autointerp and cfg.autointerp.backend != "none"))
    return [cfg.run_dir / "eval" / kind / f"{name}.json" for kind, on in kinds if on]


def _cluster(cfg: ExperimentConfig) -> list[str]:
    return [p for inst in trained_instances(cfg, cfg.run_dir, cfg.compared_instances())
            if (p := _describes_current_sae(cfg, inst.name, cfg.run_dir / "analysis" / f"clusters_{inst.name}.json"))]


def _plot(cfg: ExperimentConfig) -> list[str]:
    figures = sorted(cfg.figures_dir.glob("*.png")) if cfg.figures_dir.is_dir() else []
    return [] if figures else [f"no figures in {cfg.figures_dir}"]


def _autointerp(cfg: ExperimentConfig) -> list[str]:
    """Nothing is expected with `autointerp.backend: none`; else each trained SAE's autointerp JSON."""
    if cfg.autointerp.backend == "none":
        return []
    return [p for inst in trained_instances(cfg, cfg.run_dir)
            if (p := _describes_current_sae(cfg, inst.name, analysis_files(cfg, inst.name, with_autointerp=True)[-1]))]


def _dashboard(cfg: ExperimentConfig) -> list[str]:
    """Nothing is expected with `dashboard.enabled: false`; else the pages of every compared SAE, made
    from the weights now on disk, and the blind-rating key of the same pages."""
    if not cfg.dashboard.enabled:
        return []
    directory = cfg.run_dir / "dashboard"
    try:
        manifest = read_json(directory / "manifest.json")
        key = read_json(cfg.run_dir / "analysis" / "blind_rating_key.json")
    except FileNotFoundError as e:
        return [f"{e.filename} is missing"]
    except (OSError, ValueError) as e:
        return [f"the dashboard's manifest or rating key is unreadable ({type(e).__name__})"]
    if key.get("set") != manifest.get("rating_set"):
        return [f"{cfg.run_dir / 'analysis' / 'blind_rating_key.json'} belongs to another dashboard"]
    problems = []
    for inst in trained_instances(cfg, cfg.run_dir, cfg.compared_instances()):
        entry = manifest.get("saes", {}).get(inst.name)
        if entry is None or entry.get("sae_weights_sha256") != _weights_sha(cfg, inst.name):
            problems.append(f"{directory} does not show the SAE now in {cfg.run_dir / 'saes' / inst.name}")
        elif missing := [p for p in ("index.html", *(f"{i}.html" for i in entry.get("pages", []))) if not (directory / inst.name / p).is_file()]:
            problems.append(f"{directory / inst.name / missing[0]} is missing")
    if not (directory / "index.html").is_file():
        problems.append(f"{directory / 'index.html'} is missing")
    return problems


def inputs_fingerprint(stage: str, cfg: ExperimentConfig) -> str:
    """A hash of the files `stage` reads (empty for harvest, which reads only the source); the plot
    stage's includes the random-transformer control run's autointerp files (`autointerp.control_run`); the
    dashboard's, the evals, per-latent arrays and clusterings it shows."""
    h = hashlib.sha256()
    run = cfg.run_dir
    if stage in ("train", "evaluate", "cluster", "autointerp", "dashboard"):
        try:
            manifest = read_json(run / "activations" / "manifest.json")
            manifest = {k: v for k, v in manifest.items() if k != "tsae"} if isinstance(manifest, dict) else manifest
        except (OSError, ValueError):
            manifest = None
        h.update(json.dumps(manifest, sort_keys=True, default=str).encode())
    if stage in ("evaluate", "cluster", "autointerp", "dashboard"):
        for inst in cfg.instances():
            failure = recorded_failure(TrainPaths.of(run, inst.name), _train_hash(cfg, inst.name))
            h.update(f"{inst.name}:{_weights_sha(cfg, inst.name)}:{failure}\n".encode())
    if stage == "plot":
        control = cfg.autointerp.control_run
        for inst in cfg.instances():
            for path in (run / "eval" / f"{inst.name}.json", run / "train" / f"{inst.name}.jsonl",
                         run / "analysis" / f"clusters_{inst.name}.json", *analysis_files(cfg, inst.name, with_autointerp=True),
                         *([run.parent / control / "eval" / "autointerp" / f"{inst.name}.json"] if control else [])):
                h.update(path.name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    if stage == "dashboard":
        for inst in cfg.instances():
            for path in (run / "eval" / f"{inst.name}.json", latents_path(run, inst.name), run / "analysis" / f"clusters_{inst.name}.json"):
                h.update(path.name.encode() + (path.read_bytes() if path.is_file() else b"-"))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Verdict:
    name: str
    healthy: bool | None
    """True, False, or None when the SAE has not been evaluated."""
    detail: str


def sae_health(cfg: ExperimentConfig) -> list[Verdict]:
    """Each SAE's verdict: failed training, the eval's health verdict, or not evaluated yet."""
    verdicts = []
    for inst in cfg.instances():
        failure = recorded_failure(TrainPaths.of(cfg.run_dir, inst.name), _train_hash(cfg, inst.name))
        eval_file = cfg.run_dir / "eval" / f"{inst.name}.json"
        if failure is not None:
            verdicts.append(Verdict(inst.name, False, f"training failed: {failure}"))
        elif _describes_current_sae(cfg, inst.name, eval_file) is None:
            health: Any = read_json(eval_file).get("health") or {}
            ok = bool(health.get("healthy"))
            verdicts.append(Verdict(inst.name, ok, "healthy" if ok else "; ".join(health.get("problems", ["no verdict"]))))
        else:
            verdicts.append(Verdict(inst.name, None, "not evaluated"))
    return verdicts
