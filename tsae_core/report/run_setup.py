"""The Setup section: what was trained on what data, with which recipe and seeds, how long, on which
machine, from which commit.

Tokens each SAE saw are steps × batch tokens (batch sequences × context size), as each SAE's cfg.json
records them; passes are those tokens over the unique training tokens of the store. A run whose
stages and trainings all ran without a GPU is called CPU-size: its numbers test the pipeline and the
direction of effects, not their size at scale.
"""

from __future__ import annotations

from typing import Any

from tsae_core.aggregate import group_by_variant
from tsae_core.plots import variant_order
from tsae_core.report.loading import RunResults
from tsae_core.report.roles import Roles
from tsae_core.report.text import MISSING, count, duration, md_table, mean_std


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def devices(run: RunResults) -> list[str]:
    """Every device a stage or a training ran on, sorted."""
    found = {_get(s, "machine", "device") for s in run.stages.values()}
    found |= {_get(c, "training", "device") for c in run.sae_cfgs.values()}
    return sorted(d for d in found if d)


def is_cpu_size(run: RunResults) -> bool:
    """True when the run records its devices and none is a GPU."""
    found = devices(run)
    return bool(found) and all(d == "cpu" for d in found)


def _source_lines(run: RunResults) -> list[str]:
    src = run.source
    lines = [f"- **Source**: {src.get('kind', MISSING)}"
             + "".join(f", {k.replace('_', ' ')} `{src[k]}`" for k in ("model", "hook_name", "dataset") if src.get(k))
             + f"; d_in {run.manifest.get('d_in') or _get(next(iter(run.evals.values()), {}), 'sae_cfg', 'd_in') or MISSING}."]
    if isinstance(src.get("n_features"), dict):
        kinds = ", ".join(f"{n} {k}" for k, n in src["n_features"].items())
        lines[0] = lines[0][:-1] + f"; true features: {kinds}; true L0 {src.get('true_l0', 0):.2f}."
    splits = run.manifest.get("splits") or {}
    data = "; ".join(f"{name} {count(s.get('n_sequences'))} sequences, {count(s.get('n_tokens'))} tokens" for name, s in splits.items())
    lines.append(f"- **Data**: {data or MISSING}; context {run.manifest.get('context_size', MISSING)} tokens.")
    return lines


def _recipe_lines(run: RunResults) -> list[str]:
    train, context = run.config.get("train") or {}, run.manifest.get("context_size")
    batch = train.get("batch_sequences")
    batch_tokens = batch * context if batch and context else None
    seen = sorted({t for c in run.sae_cfgs.values() if (t := _get(c, "training", "tokens"))})
    unique = _get(run.manifest, "splits", "train", "n_tokens")
    seen_text = ", ".join(count(t) for t in seen) or (count(train["steps"] * batch_tokens) if batch_tokens and train.get("steps") else MISSING)
    passes = ", ".join(f"{t / unique:.1f}" for t in seen) if unique and seen else MISSING
    lines = [f"- **Recipe**: {train.get('steps', MISSING)} steps of {batch or MISSING} sequences ({count(batch_tokens)} tokens) per batch; "
             f"lr scale {train.get('lr_scale', MISSING)}; common target L0 {train.get('target_l0') or 'none (each variant its own)'}.",
             f"- **Tokens each SAE saw**: {seen_text} (steps × batch tokens), {passes} passes over the {count(unique)} unique training tokens."]
    run_cfg = run.config.get("run") or {}
    seeds = (run_cfg.get("seeds") or ([run_cfg["seed"]] if "seed" in run_cfg else [])
             or sorted({e.get("seed") for e in run.evals.values() if e.get("seed") is not None}))
    lines.append(f"- **Seeds**: {', '.join(map(str, seeds)) or MISSING} (a variant and its baseline share each seed's data order "
                 "and initial values).")
    return lines


def variants_table(run: RunResults, roles: Roles) -> str:
    """Each variant: architecture, activation, d_sae, k or target L0, its role."""
    groups = group_by_variant(run.evals)
    rows = []
    for v in variant_order(groups):
        cfg = groups[v][0].get("sae_cfg") or {}
        sparsity = cfg.get("k") if cfg.get("activation") in ("topk", "batchtopk") else (cfg.get("target_l0") or "penalty only")
        rows.append([v, cfg.get("architecture", MISSING), cfg.get("activation", MISSING), cfg.get("d_sae", MISSING), sparsity,
                     len(groups[v]), roles.describe(v)])
    return md_table(["variant", "architecture", "activation", "d_sae", "k / target L0", "seeds", "role"], rows)


def _machine(m: dict[str, Any]) -> str:
    if not m:
        return MISSING
    return f"{m.get('device', MISSING)}, {m.get('cpu_count', MISSING)} CPU cores, torch {m.get('torch', MISSING)}"


def time_tables(run: RunResults) -> str:
    """Seconds and machine per stage (stages.json), then seconds per SAE training by variant (cfg.json)."""
    stages = md_table(["stage", "time", "machine"], [[name, duration(s.get("seconds")), _machine(s.get("machine") or {})]
                                                      for name, s in run.stages.items()]) if run.stages else "Stages: not recorded (no stages.json)."
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for instance, c in run.sae_cfgs.items():
        if isinstance(c.get("training"), dict):
            by_variant.setdefault(run.variant_of(instance), []).append(c["training"])
    rows = []
    for v in variant_order(by_variant):
        mean, std, n = mean_std(t.get("seconds") for t in by_variant[v])
        each = MISSING if mean is None else duration(mean) + ("" if std is None else f" ± {duration(std)}")
        devs = ", ".join(sorted({str(t.get("device")) for t in by_variant[v] if t.get("device")})) or MISSING
        rows.append([v, len(by_variant[v]), each, devs])
    trainings = md_table(["variant", "trainings", "time per training (mean ± std)", "device"], rows) if rows else ""
    return "\n\n".join(t for t in (stages, trainings) if t)


def provenance_line(run: RunResults) -> str:
    """The commits and the dates the run's files were made at, from their provenance stamps."""
    stamps = [run.config_stamp, run.stages_stamp, *(e.get("tsae") or {} for e in run.evals.values()),
              *(c.get("tsae") or {} for c in run.sae_cfgs.values())]
    stamps = [s for s in stamps if isinstance(s, dict)]
    commits = sorted({s["git_commit"] for s in stamps if s.get("git_commit")})
    dates = sorted(s["created"] for s in stamps if s.get("created"))
    versions = sorted({s["version"] for s in stamps if s.get("version")})
    when = MISSING if not dates else dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    return (f"- **Code**: commit {', '.join(f'`{c[:12]}`' for c in commits) or MISSING} (tsae {', '.join(versions) or MISSING}); "
            f"files made {when}." + (" Several commits made this run's files: compare with care." if len(commits) > 1 else ""))


def setup_section(run: RunResults, roles: Roles) -> str:
    """The Setup section."""
    found = devices(run)
    machine = (f"- **Machine**: {', '.join(found) or MISSING}"
               + (" (no GPU: a CPU-size run, which tests the pipeline and the direction of effects, not their size at scale)."
                  if is_cpu_size(run) else "."))
    lines = [*_source_lines(run), *_recipe_lines(run), machine, provenance_line(run)]
    return "\n".join(lines) + "\n\n" + variants_table(run, roles) + "\n\n" + time_tables(run)
