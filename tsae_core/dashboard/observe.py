"""What the dashboard shows of one SAE, read from the eval split in one pass.

For every latent (the index pages): firing rate, the lag-1 autocorrelation and the ratio of its mean
run length to an i.i.d. latent of the same rate (with their shuffled controls, `TemporalMetrics`),
and, from the evaluate stage's latents file, position dependence, cross-position redundancy and the
largest decoder cosine; the cluster from the cluster stage.

For each latent that gets a page, its activation on every evaluated token is kept, and from it:
- the top-activating contexts (at most one per sequence, the sequence's maximum);
- samples from quantile bins of its non-zero activations (seeded, so reruns show the same ones);
- the histogram of its non-zero activations;
- its autocorrelation at lags 1..K beside both controls of `TemporalMetrics` (tokens shuffled within
  the sequence; within the document);
- the distribution of its run lengths (consecutive firing tokens of one document) beside the
  geometric distribution an i.i.d. latent of the same rate would give, P(L = l) = p^(l−1)(1 − p);
- its position profile (mean activation per bin of position in the document, `PositionProfile`).

A context is the window of `before` tokens before and `after` after the marked token, cut at the
edges of its document, with the token strings (`token_strings`) and the latent's activation on each;
on a synthetic source, with no tokens, the window carries the positions and the activation of the
true feature the latent matches, scaled to the latent's peak in the window (its shape is what counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tsae_core.evals.cluster.run import POSITION_BINS, PositionProfile
from tsae_core.metrics.temporal import TemporalMetrics
from tsae_core.top_contexts import document_ids, token_strings

HISTOGRAM_BINS = 30
MAX_RUN = 12
"""Run lengths shown one by one; longer runs are pooled in the last bar (≥ MAX_RUN)."""


@dataclass
class Window:
    """Where a context sits: sequence b, marked position t, and the slice [lo, hi) of its sequence."""

    b: int
    t: int
    lo: int
    hi: int


@dataclass
class Observed:
    """One SAE's observations: per-latent statistics (F) and the kept activations of the page latents."""

    n_latents: int
    index: dict[str, np.ndarray]
    """Per-latent arrays (F,) for the index: frequency, lag1, lag1_control, run_ratio, run_ratio_control."""
    autocorr: dict[str, np.ndarray]
    """(F, K) autocorrelation by lag: data, control (sequence-shuffled), doc_shuffled."""
    pages: list[int]
    acts_BTS: torch.Tensor
    """Activation of each page latent (columns in `pages` order) on every kept token; 0 at special tokens."""
    position_SP: np.ndarray
    tokens_BT: torch.Tensor | None
    true_codes_BTG: torch.Tensor | None
    mask_BT: torch.Tensor
    doc_BT: torch.Tensor
    doc_start_BT: torch.Tensor


@torch.no_grad()
def observe_sae(sae: Any, batches: Any, pages: list[int], max_lag: int, seed: int) -> Observed:
    """Encode `batches` (eval `SequenceBatch`es) with `sae` and keep what the pages and the index need."""
    device = next(sae.parameters()).device
    F = sae.cfg.d_sae
    columns = torch.as_tensor(pages, dtype=torch.long)
    temporal: TemporalMetrics | None = None
    position: PositionProfile | None = None
    kept: dict[str, list[torch.Tensor]] = {"acts": [], "tokens": [], "truth": [], "mask": [], "doc_start": []}
    for batch in batches:
        T = batch.acts_BTD.shape[1]
        if temporal is None:
            temporal = TemporalMetrics(F, max_lag=max(1, min(max_lag, T - 1)), seed=seed)
            position = PositionProfile(len(pages), n_bins=POSITION_BINS, max_position=T)
        b = batch.to(device)
        features_BTF = sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT).features.float().cpu()
        temporal.update(features_BTF, batch.doc_start_BT, batch.mask_BT)
        page_BTS = features_BTF[..., columns] * batch.mask_BT[..., None]
        position.update(page_BTS, batch.position_BT, batch.mask_BT)
        kept["acts"].append(page_BTS)
        kept["mask"].append(batch.mask_BT.cpu())
        kept["doc_start"].append(batch.doc_start_BT.cpu())
        if batch.tokens_BT is not None:
            kept["tokens"].append(batch.tokens_BT.cpu())
        if batch.true_codes_BTG is not None:
            kept["truth"].append(batch.true_codes_BTG.float().cpu())
    if temporal is None:
        raise ValueError("the eval split gave no sequences to show; harvest with harvest.n_eval_sequences > 0")
    per = temporal.result(alive_only=False)["per_latent"]
    mask_BT, doc_start_BT = torch.cat(kept["mask"]), torch.cat(kept["doc_start"])
    lag1 = np.asarray(per["autocorr_lag_FK"], dtype=np.float64)
    return Observed(
        n_latents=F,
        index={
            "frequency": np.asarray(per["frequency_F"], dtype=np.float64),
            "lag1": lag1[:, 0],
            "lag1_control": np.asarray(per["autocorr_lag_FK_doc_shuffled"], dtype=np.float64)[:, 0],
            "run_ratio": np.asarray(per["run_length_ratio_F"], dtype=np.float64),
            "run_ratio_control": np.asarray(per["run_length_ratio_F_doc_shuffled"], dtype=np.float64),
        },
        autocorr={"data": lag1, "control": np.asarray(per["autocorr_lag_FK_control"], dtype=np.float64),
                  "doc_shuffled": np.asarray(per["autocorr_lag_FK_doc_shuffled"], dtype=np.float64)},
        pages=list(pages),
        acts_BTS=torch.cat(kept["acts"]),
        position_SP=position.result(),
        tokens_BT=torch.cat(kept["tokens"]) if kept["tokens"] else None,
        true_codes_BTG=torch.cat(kept["truth"]) if kept["truth"] else None,
        mask_BT=mask_BT,
        doc_BT=document_ids(doc_start_BT, ~mask_BT),
        doc_start_BT=doc_start_BT,
    )


def top_windows(acts_BT: torch.Tensor, mask_BT: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """(sequence, position) of the n largest activations, at most one per sequence (its maximum),
    strongest first; only where the latent fired."""
    best_B, pos_B = acts_BT.masked_fill(~mask_BT, -torch.inf).max(1)
    order = torch.argsort(best_B, descending=True, stable=True)[:n]
    return [(int(b), int(pos_B[b])) for b in order if best_B[b] > 0]


def quantile_windows(acts_BT: torch.Tensor, mask_BT: torch.Tensor, n_bins: int, per_bin: int,
                     rng: np.random.Generator) -> list[dict[str, Any]]:
    """[{"lo", "hi", "positions": [(b, t), ...]}]: bins of the non-zero activations between quantiles
    i/n_bins and (i+1)/n_bins, each with up to `per_bin` tokens drawn at random from it."""
    fired = (acts_BT > 0) & mask_BT
    where = fired.nonzero()
    if len(where) == 0 or per_bin == 0:
        return []
    values = acts_BT[fired].numpy().astype(np.float64)
    edges = np.quantile(values, np.linspace(0, 1, n_bins + 1))
    out = []
    for i in range(n_bins):
        lo, hi = edges[i], edges[i + 1]
        inside = np.flatnonzero((values >= lo) & ((values <= hi) if i == n_bins - 1 else (values < hi)))
        picks = rng.choice(inside, size=min(per_bin, len(inside)), replace=False) if len(inside) else []
        out.append({"lo": float(lo), "hi": float(hi),
                    "positions": [(int(where[j, 0]), int(where[j, 1])) for j in sorted(picks, key=lambda j: -values[j])]})
    return out


def window(doc_BT: torch.Tensor, b: int, t: int, before: int, after: int) -> Window:
    """The slice around (b, t) cut at the edges of the marked token's document."""
    doc = doc_BT[b]
    lo, hi = max(0, t - before), min(len(doc), t + after + 1)
    same = (doc[lo:hi] == doc[t]).nonzero().squeeze(1)
    return Window(b, t, lo + int(same[0]), lo + int(same[-1]) + 1)


def context(obs: Observed, column: int, w: Window, tokenizer: Any = None, truth_g: int | None = None) -> dict[str, Any]:
    """A context's contents: the marked activation and index, the token strings (or positions) and
    the latent's activations along the window (and the matched true feature's, on synthetic data)."""
    acts = obs.acts_BTS[w.b, w.lo:w.hi, column]
    out: dict[str, Any] = {
        "activation": float(obs.acts_BTS[w.b, w.t, column]),
        "marked": w.t - w.lo,
        "activations": [round(float(a), 4) for a in acts],
        "special": (~obs.mask_BT[w.b, w.lo:w.hi]).tolist(),
    }
    if obs.tokens_BT is not None:
        ids = obs.tokens_BT[w.b, w.lo:w.hi].tolist()
        out["tokens"] = token_strings(tokenizer, ids) if tokenizer is not None else [str(i) for i in ids]
    else:
        out["positions"] = list(range(w.lo, w.hi))
    if truth_g is not None and obs.true_codes_BTG is not None:
        true = obs.true_codes_BTG[w.b, w.lo:w.hi, truth_g]
        scale = float(acts.max()) / float(true.abs().max()) if float(true.abs().max()) > 0 and float(acts.max()) > 0 else 1.0
        out["truth"] = [round(float(a) * scale, 4) for a in true]  # scaled to the latent's peak in the window
    return out


def histogram(acts_BT: torch.Tensor, mask_BT: torch.Tensor, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Counts of the non-zero activations in `bins` equal bins from 0 to the maximum, and the number
    of evaluated tokens where the latent is 0."""
    values = acts_BT[mask_BT].numpy().astype(np.float64)
    fired = values[values > 0]
    top = float(fired.max()) if fired.size else 1.0
    counts, edges = np.histogram(fired, bins=bins, range=(0.0, top))
    return {"counts": counts.tolist(), "edges": edges.tolist(), "n_zero": int((values <= 0).sum()), "n_tokens": int(values.size)}


def run_lengths(acts_BT: torch.Tensor, mask_BT: torch.Tensor, doc_start_BT: torch.Tensor) -> np.ndarray:
    """Lengths of the latent's runs: consecutive firing tokens of one document (a document start or a
    special token ends a run)."""
    fire = ((acts_BT > 0) & mask_BT).numpy()
    starts = fire.copy()
    starts[:, 1:] &= ~fire[:, :-1] | doc_start_BT[:, 1:].numpy().astype(bool)
    run_id = np.cumsum(starts.reshape(-1)) - 1
    return np.bincount(run_id[fire.reshape(-1)]) if fire.any() else np.zeros(0, dtype=np.int64)


def run_length_profile(lengths: np.ndarray, rate: float, max_run: int = MAX_RUN) -> dict[str, Any]:
    """Share of runs of length 1..max_run−1 and ≥ max_run, beside the geometric law of an i.i.d.
    latent firing at `rate`: P(L = l) = rate^(l−1)(1 − rate), P(L ≥ m) = rate^(m−1)."""
    ls = np.arange(1, max_run + 1)
    if lengths.size:
        share = np.array([np.mean(lengths == l) for l in ls[:-1]] + [np.mean(lengths >= max_run)])
    else:
        share = np.zeros(max_run)
    p = min(max(rate, 0.0), 1.0 - 1e-12)
    iid = np.array([p ** (l - 1) * (1 - p) for l in ls[:-1]] + [p ** (max_run - 1)])
    return {"lengths": ls.tolist(), "share": share.tolist(), "iid_share": iid.tolist(), "n_runs": int(lengths.size),
            "mean": float(lengths.mean()) if lengths.size else None, "iid_mean": 1.0 / (1.0 - p)}


def sample_alive(alive_F: np.ndarray, n: int, seed: int) -> list[int]:
    """A seeded random sample of n alive latents (all of them when fewer), in random order."""
    alive = np.flatnonzero(alive_F)
    rng = np.random.default_rng(seed)
    return rng.permutation(alive)[:n].tolist()


def unit_rows(W_FD: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(W_FD.detach().float().cpu(), dim=1)


def nearest(dirs_FD: torch.Tensor, latent: int, n: int) -> list[tuple[int, float]]:
    """The n latents of the same SAE whose decoder directions are closest to `latent`'s (cosine)."""
    cos_F = dirs_FD @ dirs_FD[latent]
    cos_F[latent] = -torch.inf
    values, idx = cos_F.topk(min(n, len(cos_F) - 1))
    return [(int(i), float(v)) for i, v in zip(idx, values)]


def closest(dirs_FD: torch.Tensor, other_GD: torch.Tensor, latent: int, alive_G: torch.Tensor | None = None) -> tuple[int, float]:
    """The latent of another SAE (rows of `other_GD`; among its alive ones, given `alive_G`) closest
    in decoder direction, and the cosine."""
    cos_G = other_GD @ dirs_FD[latent]
    if alive_G is not None and bool(alive_G.any()):
        cos_G = cos_G.masked_fill(~alive_G.bool(), -torch.inf)
    g = int(cos_G.argmax())
    return g, float(cos_G[g])


def logit_effects(direction_D: torch.Tensor, W_U_DV: torch.Tensor, n: int, tokenizer: Any) -> dict[str, list]:
    """The tokens whose logits the unit decoder direction raises and lowers most through the
    unembedding alone (the direct path; the final normalisation's scale is left out)."""
    logits_V = (direction_D.float() / direction_D.norm().clamp_min(1e-12)) @ W_U_DV.float()
    out = {}
    for side, values in (("up", logits_V.topk(n)), ("down", (-logits_V).topk(n))):
        ids = values.indices.tolist()
        out[side] = [(s, round(float(logits_V[i]), 3)) for s, i in zip(token_strings(tokenizer, ids), ids)]
    return out
