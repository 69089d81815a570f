"""Evaluating a trained SAE on the held-out split: core, temporal and ground-truth metrics.

Writes `eval/<variant>.json` in SAEBench's core layout (`eval_result_metrics` with
`reconstruction_quality`, `shrinkage`, `sparsity`, `token_stats`) plus `temporal` (with position
dependence and reconstruction error by position), `redundancy` (cross-position), `geometry`
(decoder), `ground_truth` (synthetic sources) and a `health` verdict that flags silent failures;
and the per-latent numbers behind them in `analysis/<instance>_latents.safetensors`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from tsae_core.config import ExperimentConfig
from tsae_core.device import resolve_device
from tsae_core.evals.coactivation import CoFiring
from tsae_core.evals.files import eval_key, kept_evaluation, saebench_identity
from tsae_core.io import provenance, save_tensors, write_json
from tsae_core.loading import load_sae
from tsae_core.metric_table import value as metric
from tsae_core.metrics.core import CoreMetrics, misc_metrics
from tsae_core.metrics.geometry import cofiring_max_cosine, decoder_geometry, labels_from_groups, max_decoder_cosine
from tsae_core.metrics.ground_truth import GroundTruthMetrics, matched_persistence
from tsae_core.metrics.model import SAELENS_SECTION, ModelPreservation
from tsae_core.metrics.position import PositionDependence, ReconstructionByPosition
from tsae_core.metrics.redundancy import CrossPositionRedundancy
from tsae_core.metrics.temporal import TemporalMetrics
from tsae_core.progress import tqdm
from tsae_core.sae import SAE, read_sae_cfg, recorded_weights_sha256
from tsae_core.seeds import derive_seed
from tsae_core.sources.factory import load_model

TEMPORAL_MAX_LAG = 32
REDUNDANCY_MAX_LAG = 4
"""Lags δ of the cross-position redundancy: a concept split by position shows within a few tokens."""


def eval_batches(store: Any, cfg: ExperimentConfig, max_sequences: int = 0, batch_sequences: int = 0):
    """Ordered batches of the eval split, at most `max_sequences` sequences (0: eval.max_sequences)."""
    limit = max_sequences or cfg.eval.max_sequences
    seen = 0
    for batch in store.split("eval").batches(batch_sequences or cfg.eval.batch_sequences, shuffle=False):
        if limit and seen >= limit:
            return
        if limit and seen + batch.n_sequences > limit:
            batch = batch.slice(0, limit - seen)
        seen += batch.n_sequences
        yield batch


METRIC_CONVENTIONS = {
    "reconstruction_quality, shrinkage, sparsity": "tsae = SAELens: over non-special tokens; mse summed over "
                                                   "dimensions, averaged over tokens",
    "token_stats": "SAELens's meaning: every position of the evaluated batches (total_tokens_eval_reconstruction: "
                   "of the CE/KL batches, 0 without a model); total_tokens_counted: the non-special tokens averaged over",
    "model_performance_preservation, model_behavior_preservation": "tsae: special positions kept in both splice and "
                                                                    "ablation; positions whose input or target is "
                                                                    "special not counted (tsae_core.metrics.model)",
    SAELENS_SECTION: "SAELens 6 evals: splice at non-special inputs, ablation of every position; CE over "
                     "non-special inputs (special targets count), KL over non-special inputs including the last",
}
"""Which convention each section of `eval_result_metrics` follows (recorded in every eval JSON)."""


@torch.no_grad()
def model_preservation(sae: SAE, model: Any, store: Any, cfg: ExperimentConfig, name: str, progress: bool = True) -> dict[str, Any]:
    """CE and KL of the language model with the SAE spliced in at the harvested hook, against the
    clean and the zero-ablated model (SAEBench-core `model_*_preservation` sections)."""
    hook = store.manifest["source"]["hook_name"]
    metric = ModelPreservation(model, hook)
    device = next(sae.parameters()).device

    n = min(cfg.eval.model_max_sequences, store.split("eval").n_sequences)
    batch_size = min(cfg.source.model_batch_size, cfg.eval.batch_sequences)
    for batch in tqdm(eval_batches(store, cfg, max_sequences=n, batch_sequences=batch_size), desc=f"model metrics {name}",
                      disable=not progress, total=math.ceil(n / batch_size)):
        b = batch.to(device)

        # the batch's document structure goes with it: temporal encoders read earlier tokens
        def reconstruct(x_BTD: torch.Tensor, special_BT: torch.Tensor, b=b) -> torch.Tensor:
            return sae.causal_reconstruction(x_BTD.float().to(device), ~special_BT.to(device), b.doc_start_BT, b.position_BT)

        metric.update(batch.tokens_BT, batch.special_BT, reconstruct)
    return metric.result()


@torch.no_grad()
def evaluate_sae(sae: SAE, store: Any, cfg: ExperimentConfig, name: str, progress: bool = True, model: Any = None) -> dict[str, Any]:
    """All metrics of one SAE on the eval split, as the eval JSON dict (without provenance).

    With `model` (the language model the activations came from), also the model-preservation
    metrics."""
    return evaluate_sae_with_latents(sae, store, cfg, name, progress, model)[0]


class _EvalAccumulators:
    """The running metrics one pass over the eval split feeds, and the result sections built from them."""

    def __init__(self, sae: SAE, store: Any, cfg: ExperimentConfig):
        F = sae.cfg.d_sae
        self.core = CoreMetrics(dense_threshold=cfg.eval.dense_threshold)
        # long lags need long documents; beyond a quarter of the context too few pairs remain
        max_lag = max(1, min(TEMPORAL_MAX_LAG, store.context_size // 4))
        self.temporal = TemporalMetrics(F, max_lag=max_lag, seed=derive_seed(cfg.run.seed, "temporal"))
        self.positions = PositionDependence(F, seed=derive_seed(cfg.run.seed, "position"))
        self.recon_by_position = ReconstructionByPosition(store.d_in)
        self.redundancy = CrossPositionRedundancy(F, max_lag=min(REDUNDANCY_MAX_LAG, max_lag), seed=derive_seed(cfg.run.seed, "redundancy"))
        self.cofiring = CoFiring(F)
        self.truth = store.ground_truth()
        self.gt = self.truth_temporal = None
        if self.truth is not None:
            self.gt = GroundTruthMetrics(sae.decoder_directions().detach().cpu(), self.truth.directions_GD, self.truth.kinds,
                                         self.truth.rates_G, rare_rate=_rare_rate(cfg), threshold=cfg.eval.recovery_threshold)
            self.truth_temporal = TemporalMetrics(len(self.truth.kinds), max_lag=1, seed=derive_seed(cfg.run.seed, "truth-temporal"))
        self.variant_stats = sae.output_statistics()

    def update(self, batch: Any, mask_on_device_BT: torch.Tensor, out: Any) -> None:
        """Feed one eval batch and the SAE's output on it to every metric."""
        features, recon = out.features.float().cpu(), out.recon.float().cpu()
        self.core.update(batch.acts_BTD.float(), recon, features, batch.mask_BT)
        self.temporal.update(features, batch.doc_start_BT, batch.mask_BT)
        self.positions.update(features, batch.position_BT, batch.doc_start_BT, batch.mask_BT)
        self.recon_by_position.update(batch.acts_BTD.float(), recon, batch.position_BT, batch.mask_BT)
        self.redundancy.update(features, batch.doc_start_BT, batch.mask_BT)
        self.cofiring.update(features, batch.mask_BT)
        if self.gt is not None and batch.true_codes_BTG is not None:
            self.gt.update(features, batch.true_codes_BTG.float(), batch.mask_BT)
            self.truth_temporal.update(batch.true_codes_BTG.float(), batch.doc_start_BT, batch.mask_BT)
        if self.variant_stats is not None:
            self.variant_stats.update(out, mask_on_device_BT)

    def eval_result_metrics(self, sae: SAE, model: Any, store: Any, cfg: ExperimentConfig, name: str,
                            progress: bool) -> dict[str, Any]:
        """The `eval_result_metrics` section: core metrics, misc metrics and, with a model, model preservation."""
        metrics = self.core.result()
        metrics["misc_metrics"] = misc_metrics(self.core.feature_frequencies(), *latent_vector_cosines(sae))
        if model is not None and cfg.eval.model_max_sequences > 0:
            metrics.update(model_preservation(sae, model, store, cfg, name, progress))
            # SAELens's meaning: the tokens of the batches the CE/KL ran on
            metrics["token_stats"]["total_tokens_eval_reconstruction"] = metrics[SAELENS_SECTION]["total_tokens_eval_reconstruction"]
        return metrics

    def temporal_section(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The `temporal` section (with position dependence and FVU by position) and its per-latent numbers."""
        temporal_result = self.temporal.result()
        per_latent = temporal_result.pop("per_latent")
        position_result = self.positions.result()
        temporal_result.update({"position_dependence_mean": position_result["position_dependence_mean"],
                                "position_dependence_control_mean": position_result["position_dependence_control_mean"],
                                "fvu_by_position": self.recon_by_position.result()})
        return temporal_result, per_latent

    def ground_truth_section(self, per_latent: dict[str, Any]) -> dict[str, Any]:
        """The `ground_truth` section: recovery of the synthetic sources and the persistence of their matches."""
        section = self.gt.result()
        truth_lag1_G = [row[0] for row in self.truth_temporal.result(alive_only=False)["per_latent"]["autocorr_lag_FK"]]
        section["persistence"] = matched_persistence(
            self.gt.best_latent_G, self.truth.kinds, [row[0] for row in per_latent["autocorr_lag_FK"]],
            [row[0] for row in per_latent["autocorr_lag_FK_doc_shuffled"]], truth_lag1_G)
        return section

    def geometry_section(self, sae: SAE) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The `geometry` section (decoder, co-firing, the variant's extras) and its per-latent tensors."""
        groups = getattr(sae, "groups", None)  # the orthogonal variant's feature groups
        labels_F = labels_from_groups(groups, sae.cfg.d_sae) if isinstance(groups, torch.Tensor) else None
        geometry, geometry_latents = decoder_geometry(sae.decoder_directions().detach(), labels_F)
        cofiring_summary, geometry_latents["max_cos_cofiring"] = cofiring_max_cosine(self.cofiring.matrix(), sae.decoder_directions())
        return {**geometry, **cofiring_summary, **sae.extra_metrics()}, geometry_latents


@torch.no_grad()
def evaluate_sae_with_latents(
    sae: SAE, store: Any, cfg: ExperimentConfig, name: str, progress: bool = True, model: Any = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """`evaluate_sae`'s dict and the per-latent tensors behind its feature-level summaries (F each):
    position dependence and its control, max decoder cosine and its partner, redundancy and its
    partner, lag and control, and whether the latent is alive."""
    device = next(sae.parameters()).device
    acc = _EvalAccumulators(sae, store, cfg)
    n_split = store.split("eval").n_sequences
    n_eval = min(cfg.eval.max_sequences or n_split, n_split)  # what is read: the cap (0: none) within the split
    for batch in tqdm(eval_batches(store, cfg), desc=f"evaluate {name}", disable=not progress,
                      total=math.ceil(n_eval / cfg.eval.batch_sequences)):
        b = batch.to(device)
        acc.update(batch, b.mask_BT, sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT))

    metrics = acc.eval_result_metrics(sae, model, store, cfg, name, progress)
    temporal_result, per_latent = acc.temporal_section()
    result: dict[str, Any] = {
        "eval_type_id": "core",
        **saebench_identity(sae, name, cfg.run.name),
        "variant": name,
        "seed": None,
        "eval_config": {
            "split": "eval",
            "n_sequences": n_eval,
            "context_size": store.context_size,
            "batch_sequences": cfg.eval.batch_sequences,
            "exclude_special_tokens_from_reconstruction": True,
            "dense_threshold": cfg.eval.dense_threshold,
            "temporal_max_lag": acc.temporal.max_lag,
            "redundancy_max_lag": acc.redundancy.max_lag,
            "metric_conventions": METRIC_CONVENTIONS,
        },
        "sae_cfg": dataclasses.asdict(sae.cfg),
        "eval_result_metrics": metrics,
        "temporal": temporal_result,
        "redundancy": acc.redundancy.result(),
        "eval_result_details": [],
        "eval_result_unstructured": {"feature_frequencies": acc.core.feature_frequencies().tolist()},
    }
    if acc.gt is not None:
        result["ground_truth"] = acc.ground_truth_section(per_latent)
    result["geometry"], geometry_latents = acc.geometry_section(sae)
    if acc.variant_stats is not None:
        result["variant_metrics"] = acc.variant_stats.result()
    _add_sparse_and_reconstruction_l0(result)
    result["health"] = assess_health(result)
    return result, _latent_tensors(acc.positions, acc.redundancy, geometry_latents)


def _add_sparse_and_reconstruction_l0(result: dict[str, Any]) -> None:
    """Add `l0_sparse` and `l0_reconstruction` to the result's sparsity section (both `l0` unless the variant says)."""
    # Two L0s beside SAELens's `l0` (non-zero features per token): the sparse code's (`l0_sparse`, the
    # budget a TopK variant spends) and that of everything a token's reconstruction reads
    # (`l0_reconstruction`: a predictive SAE's dense predicted code too, a crosscoder's whole window
    # code), which is what the comparison matches variants on
    sparsity = result["eval_result_metrics"]["sparsity"]
    variant_metrics = result.get("variant_metrics", {})
    sparsity["l0_sparse"] = variant_metrics.get("l0_sparse", sparsity["l0"])
    sparsity["l0_reconstruction"] = variant_metrics.get("l0_reconstruction", sparsity["l0"])


def latent_vector_cosines(sae: SAE) -> tuple[torch.Tensor, torch.Tensor]:
    """(F,) each latent's largest cosine with another latent, over encoder vectors and over decoder
    vectors; a latent that reads or writes several positions (the crosscoder) is one long vector."""
    F = sae.cfg.d_sae
    W_enc = sae.W_enc.detach()
    enc_FX = W_enc.reshape(-1, F).T if W_enc.shape[-1] == F else W_enc.reshape(F, -1)
    dec_FX = sae.W_dec.detach().reshape(F, -1)
    return max_decoder_cosine(enc_FX)[0], max_decoder_cosine(dec_FX)[0]


def _latent_tensors(positions: PositionDependence, redundancy: CrossPositionRedundancy,
                    geometry: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-latent arrays of the latents file, by name (float32 values, int64 indices)."""
    pos, red = positions.per_latent(), redundancy.per_latent()
    return {
        "alive": pos["fires_F"] >= positions.min_fires,  # over every evaluated token (redundancy may use fewer)
        "position_dependence": pos["position_dependence_F"].float(),
        "position_dependence_control": pos["position_dependence_control_F"].float(),
        "max_decoder_cos": geometry["max_decoder_cos"].float(),
        "max_decoder_cos_partner": geometry["max_decoder_cos_partner"],
        "max_cos_cofiring": geometry["max_cos_cofiring"].float(),
        "redundancy": torch.as_tensor(red["redundancy_F"]).float(),
        "redundancy_partner": torch.as_tensor(red["partner_F"]).long(),
        "redundancy_lag": torch.as_tensor(red["lag_F"]).long(),
        "redundancy_control": torch.as_tensor(red["redundancy_control_F"]).float(),
    }


def latents_path(run_dir: Path, name: str) -> Path:
    """Where an SAE's per-latent evaluation arrays go (beside the cluster stage's `clusters_<name>.json`)."""
    return run_dir / "analysis" / f"{name}_latents.safetensors"


def _rare_rate(cfg: ExperimentConfig) -> float:
    return cfg.source.synthetic.rare_rate


# Thresholds of the verdict: a CE score under 0.8 loses a fifth of what the layer
# contributes to the model's loss; a penalised SAE more than 20% from its target L0 is not compared at
# the sparsity it was meant for. Not sparse: more active latents per token than half the input's
# dimensions AND more than half of the latents dense (firing on more than `eval.dense_threshold`, 10%,
# of tokens: the "dense latent" line of Gao et al. 2024 and SAEBench). Either alone has healthy
# exceptions: a window code seen from each of its tokens (the crosscoder) makes many latents dense at a
# low L0, and a 120-step smoke SAE on a 16-dimensional input can sit near d_in / 2 while still selective.
MIN_CE_LOSS_SCORE = 0.8
MAX_TARGET_L0_MISS = 0.2
MAX_L0_PER_D_IN = 0.5
MAX_DENSE_FRACTION = 0.5
MAX_SILENT_TOKEN_FRACTION = 0.5


def assess_health(result: dict[str, Any]) -> dict[str, Any]:
    """Flag the silent failures earlier attempts suffered (L0 = 0, NaN, negative EV, mass death) and an
    SAE that is not what it claims to be (not sparse, breaking the model, off its target L0); each
    problem says what to change."""
    m = result["eval_result_metrics"]
    cfg = result.get("sae_cfg", {})
    problems = []
    ev = m["reconstruction_quality"]["explained_variance"]
    l0 = m["sparsity"].get("l0_sparse", m["sparsity"]["l0"])
    for section, values in m.items():
        for key, value in values.items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(f"{section}.{key} is not finite")
    if l0 is not None and l0 == 0:
        problems.append("L0 = 0: no latent fires")
    if ev is not None and ev < 0:
        problems.append(f"explained variance {ev:.3f} < 0: worse than predicting the mean")
    dead = m["sparsity"].get("dead_fraction")
    if dead is not None and dead > 0.5:
        problems.append(f"{dead:.0%} of latents never fire on the eval split")
    problems += _sparsity_problems(l0, m["sparsity"].get("dense_fraction"), cfg)
    silent = m["sparsity"].get("silent_token_fraction")
    if silent is not None and silent > MAX_SILENT_TOKEN_FRACTION:
        problems.append(f"{silent:.0%} of tokens have no active latent (their reconstruction is b_dec alone): the L0 of "
                        f"{l0:.1f} is spent on a few tokens; the penalty is above the scale of typical tokens' codes "
                        "(an L1 penalty does this where token norms vary widely); compare at a larger target_l0, or "
                        "use TopK or JumpReLU")
    ce = (m.get("model_performance_preservation") or {}).get("ce_loss_score")
    if ce is not None and math.isfinite(ce) and ce < MIN_CE_LOSS_SCORE:
        problems.append(f"CE loss score {ce:.3f} < {MIN_CE_LOSS_SCORE}: the spliced SAE breaks the model; "
                        "train longer, or allow more active latents (k, target_l0, a smaller penalty)")
    return {"healthy": not problems, "problems": problems}


def _sparsity_problems(l0: float | None, dense: float | None, cfg: dict[str, Any]) -> list[str]:
    problems = []
    activation, d_in = cfg.get("activation"), cfg.get("d_in") or 0
    target = cfg.get("target_l0") or 0.0
    cure = {"relu": "set target_l0 (the L1 coefficient then adapts to it) or raise l1_coefficient",
            "jumprelu": "set target_l0 (the L0 coefficient then adapts to it) or raise l0_coefficient"}.get(activation, "lower k")
    if l0 is not None and d_in and dense is not None and l0 > MAX_L0_PER_D_IN * d_in and dense > MAX_DENSE_FRACTION:
        problems.append(f"not sparse: L0 {l0:.1f} > {MAX_L0_PER_D_IN:g} d_in ({d_in}) and {dense:.0%} of latents are dense; {cure}")
    if l0 is not None and target > 0 and abs(l0 / target - 1) > MAX_TARGET_L0_MISS:
        problems.append(f"L0 {l0:.1f} is {abs(l0 / target - 1):.0%} from its target {target:g}: the controller of its "
                        "penalty coefficient had not settled; train longer (train.steps), start the coefficient "
                        "closer, or raise target_l0_rate")
    return problems


def evaluate_variant(
    cfg: ExperimentConfig, name: str, store: Any, run_dir: Path, progress: bool = True, model: Any = None,
    force: bool = False,
) -> dict[str, Any]:
    """Load `saes/<name>`, evaluate it and write `eval/<name>.json`; returns the result.

    An evaluation already on disk for the same weights, variant, data, settings and code is kept
    (retraining one SAE re-evaluates only that one), unless `force`. For language-model sources
    the model is loaded unless given (pass it when evaluating several SAEs, to load it once)."""
    key, path = eval_key(cfg, name, run_dir, ("source", "harvest", "eval")), run_dir / "eval" / f"{name}.json"
    kept = None if force or _latents_key(latents_path(run_dir, name)) != key else kept_evaluation(path, key)
    if kept is not None:
        print(f"[tsae] {name}: evaluation kept (same weights, data, settings and code): {path}", flush=True)
        return kept
    sae = load_sae(run_dir / "saes" / name, device=resolve_device(cfg.run.device))
    if model is None and cfg.eval.model_max_sequences > 0:
        model = load_model(cfg)
    inst = cfg.instance(name)
    result, latents = evaluate_sae_with_latents(sae, store, cfg, name, progress=progress, model=model)
    # the instance (`<variant>-seed<N>` with several seeds) is the file name; figures group by variant
    result.update({"variant": inst.variant, "instance": inst.name, "seed": inst.seed,
                   "sweep": cfg.sweep_points().get(inst.variant),
                   # which weights these numbers describe: a retrained SAE makes this file stale
                   "sae_weights_sha256": recorded_weights_sha256(run_dir / "saes" / name), "eval_key": key,
                   # a penalised SAE with a target: where its coefficient started and where the controller left it
                   "target_l0_control": read_sae_cfg(run_dir / "saes" / name).get("training", {}).get("target_l0")})
    # the latents file first: an eval JSON on disk always has its per-latent arrays beside it
    save_tensors(latents_path(run_dir, name), latents,
                 metadata={"eval_key": str(key), "sae_weights_sha256": str(result["sae_weights_sha256"]),
                           "tsae": json.dumps(provenance(cfg.hash()))})
    write_json(path, result, stamp=provenance(cfg.hash()))
    return result


def _latents_key(path: Path) -> str | None:
    """The eval key recorded in a latents file (None if it is missing or unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("eval_key")
    except (OSError, ValueError, SafetensorError):
        return None


def summary_row(name: str, result: dict[str, Any]) -> dict[str, Any]:
    """The handful of numbers a person compares first, for tables in notebooks and the README."""
    m = result["eval_result_metrics"]
    row = {
        "variant": name,
        "explained_variance": m["reconstruction_quality"]["explained_variance"],
        "cossim": m["reconstruction_quality"]["cossim"],
        "l0": m["sparsity"]["l0"],
        "l0_sparse": m["sparsity"].get("l0_sparse", m["sparsity"]["l0"]),
        "dead_fraction": m["sparsity"]["dead_fraction"],
        "silent_token_fraction": m["sparsity"].get("silent_token_fraction"),
        "autocorr_lag1": metric(result, "autocorr_lag1"),
    }
    mp = m.get("model_performance_preservation")
    if mp:
        row["ce_loss_score"] = mp["ce_loss_score"]
        row["ce_increase_nats"] = mp["ce_loss_increase"]
        row["kl_div_score"] = m["model_behavior_preservation"]["kl_div_score"]
    gt = result.get("ground_truth")
    if gt:
        row["true_l0"] = gt.get("true_l0")
        row["mmcs"] = gt["overall"]["mmcs"]
        row["frac_recovered"] = gt["overall"]["frac_recovered"]
        for kind in ("fast", "slow", "positional", "rare_fast", "rare_slow"):
            if kind in gt["by_kind"]:
                row[f"recovered_{kind}"] = gt["by_kind"][kind]["frac_recovered"]
    row["healthy"] = result["health"]["healthy"]
    return row


def summary_table(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant, numbers formatted as strings: the value, or `mean ± std (n seeds)`."""
    from tsae_core.aggregate import group_by_variant

    rows = []
    for variant, es in group_by_variant(results).items():
        per_seed = [summary_row(variant, e) for e in es]
        row: dict[str, Any] = {"variant": variant, "seeds": len(es)}
        for key in per_seed[0]:
            if key in ("variant",):
                continue
            values = [r.get(key) for r in per_seed]
            row[key] = _mean_std_text(values)
        rows.append(row)
    return rows


def _mean_std_text(values: list[Any]) -> str:
    if all(isinstance(v, bool) for v in values):
        return str(all(values))
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not nums:
        return "n/a"
    mean = sum(nums) / len(nums)
    if len(nums) == 1:
        return f"{mean:.4f}"
    std = math.sqrt(sum((x - mean) ** 2 for x in nums) / (len(nums) - 1))
    return f"{mean:.4f} ± {std:.4f}"
