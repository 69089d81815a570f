"""`eval/autointerp/<instance>.json`: one SAE's autointerp result in SAEBench's layout, kept while
its inputs are unchanged.

Layout (SAEBench's `AutoInterpEvalOutput`, validated against its schema in the tests):
`eval_type_id` "autointerp", `eval_config` (SAEBench's keys with this run's values, plus the judge:
`backend`, `judge_base_url`, `judge_model`, `temperature`, `random_example_labels`, `temporal_window`,
and `deviations` from SAEBench in words), `eval_id`, `datetime_epoch_millis`,
`eval_result_metrics` {`autointerp`: {`autointerp_score`, `autointerp_std_dev`}, `controls`:
{`chance_random_guess`, `shuffled_explanation_score`, ..., with the oracle `random_scorer_score`},
`temporal_window`: {`autointerp_score` with the wider window, its difference to the default},
with the oracle `oracle`: scores of recovered / partly matched / unmatched latents},
`eval_result_details` [], `eval_result_unstructured` (latent -> explanation, predictions,
`correct seqs`, score, the generation and scoring examples as shown, the controls' answers), the
identity keys, and `counts` (skipped latents with reasons, answers that did not parse, requests
sent and cached), and `random_transformer_control` (the run holding the random-transformer control,
`autointerp.control_run`) or, without one, `controls_not_run.random_transformer`. Never the API key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsae_core.config import AUTOINTERP_NOT_ASKED_KEYS, ExperimentConfig, resolve_path
from tsae_core.evals.autointerp.client import ChatClient, ResponseCache
from tsae_core.evals.autointerp.judges import LLMJudge, OracleJudge, best_true_features
from tsae_core.evals.autointerp.pipeline import mean_std, run_autointerp
from tsae_core.evals.autointerp.sampling import scan
from tsae_core.evals.files import eval_key, kept_evaluation, saebench_identity
from tsae_core.io import provenance, write_json
from tsae_core.loading import load_sae
from tsae_core.sae import recorded_weights_sha256

UNMATCHED_BELOW = 0.5
"""Oracle runs: a latent whose decoder direction has cosine below this with every true feature is
matched to none (recovered: at least `eval.recovery_threshold`; in between: partly matched)."""

DEVIATIONS = (
    "random scoring sequences are labelled by the latent's activations (random_example_labels: activations); "
    "SAEBench labels them all negative (random_example_labels: saebench)",
    "each latent draws its examples from its own generators (seeded by seed and latent), not one global stream",
    "top-example ties are broken by position; a latent with fewer than n_iw activations below its top examples is "
    "skipped with that reason (SAEBench raises)",
    "an answer that does not parse is counted and listed in counts.unparsed, and its latent left out of the mean "
    "(SAEBench drops it without a count)",
    "activations come from the harvested eval split (at most max_tokens tokens), not 2M freshly tokenized Pile tokens",
)


def autointerp_path(run_dir: Path, name: str) -> Path:
    """Where an SAE's autointerp result goes."""
    return Path(run_dir) / "eval" / "autointerp" / f"{name}.json"


def cache_dir(cfg: ExperimentConfig) -> Path:
    return resolve_path(cfg.autointerp.cache_dir) if cfg.autointerp.cache_dir else cfg.run_dir / "autointerp_cache"


def autointerp_key(cfg: ExperimentConfig, name: str, run_dir: Path) -> str | None:
    """What an SAE's autointerp depends on: its weights, its variant, the data, the autointerp
    settings that change what is asked (not concurrency, timeouts, retries, budget, cache place or
    control run) and tsae's code (None while the SAE has no recorded weights)."""
    settings = {k: v for k, v in cfg.to_dict()["autointerp"].items() if k not in AUTOINTERP_NOT_ASKED_KEYS}
    return eval_key(cfg, name, run_dir, ("source", "harvest"), autointerp=json.loads(json.dumps(settings, default=str)))


def make_client(cfg: ExperimentConfig) -> ChatClient:
    a = cfg.autointerp
    return ChatClient(a.base_url, a.model, a.api_key_env, cache=ResponseCache(cache_dir(cfg)), temperature=a.temperature,
                      concurrency=a.concurrency, timeout_s=a.timeout_s, retries=a.retries, backoff_s=a.backoff_s)


def autointerp_variant(cfg: ExperimentConfig, name: str, store: Any, run_dir: Path | None = None, *, progress: bool = True,
                       force: bool = False, tokenizer: Any = None, client: ChatClient | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Autointerp of `saes/<name>` with `cfg.autointerp`'s backend; writes and returns
    `eval/autointerp/<name>.json` (None with backend `none`). A result on disk made from the same
    weights, data, settings and code is kept unless `force`. `tokenizer`: the language model's, to
    show tokens as text (`tsae_core.sources.factory.load_tokenizer(cfg)`; None for the synthetic
    source). `client`: the chat client to use (default: from the config)."""
    a = cfg.autointerp
    if a.backend == "none":
        return None
    run_dir = cfg.run_dir if run_dir is None else run_dir
    key, path = autointerp_key(cfg, name, run_dir), autointerp_path(run_dir, name)
    kept = None if force else kept_evaluation(path, key)
    if kept is not None:
        log(f"[autointerp] {name}: kept (same weights, data, settings and code): {path}")
        if _control_fields(kept) != (fields := random_transformer_fields(cfg)):  # only the control run changed
            kept = {k: v for k, v in kept.items() if k not in ("controls_not_run", "random_transformer_control")} | fields
            write_json(path, kept, stamp=provenance(cfg.hash()))
        return kept
    from tsae_core.device import resolve_device

    sae = load_sae(run_dir / "saes" / name, device=resolve_device(cfg.run.device))
    truth = store.ground_truth()
    if a.backend == "oracle" and truth is None:
        raise ValueError("autointerp.backend: oracle needs a source with known true features (source.kind: synthetic); "
                         "use backend: openai for a language model")
    t0 = time.perf_counter()
    scanned = scan(sae, store, a, batch_sequences=cfg.eval.batch_sequences, progress=progress, with_truth=a.backend == "oracle")
    matches: dict[int, tuple[int, float]] = {}
    if a.backend == "oracle":
        matches = best_true_features(sae.decoder_directions().detach().cpu(), truth.directions_GD, scanned.latents)
        judge: Any = OracleJudge(scanned, {lat: g for lat, (g, _) in matches.items()})
    else:
        client = client or make_client(cfg)
        judge = LLMJudge(client)
        sent0, cached0 = client.sent, client.cached
    out = run_autointerp(scanned, a, judge, tokenizer, log=log, label=f"{name}: ", random_control=a.backend == "oracle")
    if a.backend == "oracle":
        out["metrics"]["oracle"] = _oracle_groups(out["per_latent"], matches, judge.notes, truth.kinds,
                                                  cfg.eval.recovery_threshold)
    seconds = time.perf_counter() - t0
    result = _layout(cfg, name, sae, store, scanned, out, key, run_dir)
    result["counts"]["seconds"] = round(seconds, 1)
    if a.backend == "openai":
        result["counts"]["requests"] = {"sent": judge.client.sent - sent0, "from_cache": judge.client.cached - cached0}
    write_json(path, result, stamp=provenance(cfg.hash()))
    score = result["eval_result_metrics"]["autointerp"]["autointerp_score"]
    log(f"[autointerp] {name}: score {score if score is None else round(score, 4)} over "
        f"{result['counts']['n_scored']} latents in {seconds:.0f} s -> {path}")
    return result


def _oracle_groups(per_latent: dict[str, dict[str, Any]], matches: dict[int, tuple[int, float]],
                   notes: dict[int, dict[str, Any]], kinds: list[str], recovered_at: float) -> dict[str, Any]:
    """Scores of the latents by how well they match a true feature, with each group's chance level."""
    groups: dict[str, list[dict[str, Any]]] = {"recovered": [], "partly_matched": [], "unmatched": []}
    for key, r in per_latent.items():
        g, cos = matches[int(key)]
        r["oracle"] = {"feature": g, "kind": kinds[g], "decoder_cos": cos, **notes.get(int(key), {})}
        group = "recovered" if cos >= recovered_at else "unmatched" if cos < UNMATCHED_BELOW else "partly_matched"
        r["oracle"]["group"] = group
        if r.get("score") is not None:
            groups[group].append(r)
    out: dict[str, Any] = {"recovered_at_cos": recovered_at, "unmatched_below_cos": UNMATCHED_BELOW}
    for group, rs in groups.items():
        def avg(get, rs=rs):
            return mean_std([v for r in rs if (v := get(r)) is not None])[0]

        out[group] = {"n": len(rs), "score": avg(lambda r: r["score"]),
                      "chance_given_answer_sizes": avg(lambda r: r.get("chance")),
                      "chance_random_guess": avg(lambda r: r.get("chance_random_guess")),
                      "shuffled_explanation_score": avg(lambda r: (r.get("shuffled") or {}).get("score")),
                      "random_scorer_score": avg(lambda r: r.get("random_scorer_score")),
                      "marked_tokens_on_feature": avg(lambda r: r["oracle"].get("marked_tokens_on_feature"))}
    return out


def _layout(cfg: ExperimentConfig, name: str, sae: Any, store: Any, scanned: Any, out: dict[str, Any], key: str | None,
            run_dir: Path) -> dict[str, Any]:
    a = cfg.autointerp
    source = store.manifest.get("source", {})
    eval_config = {
        "model_name": str(source.get("model_name") or source.get("model") or cfg.source.kind)
                      + (" (randomly initialised)" if source.get("random_init") else ""),
        "n_latents": a.n_latents, "override_latents": None, "dead_latent_threshold": a.dead_latent_threshold,
        "random_seed": a.seed, "dataset_name": f"tsae eval split of run {cfg.run.name} ({cfg.source.kind})",
        "llm_context_size": store.context_size, "llm_batch_size": cfg.eval.batch_sequences, "llm_dtype": cfg.harvest.dtype,
        "buffer": a.buffer, "no_overlap": True, "act_threshold_frac": a.act_threshold_frac, "total_tokens": scanned.n_tokens,
        "scoring": True, "max_tokens_in_explanation": a.max_tokens_in_explanation,
        "use_demos_in_explanation": a.use_demos_in_explanation,
        "n_top_ex_for_generation": a.n_top_ex_for_generation, "n_iw_sampled_ex_for_generation": a.n_iw_sampled_ex_for_generation,
        "n_top_ex_for_scoring": a.n_top_ex_for_scoring, "n_random_ex_for_scoring": a.n_random_ex_for_scoring,
        "n_iw_sampled_ex_for_scoring": a.n_iw_sampled_ex_for_scoring,
        "backend": a.backend, "judge_base_url": a.base_url if a.backend == "openai" else None,
        "judge_model": a.model if a.backend == "openai" else "oracle (true features of the synthetic source)",
        "temperature": a.temperature, "random_example_labels": a.random_example_labels,
        "temporal_window": a.temporal_window, "shuffled_control": a.shuffled_control, "deviations": list(DEVIATIONS),
    }
    inst = cfg.instance(name)
    return {
        "eval_type_id": "autointerp",
        "eval_config": eval_config,
        **saebench_identity(sae, name, cfg.run.name),
        "eval_result_metrics": out["metrics"],
        "eval_result_details": [],
        "eval_result_unstructured": out["per_latent"],
        "counts": out["counts"],
        "variant": inst.variant, "instance": inst.name, "seed": inst.seed,
        "sae_weights_sha256": recorded_weights_sha256(run_dir / "saes" / name),
        "eval_key": key,
        **random_transformer_fields(cfg),
    }


def random_transformer_fields(cfg: ExperimentConfig) -> dict[str, Any]:
    """What a result says of the random-transformer control: where it is (`random_transformer_control`,
    with `autointerp.control_run` set), else that it was not run (`controls_not_run`)."""
    control = cfg.autointerp.control_run
    if not control:
        return {"controls_not_run": {"random_transformer": "no autointerp.control_run: the same recipe on a randomly "
                                                           "initialised copy of the model (source.random_init) was not "
                                                           "compared; compare scores with it before reading them"}}
    return {"random_transformer_control": {"run": control, "file": f"{control}/eval/autointerp/<sae>.json",
                                           "attached_as": "autointerp_random_transformer (by the plot stage)"}}


def _control_fields(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("controls_not_run", "random_transformer_control") if k in result}


def autointerp_run(cfg: ExperimentConfig, progress: bool = True, force: bool = False,
                   log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Autointerp of every trained SAE of the run (instance -> result); {} with backend `none`."""
    if cfg.autointerp.backend == "none":
        return {}
    from tsae_core.sources.factory import load_tokenizer
    from tsae_core.store import ActivationStore
    from tsae_core.train import trained_instances

    store = ActivationStore.open(cfg.run_dir / "activations")
    tokenizer = load_tokenizer(cfg)
    client = make_client(cfg) if cfg.autointerp.backend == "openai" else None
    results = {}
    for inst in trained_instances(cfg, cfg.run_dir):
        r = autointerp_variant(cfg, inst.name, store, progress=progress, force=force, tokenizer=tokenizer, client=client, log=log)
        if r is not None:
            results[inst.name] = r
    return results
