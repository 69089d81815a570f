"""Mechanism tests: before a prior is credited with anything, raising its coefficient from 0 must move
the statistic it targets, the way it claims, on data where the answer is known.

Each prior names its variant (at the coefficient the params files use), the knob that scales it, the
statistic it targets in an eval JSON, the direction it should move and the least move that counts.
`run_mechanism` trains the variant at 0, 1 and 10 times that coefficient, once per seed, on a
synthetic store, with everything else equal: every level of one seed shares the data order and the
initial values (`tsae_core.train`'s common random numbers), so the differences between levels are the
prior's. It evaluates each SAE with the project's own evaluation and returns, per level, the statistic
at every seed, and the paired difference from level 0 with its t interval over seeds.

    python -m tsae_core.mechanisms [--prior consistency ...] [--seeds 0 1 2] [--params params/mechanisms.yaml]

The priors and what they target:
- consistency, conv (its hierarchy term), contrastive: persistence of the features that do persist,
  i.e. the lag-1 autocorrelation of the latents matched to the slow true features, which should rise
  (beside it the same latents under the within-document shuffle, the control);
- orthogonal: the largest decoder |cosine| between latents that fire together, which should fall;
- jumprelu (its L0 penalty): the relative miss of the target L0, |L0 / target - 1|, which should fall.

A prior that does not pass is reported as such, with its numbers (`verdict: does not act`).
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsae_core.comparison import paired_interval
from tsae_core.config import ExperimentConfig, config_from_dict, read_params, resolve_path
from tsae_core.io import provenance, write_json
from tsae_core.metric_table import value

LEVELS = (0.0, 1.0, 10.0)
"""Multiples of the prior's coefficient that are trained."""
DEFAULT_PARAMS = "params/mechanisms.yaml"


def _slow_persistence(e: dict[str, Any]) -> float:
    return value(e, "slow_persistence")


def _slow_persistence_control(e: dict[str, Any]) -> float:
    return value(e, "slow_persistence_doc_shuffled")


def _cofiring_cosine(e: dict[str, Any]) -> float:
    return value(e, "max_cos_cofiring")


def _target_miss(e: dict[str, Any]) -> float:
    target = e["sae_cfg"]["target_l0"]
    return abs(value(e, "l0_sae") / target - 1.0)


@dataclass(frozen=True)
class Mechanism:
    """One prior's mechanism test."""

    variant: dict[str, Any]
    """The variant's spec in a params file, at the coefficient the shipped params use."""
    knob: str
    """Dotted path of its coefficient inside the spec."""
    statistic: str
    """What the prior targets (the name printed and recorded)."""
    measure: Callable[[dict[str, Any]], float]
    """The statistic, read from an eval JSON."""
    direction: int
    """+1: the prior should raise it; -1: lower it."""
    margin: float
    """The least mean move from level 0 (at both the default and 10x) that counts as acting."""
    control: Callable[[dict[str, Any]], float] | None = None
    """The statistic's control (within-document shuffle), reported beside it."""


MECHANISMS: dict[str, Mechanism] = {
    "consistency": Mechanism(
        {"architecture": "consistency", "activation": "topk", "options": {"window": 4, "coefficient": 0.01}},
        "options.coefficient", "lag-1 autocorrelation of the latents matched to slow features", _slow_persistence, +1, 0.01,
        _slow_persistence_control),
    "contrastive": Mechanism(
        {"architecture": "contrastive", "activation": "topk",
         "options": {"window": 8, "coefficient": 0.001, "queue_size": 4096, "pairs_per_batch": 128}},
        "options.coefficient", "lag-1 autocorrelation of the latents matched to slow features", _slow_persistence, +1, 0.01,
        _slow_persistence_control),
    "conv": Mechanism(
        {"architecture": "conv", "activation": "topk", "options": {"buffer": 1, "scales": [2, 4, 8], "coefficient": 0.01}},
        "options.coefficient", "lag-1 autocorrelation of the latents matched to slow features", _slow_persistence, +1, 0.01,
        _slow_persistence_control),
    "orthogonal": Mechanism(
        {"architecture": "orthogonal", "activation": "topk", "options": {"alpha": 0.1, "coefficient": 0.1, "group_size": 32}},
        "options.coefficient", "largest decoder |cosine| among co-firing latents", _cofiring_cosine, -1, 0.01),
    "jumprelu": Mechanism(
        {"architecture": "standard", "activation": "jumprelu", "l0_coefficient": 10.0},
        "l0_coefficient", "relative miss of the target L0, |L0 / target - 1|", _target_miss, -1, 0.1),
}


def _set(spec: dict[str, Any], dotted: str, value: float) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def _get(spec: dict[str, Any], dotted: str) -> float:
    node: Any = spec
    for key in dotted.split("."):
        node = node[key]
    return float(node)


def level_name(prior: str, level: float) -> str:
    return f"{prior}-x{level:g}"


def mechanism_config(base: dict[str, Any], priors: list[str], seeds: list[int], origin: str,
                     levels: tuple[float, ...] = LEVELS) -> ExperimentConfig:
    """The base params (a synthetic source and a recipe) with one variant per prior and level, each as
    wide as the base's `topk` (512 latents without one)."""
    d_sae = ((base.get("variants") or {}).get("topk") or {}).get("d_sae", 512)
    variants = {}
    for prior in priors:
        m = MECHANISMS[prior]
        default = _get(m.variant, m.knob)
        for level in levels:
            variants[level_name(prior, level)] = {"d_sae": d_sae, **_set(m.variant, m.knob, level * default)}
    data = {**base, "variants": variants, "sweep": {}, "run": {**base.get("run", {}), "seeds": list(seeds)}}
    return config_from_dict(data, origin)


def run_mechanism(cfg: ExperimentConfig, priors: list[str], progress: bool = False, levels: tuple[float, ...] = LEVELS) -> dict[str, Any]:
    """Train and evaluate every level of every prior at every seed of `cfg` (a `mechanism_config`), and
    summarise: per prior and level, the statistic at each seed, its mean, the paired difference from
    level 0 with its 95% interval, and the verdict."""
    from tsae_core.evals.core import evaluate_variant
    from tsae_core.harvest import harvest
    from tsae_core.store import ActivationStore
    from tsae_core.train import train_variant

    # the run's resolved parameters, as `tsae run` records them (the report reads its recipe there)
    write_json(cfg.run_dir / "config.json", {"params_file": "python -m tsae_core.mechanisms", "overrides": {},
                                             "config": cfg.to_dict()}, stamp=provenance(cfg.hash()))
    harvest(cfg, cfg.run_dir / "activations", progress=progress)
    store = ActivationStore.open(cfg.run_dir / "activations")
    evals: dict[str, dict[str, Any]] = {}
    for inst in cfg.instances():
        summary = train_variant(cfg, inst.name, store, cfg.run_dir, progress=progress)
        if summary.get("failed"):
            raise RuntimeError(f"mechanism test: {inst.name} failed to train: {summary['failed']}")
        evals[inst.name] = evaluate_variant(cfg, inst.name, store, cfg.run_dir, progress=progress)
    return {prior: _summarise(prior, cfg, evals, levels) for prior in priors}


def _summarise(prior: str, cfg: ExperimentConfig, evals: dict[str, dict[str, Any]], levels: tuple[float, ...]) -> dict[str, Any]:
    m = MECHANISMS[prior]
    by_level: dict[float, dict[int, dict[str, Any]]] = {level: {} for level in levels}
    for e in evals.values():
        for level in levels:
            if e["variant"] == level_name(prior, level):
                by_level[level][e["seed"]] = e
    rows = []
    for level in levels:
        values = {s: m.measure(e) for s, e in by_level[level].items()}
        row: dict[str, Any] = {"level": level, "coefficient": level * _get(m.variant, m.knob),
                               "values": values, "mean": float(np.mean(list(values.values()))),
                               "std": float(np.std(list(values.values()), ddof=1)) if len(values) > 1 else None,
                               "explained_variance": float(np.mean([value(e, "explained_variance") for e in by_level[level].values()]))}
        if m.control is not None:
            row["control_mean"] = float(np.mean([m.control(e) for e in by_level[level].values()]))
        if level != 0.0:
            diffs = [values[s] - m.measure(by_level[0.0][s]) for s in values if s in by_level[0.0]]
            row["paired_difference"] = float(np.mean(diffs))
            row["interval"] = list(paired_interval(diffs)) if len(diffs) > 1 else None
        rows.append(row)
    moves = [m.direction * r["paired_difference"] for r in rows if r["level"] in (1.0, 10.0)]
    acts = all(x >= m.margin for x in moves)
    return {"statistic": m.statistic, "direction": "higher" if m.direction > 0 else "lower", "margin": m.margin,
            "knob": m.knob, "variant": m.variant, "seeds": sorted(by_level[0.0]), "levels": rows,
            "verdict": "acts" if acts else "does not act",
            "steps": cfg.train.steps, "tokens_per_step": cfg.train.batch_sequences * cfg.harvest.context_size}


def format_table(results: dict[str, Any]) -> str:
    """The results as a plain-text table: per prior and level, mean ± std over seeds and the paired move."""
    lines = []
    for prior, r in results.items():
        lines.append(f"{prior}: {r['statistic']} ({r['direction']} is the prior's claim; margin {r['margin']:g}) "
                     f"-> {r['verdict'].upper()}")
        for row in r["levels"]:
            std = f" ± {row['std']:.4f}" if row["std"] is not None else ""
            move = ""
            if "paired_difference" in row:
                ci = row["interval"]
                move = f"   paired vs 0: {row['paired_difference']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")
            control = f"   control {row['control_mean']:.4f}" if "control_mean" in row else ""
            lines.append(f"  x{row['level']:<4g} ({r['knob']} = {row['coefficient']:.4g}): {row['mean']:.4f}{std}{control}"
                         f"   EV {row['explained_variance']:.4f}{move}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tsae_core.mechanisms", description=__doc__.split("\n\n")[0])
    p.add_argument("--prior", action="append", choices=sorted(MECHANISMS), help="a prior to test (repeatable); default: all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--levels", type=float, nargs="+", default=list(LEVELS),
                   help="multiples of the coefficient (0 must be among them; the verdict reads 1 and 10)")
    p.add_argument("--params", default=DEFAULT_PARAMS, help="the synthetic source and recipe (variants are made here)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="override a value of the params")
    args = p.parse_args(argv)
    from tsae_core.config import apply_overrides, parse_override

    priors = args.prior or list(MECHANISMS)
    path = resolve_path(args.params)
    base = apply_overrides(read_params(path), dict(parse_override(s) for s in args.sets))
    levels = tuple(sorted(set(args.levels) | {0.0}))
    cfg = mechanism_config(base, priors, args.seeds, str(path), levels)
    results = run_mechanism(cfg, priors, progress=True, levels=levels)
    out = cfg.run_dir / "mechanisms.json"
    write_json(out, {"mechanisms": results}, stamp=provenance(cfg.hash()))
    print(format_table(results))
    print(f"[tsae] mechanism results in {out}")
    return 0 if all(r["verdict"] == "acts" for r in results.values()) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
