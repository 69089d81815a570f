"""The unlearning eval of an SAE and of a run: its JSON file in SAEBench's layout."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from tsae_core.config import ExperimentConfig
from tsae_core.evals.files import eval_key, kept_evaluation, saebench_identity
from tsae_core.evals.unlearning.data import LANGUAGE_MODEL, SYNTHETIC, UnlearningData, build_unlearning_data
from tsae_core.evals.unlearning.selection import encode, latent_stats, random_latents, select_latents
from tsae_core.evals.unlearning.sweep import _summary, _sweep
from tsae_core.io import provenance, write_json
from tsae_core.loading import load_sae
from tsae_core.progress import tqdm
from tsae_core.sae import SAE, recorded_weights_sha256

EVAL_TYPE_ID = "unlearning"
NOT_CAUSAL = ("not causal: its code at token t reads later tokens of its window, so a clamp at t would hand the "
              "language model information from the future; unlearning needs an SAE whose code at t reads tokens "
              "up to t only")
SCORE_DEFINITION = {
    LANGUAGE_MODEL: "largest forget-test CE increase (nats) over sweep points whose retain-test CE rises by at most "
                    "max_retain_increase of its clean value; 0 if none increases it. SAEBench's unlearning_score is "
                    "1 - the lowest WMDP-bio accuracy with MMLU accuracy >= 99% of the original",
    SYNTHETIC: "largest forget damage (fraction of the forget features' signal removed at their tokens) over sweep "
               "points whose retain damage (edit energy / variance on retain tokens) is at most max_retain_increase; "
               "0 if none removes any",
}


def skipped_reason(sae: SAE) -> str | None:
    """Why the clamp cannot be applied to this SAE (None: it can)."""
    if not sae.causal:
        return f"architecture {sae.cfg.architecture!r} is {NOT_CAUSAL}"
    if sae.W_dec.dim() != 2:
        return f"architecture {sae.cfg.architecture!r} has no single decoder row per latent (W_dec {tuple(sae.W_dec.shape)})"
    return None


def eval_config(data: UnlearningData) -> dict[str, Any]:
    """The settings and data description recorded in every unlearning JSON of the run."""
    return {**dataclasses.asdict(data.settings), **data.info,
            "selection_rule": "eligible: retain firing frequency <= retain_threshold and forget frequency > 0; ranked "
                              "by forget_freq / (retain_freq + 1/n_retain_tokens), ties to larger forget_freq, then lower "
                              "index; the top n_latents",
            "clamp": "where a selected latent is active (> 0) at a non-special token: a' = -multiplier * scale, scale its "
                     "mean active value on the selection data; x' = x + sum_i (a'_i - a_i) W_dec[i] / s (SAE error kept)",
            "score_definition": SCORE_DEFINITION[data.kind],
            "forget_effect": "forget_ce_increase (nats)" if data.kind == LANGUAGE_MODEL else "forget_damage",
            "retain_cost": "retain_ce_increase_relative" if data.kind == LANGUAGE_MODEL else "retain_damage"}


@torch.no_grad()
def evaluate_unlearning(sae: SAE, data: UnlearningData) -> dict[str, Any]:
    """The unlearning eval of one SAE on the run's shared data: the sweep, its score, the random-latent
    control, in SAEBench's layout (`eval_result_metrics.unlearning.unlearning_score`, the sweep in
    `eval_result_details`). An SAE it cannot handle gets `skipped` (the reason) and a None score."""
    result: dict[str, Any] = {"eval_type_id": EVAL_TYPE_ID, "eval_config": eval_config(data), "skipped": None,
                              "sae_cfg": dataclasses.asdict(sae.cfg)}
    why = skipped_reason(sae)
    if why is not None:
        result.update({"skipped": why, "eval_result_metrics": {"unlearning": {"unlearning_score": None}},
                       "eval_result_details": [], "control": None})
        return result
    settings = data.settings
    stats = latent_stats(encode(sae, data.select, data.batch_size), data.select.forget_NT, data.select.retain_NT)
    ranked = {(t, n): select_latents(stats, t, n) for t in settings.retain_thresholds for n in settings.n_latents}
    controls = {(seed, t): random_latents(stats, t, seed) for seed in settings.control_seeds for t in settings.retain_thresholds}
    used = sorted({i for v in ranked.values() for i in v}
                  | {i for (seed, t), perm in controls.items() for n in settings.n_latents for i in perm[:len(ranked[t, n])]})
    test_features = {}
    if used:
        feats = encode(sae, data.test, data.batch_size, torch.tensor(used))
        test_features = {i: feats[..., j] for j, i in enumerate(used)}
    cache: dict[tuple, dict[str, float]] = {}
    rows = _sweep(data, sae, stats, lambda t, n: ranked[t, n], cache, test_features)
    control_runs = []
    for seed in settings.control_seeds:
        c_rows = _sweep(data, sae, stats, lambda t, n, seed=seed: controls[seed, t][:len(ranked[t, n])], cache, test_features)
        control_runs.append({"seed": seed, **_summary(data, c_rows), "sweep": c_rows})
    metrics = _summary(data, rows)
    if control_runs:
        for key in ("unlearning_score", "unlearning_score_relative"):
            if key in control_runs[0]:
                metrics[f"control_{key}"] = sum(c[key] for c in control_runs) / len(control_runs)
    if data.kind == LANGUAGE_MODEL:
        metrics.update({"clean_forget_ce": data.clean["forget"], "clean_retain_ce": data.clean["retain"]})
    result.update({
        "eval_result_metrics": {"unlearning": metrics},
        "eval_result_details": rows,
        "control": {"description": "the same sweep with random alive latents of retain frequency <= threshold, as many "
                                   "as the ranked selection used; score averaged over seeds", "runs": control_runs},
        "selection": {"n_alive": int(stats.alive_F.sum()),
                      "n_eligible": {str(t): int(((stats.retain_freq_F <= t) & (stats.forget_freq_F > 0)).sum())
                                     for t in settings.retain_thresholds}},
    })
    return result


# ------------------------------------------------------------------------------------------------
# Files of a run
# ------------------------------------------------------------------------------------------------
def unlearning_path(run_dir: Path, name: str) -> Path:
    """Where the unlearning eval of SAE `name` (an instance) is written."""
    return Path(run_dir) / "eval" / EVAL_TYPE_ID / f"{name}.json"


def unlearning_key(cfg: ExperimentConfig, name: str, run_dir: Path) -> str | None:
    """What an SAE's unlearning eval depends on: its weights, its variant, the source, harvest and
    unlearning settings, and tsae's code (None while the SAE has no recorded weights)."""
    return eval_key(cfg, name, run_dir, ("source", "harvest", "unlearning"), eval=EVAL_TYPE_ID)


def evaluate_unlearning_variant(cfg: ExperimentConfig, name: str, run_dir: Path,
                                data: UnlearningData | Callable[[], UnlearningData] | None = None,
                                force: bool = False) -> dict[str, Any]:
    """Evaluate the trained SAE `saes/<name>` and write `eval/unlearning/<name>.json`; returns the result.

    A file on disk made from the same weights, variant, settings and code is kept unless `force`.
    `data` is the run's `build_unlearning_data(cfg)` or a function returning it (called only if this
    SAE must be evaluated); None builds it here."""
    from tsae_core.device import resolve_device

    run_dir = Path(run_dir)
    key, path = unlearning_key(cfg, name, run_dir), unlearning_path(run_dir, name)
    kept = None if force else kept_evaluation(path, key)
    if kept is not None:
        print(f"[tsae] {name}: unlearning eval kept (same weights, settings and code): {path}", flush=True)
        return kept
    if data is None:
        data = build_unlearning_data(cfg)
    elif callable(data):
        data = data()
    sae = load_sae(run_dir / "saes" / name, device=resolve_device(cfg.run.device))
    inst = cfg.instance(name)
    result = {**saebench_identity(sae, name, cfg.run.name), **evaluate_unlearning(sae, data)}
    result.update({"variant": inst.variant, "instance": inst.name, "seed": inst.seed,
                   "sae_weights_sha256": recorded_weights_sha256(run_dir / "saes" / name), "eval_key": key})
    write_json(path, result, stamp=provenance(cfg.hash()))
    return result


def evaluate_unlearning_run(cfg: ExperimentConfig, run_dir: Path | None = None, names: Iterable[str] | None = None,
                            model: Any = None, force: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    """The unlearning eval of every trained SAE of the run (or of `names`): instance -> result.

    The shared data are built once, and only if some SAE has no up-to-date file; SAEs without weights
    (not trained, failed) are left out. Returns {} when `unlearning.enabled` is false."""
    if not cfg.unlearning.enabled:
        return {}
    run_dir = Path(run_dir or cfg.run_dir)
    names = [i.name for i in cfg.instances()] if names is None else list(names)
    names = [n for n in names if recorded_weights_sha256(run_dir / "saes" / n) is not None]
    built: list[UnlearningData] = []

    def data() -> UnlearningData:
        if not built:
            built.append(build_unlearning_data(cfg, model=model, progress=progress))
        return built[0]

    return {n: evaluate_unlearning_variant(cfg, n, run_dir, data, force=force)
            for n in tqdm(names, desc="unlearning", disable=not progress)}


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE: score, control, the point achieving it (for notebook tables)."""
    rows = []
    for name, r in results.items():
        m = (r.get("eval_result_metrics") or {}).get("unlearning") or {}
        rows.append({"sae": name, "variant": r.get("variant", name), "skipped": r.get("skipped"),
                     **{k: m.get(k) for k in ("unlearning_score", "control_unlearning_score", "unlearning_score_relative",
                                              "best_retain_threshold", "best_n_latents", "best_multiplier",
                                              "best_retain_cost", "n_admissible_points")}})
    return rows
