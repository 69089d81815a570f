"""Unlearning with SAE latents: an offline analogue of SAEBench's unlearning eval.

SAEBench (after Farrell et al. 2024, "Applying sparse autoencoders to unlearn knowledge in language
models") clamps the latents that fire on WMDP-bio's forget corpus and rarely on a retain corpus, and
scores the largest drop of WMDP-bio accuracy while MMLU accuracy stays within 1%. That needs gated
data and an instruct model; here the same protocol runs on what ships with Python.

**Sets (language models).** forget = the corpus docstrings (`corpus.python_docs_documents`) of the
stdlib packages `unlearning.forget_packages` (by default internet data handling, markup and protocols:
email, xml, http, urllib, json, ...); retain = every other docstring (pydoc topics belong to
neither: they are a different genre, and the contrast should be the subject, not the kind of text).
Each set is split into a *selection* half (latents are chosen there) and a *test* half (CE is measured
there) by the hash of the text: selection iff `_unit_hash(text, split_seed) < 0.5`; within each half
texts are ordered by a second hash of the text and the first `unlearning.max_contexts` kept. A text
is one context (`text_contexts`, BOS first, cut at harvest.context_size, padded with specials), and
the activation at the hook is read once.

**Selection.** On the selection data, over non-special tokens, each latent's firing frequency on
forget tokens p_f and on retain tokens p_r (a latent fires where its code is > 0). For a retain
threshold τ a latent is *eligible* iff p_r ≤ τ and p_f > 0. Eligible latents are ranked by

    ratio = p_f / (p_r + 1 / n_r)            n_r the number of retain-selection tokens,

i.e. as if each had fired once more on the retain set, so that latents that never fire on retain get
a finite ratio proportional to p_f; ties (equal ratio) go to the larger p_f, then the lower index.
The top n are clamped (fewer when fewer are eligible; the count used is recorded). SAEBench ranks by
p_f alone among latents with p_r < τ.

**Clamp.** With a_i the code of selected latent i at a non-special test token where a_i > 0:

    a'_i = −multiplier · scale_i,     x' = x + Σ_i (a'_i − a_i) W_dec[i] / s

scale_i the latent's mean value where it is active on the selection data (forget and retain tokens
together, so that a random control latent has one too), s the SAE's activation scaling factor. So a
multiplier means the same for SAEs of different activation scales; SAEBench clamps to −multiplier
in absolute units (25…200). Everything else is left as it was: inactive latents and tokens, special
tokens, and the SAE's error term x − x̂ (the edit is the decoder's change, added to x). Temporal
variants are encoded with their documents' boundaries and positions (`doc_start`, `position`); the
code of the predictive variant is its sparse novel code. The crosscoder is skipped: its code at token t
reads later tokens of its window, which a causal language model must not see.

**Measure (language models).** Next-token CE in nats on forget-test and retain-test, clean and edited,
over positions t < T − 1 whose input and target tokens are both non-special (as in
`tsae_core.metrics.model`), log-softmax in float32 and sums in float64. A context whose edit is zero
keeps its clean loss (nothing is recomputed for it).

**Sweep and score.** Every (retain threshold, n latents, multiplier) is a point. A point is admissible
iff (CE_retain' − CE_retain) / CE_retain ≤ `max_retain_increase` (1%). The score, under SAEBench's
key name `unlearning_score`, is the largest forget-CE increase CE_forget' − CE_forget (nats) over
admissible points, and 0 when none increases it (doing nothing is always admissible);
`unlearning_score_relative` is the same divided by the clean forget CE. SAEBench's score is
1 − the lowest WMDP-bio accuracy under its constraint; both say how much the forget set can be damaged
while the retain set is spared.

**Control.** The same sweep with random latents instead of the ranked ones: for each control seed and
threshold, a seeded permutation of the *alive* (firing on some selection token) latents with p_r ≤ τ;
a point takes as many from its front as the ranked selection used. Same scales, same clamp. If the
control scores as well, the ranking by forget/retain ratio is not what does the forgetting.

**Synthetic analogue (no language model).** forget = the `synthetic_forget_features` most frequent
slow true features; a token is a forget token where one of them is on, a retain token otherwise.
Selection and test data are the source's splits "unlearning-select" and "unlearning-test"
(`max_contexts` sequences each), the selection rule and clamp the same. Then

    forget damage = Σ_{(t,g): c_tg > 0, g forget} ⟨x_t − x'_t, d_g⟩ / Σ_{same} c_tg
    retain damage = Σ_{t retain} ‖x'_t − x_t‖² / Σ_{t retain} ‖x_t − x̄‖²        (x̄ their mean)

the fraction of the forget features' signal (its projection on their true directions d_g) removed at
their tokens, and the edit's energy on the other tokens against theirs. A point is admissible iff the
retain damage ≤ `max_retain_increase`; the score is the largest admissible forget damage (≥ 0). It is
an analogue: it measures what the edit does to the representation, not to a model's loss.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F_nn

from tsae_core.config import ExperimentConfig, UnlearningConfig
from tsae_core.eval_files import eval_key, kept_evaluation, saebench_identity
from tsae_core.io import provenance, write_json
from tsae_core.loading import load_sae
from tsae_core.metrics.model import counted_positions
from tsae_core.progress import tqdm
from tsae_core.sae import SAE, recorded_weights_sha256
from tsae_core.seeds import derive_seed
from tsae_core.sources.corpus import _unit_hash, corpus_fingerprint, python_docs_documents

EVAL_TYPE_ID = "unlearning"
LANGUAGE_MODEL, SYNTHETIC = "language_model", "synthetic"
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


# ------------------------------------------------------------------------------------------------
# Data shared by every SAE of a run
# ------------------------------------------------------------------------------------------------
@dataclass
class Contexts:
    """Contexts (N, T) with the activation at the hook (raw units) and their token masks."""

    acts_NTD: torch.Tensor
    doc_start_NT: torch.Tensor
    position_NT: torch.Tensor
    special_NT: torch.Tensor
    forget_NT: torch.Tensor
    """True at the non-special tokens of the forget set."""
    retain_NT: torch.Tensor
    """True at the non-special tokens of the retain set."""
    tokens_NT: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.acts_NTD.shape[0]


@dataclass
class UnlearningData:
    """Everything the eval of one SAE needs that does not depend on the SAE: built once per run
    (`build_unlearning_data`) and shared by all its SAEs."""

    kind: str
    settings: UnlearningConfig
    select: Contexts
    test: Contexts
    info: dict[str, Any]
    """Counts, packages, fingerprints and clean values, recorded in every JSON's `eval_config`."""
    clean: dict[str, float]
    """Language model: clean CE {"forget", "retain"} on the test half; synthetic: zeros."""
    measure: Callable[[torch.Tensor, torch.Tensor], dict[str, float]] | None = None
    """(delta_NTD raw-unit edit of the test contexts, changed_N rows with a non-zero edit) ->
    {"forget": CE or damage, "retain": CE or damage}."""
    batch_size: int = 64


def _split_halves(texts: Sequence[str], seed: int, limit: int) -> tuple[list[str], list[str]]:
    """(selection, test): a text is in the selection half iff its hash < 0.5; each half in the order
    of a second hash of the text, its first `limit` texts."""
    sel = [t for t in texts if _unit_hash(t, seed) < 0.5]
    test = [t for t in texts if _unit_hash(t, seed) >= 0.5]
    order = lambda t: _unit_hash("order\x00" + t, seed)  # noqa: E731
    return sorted(sel, key=order)[:limit], sorted(test, key=order)[:limit]


def forget_retain_texts(settings: UnlearningConfig) -> dict[str, Any]:
    """The forget and retain docstrings of the corpus, each split into selection and test halves.

    Returns {"forget_select", "forget_test", "retain_select", "retain_test": [texts], "packages":
    {package: forget docstrings found}}. `ValueError` naming the key when a forget half has fewer
    than `min_contexts` texts."""
    docs = [d for d in python_docs_documents() if d.kind == "docstring"]
    wanted = set(settings.forget_packages)
    forget = [d.text for d in docs if d.package in wanted]
    retain = [d.text for d in docs if d.package not in wanted]
    packages = {p: sum(d.package == p for d in docs) for p in settings.forget_packages}
    out: dict[str, Any] = {"packages": packages}
    for name, texts in (("forget", forget), ("retain", retain)):
        out[f"{name}_select"], out[f"{name}_test"] = _split_halves(texts, settings.split_seed, settings.max_contexts)
        for half in ("select", "test"):
            if len(out[f"{name}_{half}"]) < settings.min_contexts:
                raise ValueError(
                    f"unlearning: the {name} set has {len(out[f'{name}_{half}'])} docstrings in its {half} half, fewer "
                    f"than unlearning.min_contexts ({settings.min_contexts}); forget_packages {sorted(wanted)} have "
                    f"{len(forget)} docstrings in this Python's stdlib ({packages}): name more or larger packages "
                    "(e.g. email, xml, http, asyncio, logging) or lower min_contexts")
    return out


def _lm_runner(model: Any, hook_name: str) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """(tokens_BT, x_BTD cached at the hook, delta_BTD) -> logits: the model with x + delta at the hook.

    A transformer-lens `HookedTransformer` hooked at `blocks.L.hook_resid_post` restarts from the
    cached residual (`start_at_layer=L + 1`): the blocks before the hook are not run again. Otherwise the
    whole model runs with a hook that adds delta to the activation (`run_with_hooks`)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_post", hook_name)
    restart = None
    try:
        from transformer_lens import HookedTransformer

        if match and isinstance(model, HookedTransformer) and model.cfg.positional_embedding_type != "shortformer":
            restart = int(match.group(1)) + 1
    except ImportError:  # pragma: no cover - transformer-lens is a dependency
        pass
    device = next(model.parameters()).device
    dtype = getattr(getattr(model, "cfg", None), "dtype", torch.float32)

    @torch.no_grad()
    def run(tokens_BT: torch.Tensor, x_BTD: torch.Tensor, delta_BTD: torch.Tensor) -> torch.Tensor:
        if restart is not None:
            return model((x_BTD + delta_BTD).to(device, dtype), start_at_layer=restart)
        d = delta_BTD.to(device)

        def add(act: torch.Tensor, hook: Any = None) -> torch.Tensor:
            return act + d.to(act.dtype)

        return model.run_with_hooks(tokens_BT.to(device), fwd_hooks=[(hook_name, add)])

    return run


def _nll_rows(logits_BTV: torch.Tensor, tokens_BT: torch.Tensor, special_BT: torch.Tensor) -> torch.Tensor:
    """(B,) float64: Σ over counted positions (input and target non-special) of −log p(next token)."""
    logp = F_nn.log_softmax(logits_BTV[:, :-1].float(), dim=-1)
    tokens_BT, special_BT = tokens_BT.to(logp.device), special_BT.to(logp.device)
    nll_BS = -logp.gather(-1, tokens_BT[:, 1:, None]).squeeze(-1)
    return (nll_BS.double() * counted_positions(special_BT)).sum(-1).cpu()


def _lm_measure(model: Any, hook_name: str, test: Contexts, forget_rows_N: torch.Tensor, batch_size: int):
    """The clean CE per set and the `measure` function of a language model (see the module docstring)."""
    run = _lm_runner(model, hook_name)
    tokens = test.tokens_NT
    counted_N = counted_positions(test.special_NT).sum(-1).double()

    def nll(rows: torch.Tensor, delta_NTD: torch.Tensor | None) -> torch.Tensor:
        out = torch.zeros(len(rows), dtype=torch.float64)
        for a in range(0, len(rows), batch_size):
            r = rows[a:a + batch_size]
            x = test.acts_NTD[r]
            d = torch.zeros_like(x) if delta_NTD is None else delta_NTD[r]
            out[a:a + batch_size] = _nll_rows(run(tokens[r], x, d), tokens[r], test.special_NT[r])
        return out

    clean_nll_N = nll(torch.arange(test.n), None)

    def ce(nll_N: torch.Tensor) -> dict[str, float]:
        return {name: float(nll_N[rows].sum() / counted_N[rows].sum())
                for name, rows in (("forget", forget_rows_N), ("retain", ~forget_rows_N))}

    def measure(delta_NTD: torch.Tensor, changed_N: torch.Tensor) -> dict[str, float]:
        nll_N = clean_nll_N.clone()
        rows = changed_N.nonzero().squeeze(-1)
        if len(rows):
            nll_N[rows] = nll(rows, delta_NTD)
        return ce(nll_N)

    return ce(clean_nll_N), measure


def _lm_data(cfg: ExperimentConfig, model: Any, progress: bool) -> UnlearningData:
    from tsae_core.sources.factory import load_model, load_tokenizer
    from tsae_core.sources.lm import hook_layer
    from tsae_core.sources.text_contexts import hook_activations, text_contexts

    u, T, hook = cfg.unlearning, cfg.harvest.context_size, cfg.source.hook_name
    texts = forget_retain_texts(u)
    model = load_model(cfg) if model is None else model
    tokenizer = load_tokenizer(cfg)
    bs = cfg.source.model_batch_size

    def contexts(forget: list[str], retain: list[str]) -> tuple[Contexts, torch.Tensor]:
        c = text_contexts(tokenizer, forget + retain, T)
        acts = torch.cat([hook_activations(model, hook, c["tokens_NT"][a:a + bs], stop_at_layer=hook_layer(hook) + 1)
                          for a in tqdm(range(0, len(forget) + len(retain), bs), desc="unlearning: activations",
                                        disable=not progress)])
        forget_rows = torch.arange(len(forget) + len(retain)) < len(forget)
        kept = ~c["special_NT"]
        return Contexts(acts, c["doc_start_NT"], c["position_NT"], c["special_NT"], kept & forget_rows[:, None],
                        kept & ~forget_rows[:, None], c["tokens_NT"]), forget_rows

    select, _ = contexts(texts["forget_select"], texts["retain_select"])
    test, forget_rows = contexts(texts["forget_test"], texts["retain_test"])
    clean, measure = _lm_measure(model, hook, test, forget_rows, bs)
    info = {
        "source": LANGUAGE_MODEL, "hook_name": hook, "context_size": T,
        "forget_packages_docstrings": texts["packages"],
        "forget_packages_without_docstrings": sorted(p for p, n in texts["packages"].items() if n == 0),
        "retain_set": "every other stdlib docstring of the corpus (pydoc topics in neither set)",
        "n_contexts": {k: len(texts[k]) for k in ("forget_select", "forget_test", "retain_select", "retain_test")},
        "n_tokens": _token_counts(select, test),
        "n_ce_positions": {"forget_test": int(counted_positions(test.special_NT)[forget_rows].sum()),
                           "retain_test": int(counted_positions(test.special_NT)[~forget_rows].sum())},
        "fingerprints": {k: corpus_fingerprint(texts[k]) for k in ("forget_select", "forget_test", "retain_select", "retain_test")},
        "clean_forget_ce": clean["forget"], "clean_retain_ce": clean["retain"],
    }
    return UnlearningData(LANGUAGE_MODEL, u, select, test, info, clean, measure, bs)


def _token_counts(select: Contexts, test: Contexts) -> dict[str, int]:
    return {"forget_select": int(select.forget_NT.sum()), "retain_select": int(select.retain_NT.sum()),
            "forget_test": int(test.forget_NT.sum()), "retain_test": int(test.retain_NT.sum())}


def synthetic_forget_features(ground_truth: Any, n: int) -> list[int]:
    """The `n` slow true features with the highest firing rates (ties: lower index), as feature indices."""
    slow = ground_truth.kind_mask("slow").nonzero().squeeze(-1).tolist()
    if n > len(slow):
        raise ValueError(f"unlearning.synthetic_forget_features is {n} but the synthetic source has {len(slow)} slow "
                         f"features; set it to at most {len(slow)}")
    rates = ground_truth.rates_G
    return sorted(sorted(slow, key=lambda g: (-float(rates[g]), g))[:n])


def _synthetic_data(cfg: ExperimentConfig) -> UnlearningData:
    from tsae_core.sources.factory import make_source

    u = cfg.unlearning
    source = make_source(cfg, progress=False)
    forget_G = torch.tensor(synthetic_forget_features(source.ground_truth, u.synthetic_forget_features))
    directions_FD = source.ground_truth.directions_GD[forget_G].float()

    def contexts(split: str) -> tuple[Contexts, torch.Tensor]:
        b = source.sequences(split, 0, u.max_contexts, with_true_codes=True)
        codes_NTF = b.true_codes_BTG[..., forget_G].float()
        kept = ~b.special_BT
        on = (codes_NTF > 0).any(-1) & kept
        return Contexts(b.acts_BTD.float(), b.doc_start_BT, b.position_BT, b.special_BT, on, kept & ~on), codes_NTF

    select, _ = contexts("unlearning-select")
    test, codes_NTF = contexts("unlearning-test")
    for c, half in ((select, "select"), (test, "test")):
        if int(c.forget_NT.sum()) < u.min_contexts or int(c.retain_NT.sum()) < u.min_contexts:
            raise ValueError(f"unlearning: the synthetic {half} data has {int(c.forget_NT.sum())} forget and "
                             f"{int(c.retain_NT.sum())} retain tokens; raise unlearning.max_contexts or change "
                             "synthetic_forget_features")
    x_retain = test.acts_NTD[test.retain_NT].double()
    retain_variance = float((x_retain - x_retain.mean(0)).pow(2).sum())
    signal = float(codes_NTF.double().sum())
    on_NTF = (codes_NTF > 0) & test.forget_NT[..., None]

    def measure(delta_NTD: torch.Tensor, changed_N: torch.Tensor) -> dict[str, float]:
        proj_NTF = delta_NTD.double() @ directions_FD.double().T  # <x' - x, d_g>
        removed = float(-(proj_NTF * on_NTF).sum())
        energy = float(delta_NTD.double()[test.retain_NT].pow(2).sum())
        return {"forget": removed / signal, "retain": energy / retain_variance}

    info = {
        "source": SYNTHETIC, "splits": ["unlearning-select", "unlearning-test"], "n_sequences": u.max_contexts,
        "context_size": cfg.harvest.context_size, "forget_features": forget_G.tolist(),
        "forget_feature_rates": [float(source.ground_truth.rates_G[g]) for g in forget_G],
        "n_tokens": _token_counts(select, test), "forget_signal": signal, "retain_variance": retain_variance,
    }
    return UnlearningData(SYNTHETIC, u, select, test, info, {"forget": 0.0, "retain": 0.0}, measure,
                          cfg.eval.batch_sequences)


def build_unlearning_data(cfg: ExperimentConfig, model: Any = None, progress: bool = True) -> UnlearningData:
    """The forget/retain contexts (selection and test halves), their activations and the clean
    measurements, for `cfg`'s source: built once per run, shared by every SAE. Language models: the
    model is loaded unless given."""
    if cfg.source.kind == "synthetic":
        return _synthetic_data(cfg)
    return _lm_data(cfg, model, progress)


# ------------------------------------------------------------------------------------------------
# Selection and clamp
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def encode(sae: SAE, contexts: Contexts, batch_size: int, latents: torch.Tensor | None = None) -> torch.Tensor:
    """(N, T, F) codes of the SAE on the contexts (only `latents`' columns when given), on CPU, float32.
    Special tokens are masked as in training; temporal variants read doc_start and position."""
    device = next(sae.parameters()).device
    parts = []
    for a in range(0, contexts.n, batch_size):
        s = slice(a, a + batch_size)
        out = sae(contexts.acts_NTD[s].to(device), (~contexts.special_NT[s]).to(device),
                  contexts.doc_start_NT[s].to(device), contexts.position_NT[s].to(device))
        f = out.features if latents is None else out.features[..., latents.to(device)]
        parts.append(f.float().cpu())
    return torch.cat(parts)


@dataclass
class LatentStats:
    """Per-latent firing on the selection data."""

    forget_freq_F: torch.Tensor
    retain_freq_F: torch.Tensor
    scale_F: torch.Tensor
    """Mean value where active, over forget and retain selection tokens together (0 if never active)."""
    n_forget: int
    n_retain: int

    @property
    def alive_F(self) -> torch.Tensor:
        return (self.forget_freq_F > 0) | (self.retain_freq_F > 0)


def latent_stats(features_NTF: torch.Tensor, forget_NT: torch.Tensor, retain_NT: torch.Tensor) -> LatentStats:
    """Firing frequencies of every latent on forget and retain tokens, and its mean active value."""
    active = features_NTF > 0
    n_f, n_r = int(forget_NT.sum()), int(retain_NT.sum())
    forget_count = active[forget_NT].sum(0).double()
    retain_count = active[retain_NT].sum(0).double()
    both = forget_NT | retain_NT
    value_sum = (features_NTF * active)[both].sum(0).double()
    count = active[both].sum(0).double()
    return LatentStats(forget_count / max(n_f, 1), retain_count / max(n_r, 1),
                       torch.where(count > 0, value_sum / count.clamp_min(1), 0.0).float(), n_f, n_r)


def select_latents(stats: LatentStats, retain_threshold: float, n: int) -> list[int]:
    """The top `n` eligible latents (p_r ≤ threshold, p_f > 0) by p_f / (p_r + 1/n_r), ties to the
    larger p_f, then the lower index (see the module docstring); fewer if fewer are eligible."""
    pf, pr = stats.forget_freq_F.tolist(), stats.retain_freq_F.tolist()
    eps = 1.0 / max(stats.n_retain, 1)
    eligible = [i for i in range(len(pf)) if pr[i] <= retain_threshold and pf[i] > 0]
    return sorted(eligible, key=lambda i: (-pf[i] / (pr[i] + eps), -pf[i], i))[:n]


def random_latents(stats: LatentStats, retain_threshold: float, seed: int) -> list[int]:
    """The control's order of latents: a seeded permutation of the alive latents with p_r ≤ threshold
    (a point takes as many from its front as the ranked selection used)."""
    pool = ((stats.retain_freq_F <= retain_threshold) & stats.alive_F).nonzero().squeeze(-1)
    g = torch.Generator().manual_seed(derive_seed(seed, "unlearning-control", float(retain_threshold)) % 2**63)
    return pool[torch.randperm(len(pool), generator=g)].tolist()


def clamp_edit(features_NTk: torch.Tensor, special_NT: torch.Tensor, values_k: torch.Tensor, W_dec_kD: torch.Tensor,
               scaling_factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta_NTD, changed_N): the raw-unit edit that sets each of k latents to `values_k` wherever it is
    active (> 0) at a non-special token, x' = x + Σ_i (a'_i − a_i) W_dec[i] / s, and which contexts it changes."""
    active = (features_NTk > 0) & ~special_NT[..., None]
    diff = torch.where(active, values_k.to(features_NTk) - features_NTk, torch.zeros_like(features_NTk))
    delta = (diff @ W_dec_kD.to(diff)) / scaling_factor
    return delta, active.flatten(1).any(-1)


# ------------------------------------------------------------------------------------------------
# Sweep and score
# ------------------------------------------------------------------------------------------------
def sweep_points(settings: UnlearningConfig) -> list[tuple[float, int, float]]:
    """(retain_threshold, n_latents, multiplier) of every sweep point, in that nesting order."""
    return [(t, n, m) for t in settings.retain_thresholds for n in settings.n_latents for m in settings.multipliers]


def score(rows: list[dict[str, Any]], max_retain_increase: float) -> tuple[float, int | None]:
    """(score, index of the point achieving it): the largest `forget_effect` among rows whose
    `retain_cost` ≤ max_retain_increase, at least 0; None when no admissible row has a positive effect
    (ties: the first in sweep order)."""
    best, where = 0.0, None
    for i, r in enumerate(rows):
        if r["retain_cost"] <= max_retain_increase and r["forget_effect"] > best:
            best, where = r["forget_effect"], i
    return best, where


def _sweep(data: UnlearningData, sae: SAE, stats: LatentStats, order: Callable[[float, int], list[int]],
           cache: dict[tuple, dict[str, float]], test_features: dict[int, torch.Tensor]) -> list[dict[str, Any]]:
    """One row per sweep point: the latents `order(threshold, n)` clamped at each multiplier."""
    s = float(sae.cfg.activation_scaling_factor)
    rows = []
    for t, n, m in sweep_points(data.settings):
        latents = order(t, n)
        key = (tuple(latents), m)
        if key not in cache:
            if latents:
                idx = torch.tensor(latents)
                feats = torch.stack([test_features[i] for i in latents], -1)
                delta, changed = clamp_edit(feats, data.test.special_NT, -m * stats.scale_F[idx], sae.W_dec.detach()[idx].cpu(), s)
                cache[key] = data.measure(delta, changed)
            else:
                cache[key] = dict(data.clean)
        rows.append(_row(data, t, n, m, latents, cache[key]))
    return rows


def _row(data: UnlearningData, t: float, n: int, m: float, latents: list[int], values: dict[str, float]) -> dict[str, Any]:
    row: dict[str, Any] = {"retain_threshold": t, "n_latents_requested": n, "n_latents": len(latents), "multiplier": m}
    if data.kind == LANGUAGE_MODEL:
        cf, cr = data.clean["forget"], data.clean["retain"]
        row.update({"forget_ce": values["forget"], "retain_ce": values["retain"],
                    "forget_ce_increase": values["forget"] - cf, "forget_ce_increase_relative": (values["forget"] - cf) / cf,
                    "retain_ce_increase_relative": (values["retain"] - cr) / cr})
        row["forget_effect"], row["retain_cost"] = row["forget_ce_increase"], row["retain_ce_increase_relative"]
    else:
        row.update({"forget_damage": values["forget"], "retain_damage": values["retain"]})
        row["forget_effect"], row["retain_cost"] = values["forget"], values["retain"]
    row["admissible"] = row["retain_cost"] <= data.settings.max_retain_increase
    row["latents"] = latents
    return row


def _summary(data: UnlearningData, rows: list[dict[str, Any]], prefix: str = "") -> dict[str, Any]:
    best, where = score(rows, data.settings.max_retain_increase)
    out = {f"{prefix}unlearning_score": best}
    if data.kind == LANGUAGE_MODEL:
        out[f"{prefix}unlearning_score_relative"] = best / data.clean["forget"]
    if not prefix:
        point = rows[where] if where is not None else None
        out.update({"best_point": where, "n_admissible_points": sum(r["admissible"] for r in rows),
                    "best_retain_threshold": point and point["retain_threshold"],
                    "best_n_latents": point and point["n_latents"], "best_multiplier": point and point["multiplier"],
                    "best_retain_cost": point and point["retain_cost"]})
    return out


def skipped_reason(sae: SAE) -> str | None:
    """Why the clamp cannot be applied to this SAE (None: it can)."""
    if type(sae).causal_reconstruction is not SAE.causal_reconstruction:
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
