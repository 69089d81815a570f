"""One SAE through SAEBench's autointerp: sample, explain, score, controls, temporal rescoring.

Steps (per SAE):
1. `sampling.scan` + `sampling.sample_latent`: the latents and their examples.
2. Explain: one request per latent (the explainer sees the marked generation examples).
3. Score, in one batch: each latent's own explanation on its scoring examples (the score);
   with `shuffled_control`, another latent's explanation on the same examples (a fixed random
   cycle through the explained latents: the shuffled-explanation control); with `temporal_window`,
   its own explanation on the same examples shown from `temporal_window` tokens before their chosen
   token, labels taken on that wider window (the temporal rescoring).
4. A latent's score is the fraction of its scoring sequences classified correctly;
   `autointerp_score` is the mean over scored latents and `autointerp_std_dev` their standard
   deviation (n - 1), as SAEBench reports them. An answer that does not parse is counted and listed,
   and its latent is left out of that mean (SAEBench drops it silently).

Before any request the number of requests not in the cache and a token estimate are printed; more
uncached requests than `max_requests` stop the run there (`RequestBudgetExceeded`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from tsae_core.config import AutointerpConfig
from tsae_core.evals.autointerp import prompts
from tsae_core.evals.autointerp.client import RequestBudgetExceeded
from tsae_core.evals.autointerp.judges import RandomScorer, Task
from tsae_core.evals.autointerp.sampling import Example, LatentExamples, Scan, sample_latent
from tsae_core.seeds import derive_seed

RANDOM_SCORER_REPEATS = 200
"""Random answers per latent of the random-scorer control (oracle runs): its mean per latent is
then within about 0.01 of the chance level."""
_PLACEHOLDER_EXPLANATION = "x" * 80  # about 20 tokens: what the token estimate assumes before explanations exist


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and standard deviation (n - 1, as torch's `std`); None where undefined."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


class Texts:
    """How the scan's windows read (marked for the explainer, plain for the scorer)."""

    def __init__(self, scan_: Scan, tokenizer: Any) -> None:
        self.scan, self.tokenizer = scan_, tokenizer

    def __call__(self, examples: list[Example], mark: bool) -> list[str]:
        return [prompts.window_text(e, self.scan.tokens_NT, mark, self.tokenizer) for e in examples]


def _score_task(cfg: AutointerpConfig, s: LatentExamples, column: int, explanation: str, examples: list[Example],
                texts: Texts, purpose: str) -> Task:
    messages = prompts.score_messages(explanation, texts(examples, mark=False), s.example_response)
    return Task(s.latent, column, examples, messages, cfg.max_tokens_in_prediction, explanation, purpose)


def _shuffled_sources(latents: list[int], seed: int) -> dict[int, int]:
    """latent -> the latent whose explanation it is scored with: a random cycle, never itself."""
    order = sorted(latents)
    random.Random(derive_seed(seed, "autointerp-shuffled")).shuffle(order)
    return {lat: order[(i + 1) % len(order)] for i, lat in enumerate(order)} if len(order) > 1 else {}


def run_autointerp(scan_: Scan, cfg: AutointerpConfig, judge: Any, tokenizer: Any = None,
                   log: Callable[[str], None] = print, label: str = "", random_control: bool = False) -> dict[str, Any]:
    """The autointerp of one scanned SAE with `judge` (an `LLMJudge` or `OracleJudge`): a dict with
    `metrics` (the `eval_result_metrics` sections), `per_latent` (SAEBench's unstructured results:
    latent -> explanation, predictions, correct seqs, score, the examples shown, controls) and
    `counts` (sampled, scored, skipped with reasons, answers that did not parse).

    `random_control`: also score every latent's scoring sequences with `RandomScorer`
    (`RANDOM_SCORER_REPEATS` times; no LLM): `controls.random_scorer_score` must equal the chance level."""
    texts = Texts(scan_, tokenizer)
    samples, skipped = _sample_latents(scan_, cfg)

    explain = [Task(lat, col, s.generation, prompts.explain_messages(texts(s.generation, mark=True), cfg.use_demos_in_explanation),
                    cfg.max_tokens_in_explanation) for lat, (col, s) in samples.items()]
    _plan(cfg, judge, explain, samples, scan_, texts, log, label)

    per_latent: dict[str, dict[str, Any]] = {}
    unparsed = {"explanation": 0, "score": 0, "shuffled": 0, "temporal": 0}
    explanations = _explanations(explain, judge.answer(explain), samples, texts, per_latent, unparsed)
    sources = _shuffled_sources(list(explanations), cfg.seed) if cfg.shuffled_control else {}
    scoring = _scoring_tasks(cfg, explanations, sources, samples, scan_, texts)
    _record_scores(cfg, scoring, judge.answer(scoring), sources, texts, per_latent, unparsed)
    if random_control:
        _add_random_scorer_control(cfg, scoring, per_latent)

    metrics = _metrics(per_latent, cfg)
    counts = {"n_latents_requested": cfg.n_latents, "n_alive": scan_.n_alive, "n_sampled": len(scan_.latents),
              "n_with_examples": len(samples), "n_explained": len(explanations),
              "n_scored": sum(r.get("score") is not None for r in per_latent.values()),
              "n_skipped": len(skipped), "skipped": skipped, "unparsed": unparsed,
              "n_tokens_scanned": scan_.n_tokens, "n_sequences_scanned": scan_.n_sequences}
    if any(unparsed.values()):
        log(f"[autointerp] {label}answers that did not parse (left out of the scores): " +
            ", ".join(f"{k} {v}" for k, v in unparsed.items() if v))
    return {"metrics": metrics, "per_latent": per_latent, "counts": counts}


def _sample_latents(scan_: Scan, cfg: AutointerpConfig) -> tuple[dict[int, tuple[int, LatentExamples]], dict[str, str]]:
    """latent -> (its column, its sampled examples), and latent -> why it was skipped."""
    samples: dict[int, tuple[int, LatentExamples]] = {}
    skipped: dict[str, str] = {}
    for column, latent in enumerate(scan_.latents):
        s = sample_latent(scan_, column, cfg)
        if isinstance(s, str):
            skipped[str(latent)] = s
        else:
            samples[latent] = (column, s)
    return samples, skipped


def _record_scores(cfg: AutointerpConfig, scoring: list[Task], answers: list[str], sources: dict[int, int], texts: Texts,
                   per_latent: dict[str, dict[str, Any]], unparsed: dict[str, int]) -> None:
    """Put each scoring answer's predictions and score in its latent's record, by purpose, counting what did not parse."""
    for task, answer in zip(scoring, answers):
        record = per_latent[str(task.latent)]
        labels = [e.is_positive for e in task.examples]
        predictions = prompts.parse_predictions(answer)
        entry: dict[str, Any] = {"predictions": predictions, "score": None}
        if predictions is None:
            unparsed[task.purpose] += 1
            entry["unparsed_answer"] = answer
        else:
            entry["score"] = prompts.score_predictions(predictions, labels)
            entry["chance"] = prompts.chance_score(sum(labels), len({p for p in predictions if 1 <= p <= len(labels)}), len(labels))
        if task.purpose == "score":
            record.update(entry)
            record["n_positive"] = sum(labels)
            record["chance_random_guess"] = prompts.chance_score(sum(labels), cfg.n_correct_for_scoring, len(labels))
        elif task.purpose == "shuffled":
            record["shuffled"] = {"explanation_of": sources[task.latent], "explanation": task.explanation, **entry}
        else:
            record["temporal"] = {"window_before": cfg.temporal_window, "scoring_examples": texts(task.examples, mark=False),
                                  "correct seqs": [i for i, y in enumerate(labels, start=1) if y], **entry}


def _add_random_scorer_control(cfg: AutointerpConfig, scoring: list[Task], per_latent: dict[str, dict[str, Any]]) -> None:
    """Add each scored latent's mean `random_scorer_score` over `RANDOM_SCORER_REPEATS` `RandomScorer` answers."""
    rs = RandomScorer(cfg.n_correct_for_scoring, derive_seed(cfg.seed, "autointerp-random-scorer"))
    for task in (t for t in scoring if t.purpose == "score"):
        labels = [e.is_positive for e in task.examples]
        runs = [prompts.score_predictions(prompts.parse_predictions(a) or [], labels)
                for a in rs.answer([task] * RANDOM_SCORER_REPEATS)]
        per_latent[str(task.latent)]["random_scorer_score"] = sum(runs) / len(runs)


def _explanations(explain: list[Task], answers: list[str], samples: dict[int, tuple[int, LatentExamples]], texts: Texts,
                  per_latent: dict[str, dict[str, Any]], unparsed: dict[str, int]) -> dict[int, str]:
    """latent -> its parsed explanation; fills each latent's record with the examples shown."""
    explanations: dict[int, str] = {}
    for task, answer in zip(explain, answers):
        col, s = samples[task.latent]
        explanation = prompts.parse_explanation(answer)
        record: dict[str, Any] = {
            "latent": task.latent, "explanation": explanation,
            "generation_examples": texts(s.generation, mark=True),
            "generation_kinds": [e.kind for e in s.generation],
            "scoring_examples": texts(s.scoring, mark=False),
            "scoring_kinds": [e.kind for e in s.scoring],
            "correct seqs": [i for i, e in enumerate(s.scoring, start=1) if e.is_positive],
        }
        if not explanation:
            unparsed["explanation"] += 1
            record["unparsed_answer"] = answer
        else:
            explanations[task.latent] = explanation
        per_latent[str(task.latent)] = record
    return explanations


def _scoring_tasks(cfg: AutointerpConfig, explanations: dict[int, str], sources: dict[int, int],
                   samples: dict[int, tuple[int, LatentExamples]], scan_: Scan, texts: Texts) -> list[Task]:
    """The score, the shuffled-explanation control and the temporal rescoring of every explained latent."""
    scoring: list[Task] = []
    for lat, explanation in explanations.items():
        col, s = samples[lat]
        scoring.append(_score_task(cfg, s, col, explanation, s.scoring, texts, "score"))
        if lat in sources:
            scoring.append(_score_task(cfg, s, col, explanations[sources[lat]], s.scoring, texts, "shuffled"))
        if cfg.temporal_window > 0:
            acts_T = scan_.acts_NTL[:, :, col]
            wide = [e.widened(cfg.temporal_window, acts_T[e.sequence]) for e in s.scoring]
            scoring.append(_score_task(cfg, s, col, explanation, wide, texts, "temporal"))
    return scoring


def _metrics(per_latent: dict[str, dict[str, Any]], cfg: AutointerpConfig) -> dict[str, Any]:
    def collect(get) -> list[float]:
        return [v for r in per_latent.values() if (v := get(r)) is not None]

    score, std = mean_std(collect(lambda r: r.get("score")))
    chance, _ = mean_std(collect(lambda r: r.get("chance_random_guess") if r.get("score") is not None else None))
    random_scores = collect(lambda r: r.get("random_scorer_score"))
    if random_scores:
        deviation = max(abs(r["random_scorer_score"] - r["chance_random_guess"]) for r in per_latent.values()
                        if "random_scorer_score" in r)
    metrics: dict[str, Any] = {
        "autointerp": {"autointerp_score": score, "autointerp_std_dev": std},
        "controls": {"chance_random_guess": chance},
    }
    if random_scores:
        metrics["controls"].update({"random_scorer_score": mean_std(random_scores)[0],
                                    "random_scorer_max_deviation_from_chance": deviation,
                                    "random_scorer_repeats": RANDOM_SCORER_REPEATS})
    if cfg.shuffled_control:
        s, sd = mean_std(collect(lambda r: (r.get("shuffled") or {}).get("score")))
        metrics["controls"].update({"shuffled_explanation_score": s, "shuffled_explanation_std_dev": sd})
    if cfg.temporal_window > 0:
        s, sd = mean_std(collect(lambda r: (r.get("temporal") or {}).get("score")))
        metrics["temporal_window"] = {"window_before": cfg.temporal_window, "autointerp_score": s, "autointerp_std_dev": sd,
                                      "difference_to_default": None if s is None or score is None else s - score}
    return metrics


def _plan(cfg: AutointerpConfig, judge: Any, explain: list[Task], samples: dict[int, tuple[int, LatentExamples]],
          scan_: Scan, texts: Texts, log: Callable[[str], None], label: str) -> None:
    """Print the requests this SAE needs and their token estimate; stop when more than `max_requests`
    are not cached. With every explanation cached, the scoring requests are counted exactly (from
    the cached explanations); otherwise all of them count as not cached."""
    if judge.name != "openai":
        return
    per_latent = 1 + int(cfg.shuffled_control and len(explain) > 1) + int(cfg.temporal_window > 0)
    n_requests = len(explain) * (1 + per_latent)
    uncached = judge.uncached(explain)
    if uncached == 0 and explain:
        explanations = _explanations(explain, [a or "" for a in judge.peek(explain)], samples, texts, {}, dict.fromkeys(("explanation",), 0))
        sources = _shuffled_sources(list(explanations), cfg.seed) if cfg.shuffled_control else {}
        uncached += judge.uncached(_scoring_tasks(cfg, explanations, sources, samples, scan_, texts))
    else:
        uncached += len(explain) * per_latent
    prompt_tokens = sum(prompts.estimate_tokens(t.messages) for t in explain)
    for t in explain:
        col, s = samples[t.latent]
        prompt_tokens += per_latent * prompts.estimate_tokens(
            _score_task(cfg, s, col, _PLACEHOLDER_EXPLANATION, s.scoring, texts, "score").messages)
        if cfg.temporal_window > 0:  # the wider windows: about one judge token per extra subject token
            prompt_tokens += len(s.scoring) * max(0, cfg.temporal_window - cfg.buffer)
    completion_tokens = len(explain) * (cfg.max_tokens_in_explanation + per_latent * cfg.max_tokens_in_prediction)
    log(f"[autointerp] {label}{n_requests} requests for {len(explain)} latents ({uncached} not cached), about "
        f"{prompt_tokens / 1e6:.3f}M prompt tokens and at most {completion_tokens / 1e6:.3f}M completion tokens")
    if uncached > cfg.max_requests:
        raise RequestBudgetExceeded(f"{label}this SAE needs {uncached} requests not in the cache, more than "
                                    f"autointerp.max_requests = {cfg.max_requests}; nothing was sent. Raise max_requests, or "
                                    "lower autointerp.n_latents")
