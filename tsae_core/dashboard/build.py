"""Write a run's feature dashboard: `runs/<run>/dashboard/` (see `tsae_core.dashboard`)."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from tsae_core.dashboard import observe as ob
from tsae_core.dashboard import pages as pg
from tsae_core.dashboard.rating import KEY_FILE, make_key, make_pairs
from tsae_core.io import provenance, read_json, write_json, write_text
from tsae_core.metric_table import value
from tsae_core.progress import tqdm
from tsae_core.seeds import derive_seed

MANIFEST = "manifest.json"
NEIGHBOURS = 6


def dashboard_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "dashboard"


def choose_baseline(evals: dict[str, dict[str, Any]], wanted: str = "") -> str:
    """`wanted`, or the token-wise baseline most SAEs compare against (`find_baselines`), or the first SAE."""
    from tsae_core.comparison import find_baselines

    if wanted:
        if wanted not in evals:
            raise ValueError(f"dashboard.baseline: {wanted!r} is not a trained SAE of this run; SAEs: {', '.join(evals)}")
        return wanted
    chosen = Counter(b for b in find_baselines(evals).values() if b is not None).most_common(1)
    group = chosen[0][0] if chosen else next(iter(evals))
    return next((n for n, e in evals.items() if n == group or e.get("variant") == group), next(iter(evals)))


def unembedding(model: Any) -> torch.Tensor | None:
    """(d_model, vocab) of a transformer-lens model (HookedTransformer or TransformerBridge), else None."""
    for get in (lambda m: m.W_U, lambda m: m.unembed.W_U):
        try:
            W = get(model)
        except (AttributeError, RuntimeError, NotImplementedError):
            continue
        if isinstance(W, torch.Tensor) and W.ndim == 2:
            return W.detach()
    return None


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


class _Run:
    """What the pages read of a run: SAEs, their per-latent arrays, evals and clusterings."""

    def __init__(self, cfg: Any) -> None:
        from tsae_core.device import resolve_device
        from tsae_core.evals.core import latents_path
        from tsae_core.loading import load_sae
        from tsae_core.sae import recorded_weights_sha256
        from tsae_core.store import ActivationStore
        from tsae_core.train import trained_instances

        self.cfg = cfg
        run = cfg.run_dir
        self.names = [i.name for i in trained_instances(cfg, run, cfg.compared_instances())]
        if not self.names:
            raise ValueError("no trained SAE to show; run the train stage first")
        device = resolve_device(cfg.run.device)
        self.store = ActivationStore.open(run / "activations")
        self.saes = {n: load_sae(run / "saes" / n, device=device) for n in self.names}
        self.weights = {n: recorded_weights_sha256(run / "saes" / n) for n in self.names}
        self.latents = {n: load_file(str(latents_path(run, n))) for n in self.names}
        self.evals = {n: read_json(run / "eval" / f"{n}.json") for n in self.names}
        self.clusters = {}
        for n in self.names:
            path = run / "analysis" / f"clusters_{n}.json"
            c = read_json(path) if path.is_file() else None
            labels = np.full(self.saes[n].cfg.d_sae, -1)
            if c is not None:
                labels[np.asarray(c["alive_idx"], dtype=np.int64)] = c["labels"]
            self.clusters[n] = labels
        self.dirs = {n: ob.unit_rows(s.decoder_directions()) for n, s in self.saes.items()}


def build_dashboard(cfg: Any, progress: bool = True) -> dict[str, Any]:
    """Gather every SAE's feature data, write the pages into a fresh folder and swap it in whole, then
    the blind-rating key. Returns the manifest."""
    from tsae_core.evals.core import eval_batches
    from tsae_core.sources.factory import load_model, load_tokenizer

    dc, seed = cfg.dashboard, cfg.run.seed
    r = _Run(cfg)
    baseline = choose_baseline(r.evals, dc.baseline)
    samples = {n: ob.sample_alive(r.latents[n]["alive"].numpy(), dc.n_features, derive_seed(seed, "dashboard", n)) for n in r.names}
    concepts = [{"latent": c, "matches": {n: (c, 1.0) if n == baseline else ob.closest(r.dirs[baseline], r.dirs[n], c, r.latents[n]["alive"])
                                          for n in r.names}} for c in samples[baseline][: dc.n_concepts]]
    page_latents = {n: list(dict.fromkeys(samples[n] + [c["matches"][n][0] for c in concepts])) for n in r.names}
    tokenizer = load_tokenizer(cfg)
    truth = r.store.ground_truth()
    model = load_model(cfg)  # None for synthetic data
    W_U = unembedding(model) if model is not None else None
    features: dict[str, dict[int, dict[str, Any]]] = {}
    observed: dict[str, ob.Observed] = {}
    for n in tqdm(r.names, desc="dashboard", disable=not progress):
        obs = ob.observe_sae(r.saes[n], eval_batches(r.store, cfg, max_sequences=dc.max_sequences), page_latents[n],
                             dc.max_lag, derive_seed(seed, "dashboard-temporal", n))
        observed[n] = obs
        features[n] = {lat: _feature(r, n, obs, j, lat, tokenizer, W_U, truth, page_latents)
                       for j, lat in enumerate(page_latents[n])}

    pages = {n: set(page_latents[n]) for n in r.names}
    pairs = make_pairs(baseline, samples, dc.rating_pairs, derive_seed(seed, "blind-rating"))
    key = make_key(cfg.run.name, baseline, pairs, r.weights)
    out = dashboard_dir(cfg.run_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for n in r.names:
        for lat, f in features[n].items():
            write_text(tmp / n / f"{lat}.html", pg.feature_page(n, f, pages, cfg.run.name))
        write_text(tmp / n / "index.html", pg.sae_index(n, _index_rows(r, n, observed[n]), pages[n], _summary(r, n), cfg.run.name))
    write_text(tmp / "concepts.html", pg.concepts_page(cfg.run.name, baseline, [baseline] + [n for n in r.names if n != baseline],
                                                       concepts, features, pages))
    items = [{"id": p["id"], "number": p["number"], **{s: _blind(features[p[s]["sae"]][p[s]["latent"]]) for s in ("A", "B")}}
             for p in pairs]
    write_text(tmp / "rate.html", pg.rating_page(cfg.run.name, key["set"], items))
    write_text(tmp / "index.html", pg.run_index(cfg.run.name, _source(cfg), [_overview(r, n, observed[n]) for n in r.names],
                                                baseline, len(pairs)))
    manifest = {"baseline": baseline, "rating_set": key["set"], "saes": {n: {"sae_weights_sha256": r.weights[n],
                                                                           "pages": sorted(page_latents[n])} for n in r.names}}
    write_json(tmp / MANIFEST, manifest, stamp=provenance(cfg.hash()))
    write_json(cfg.run_dir / "analysis" / KEY_FILE, key, stamp=provenance(cfg.hash()))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def _feature(r: _Run, n: str, obs: ob.Observed, j: int, latent: int, tokenizer: Any, W_U: torch.Tensor | None,
             truth: Any, page_latents: dict[str, list[int]]) -> dict[str, Any]:
    dc = r.cfg.dashboard
    acts_BT = obs.acts_BTS[..., j]
    lat = r.latents[n]
    truth_info, g = None, None
    if truth is not None:
        cos_G = ob.unit_rows(truth.directions_GD) @ r.dirs[n][latent]
        g = int(cos_G.argmax())
        truth_info = {"feature": g, "kind": truth.kinds[g], "cosine": float(cos_G[g]),
                      "matched": bool(cos_G[g] >= r.cfg.eval.recovery_threshold)}

    def ctx(b: int, t: int) -> dict[str, Any]:
        return ob.context(obs, j, ob.window(obs.doc_BT, b, t, dc.context_before, dc.context_after), tokenizer, g)

    rng = np.random.default_rng(derive_seed(r.cfg.run.seed, "dashboard-samples", n, latent))
    quantiles = ob.quantile_windows(acts_BT, obs.mask_BT, dc.quantile_bins, dc.samples_per_bin, rng)
    return {
        "latent": latent,
        "cluster": int(r.clusters[n][latent]) if r.clusters[n][latent] >= 0 else None,
        "frequency": _finite(obs.index["frequency"][latent]),
        "lag1": _finite(obs.index["lag1"][latent]),
        "lag1_control": _finite(obs.index["lag1_control"][latent]),
        "run_ratio": _finite(obs.index["run_ratio"][latent]),
        "run_ratio_control": _finite(obs.index["run_ratio_control"][latent]),
        "position_dependence": _finite(lat["position_dependence"][latent]),
        "position_dependence_control": _finite(lat["position_dependence_control"][latent]),
        "redundancy": _finite(lat["redundancy"][latent]),
        "redundancy_control": _finite(lat["redundancy_control"][latent]),
        "redundancy_partner": int(lat["redundancy_partner"][latent]),
        "redundancy_lag": int(lat["redundancy_lag"][latent]),
        "max_decoder_cos": _finite(lat["max_decoder_cos"][latent]),
        "max_decoder_cos_partner": int(lat["max_decoder_cos_partner"][latent]),
        "top": [ctx(b, t) for b, t in ob.top_windows(acts_BT, obs.mask_BT, dc.top_contexts)],
        "quantiles": [{"lo": q["lo"], "hi": q["hi"], "contexts": [ctx(b, t) for b, t in q["positions"]]} for q in quantiles],
        "histogram": ob.histogram(acts_BT, obs.mask_BT),
        "autocorr": {k: [_finite(v) for v in a[latent]] for k, a in obs.autocorr.items()},
        "runs": ob.run_length_profile(ob.run_lengths(acts_BT, obs.mask_BT, obs.doc_start_BT), float(obs.index["frequency"][latent])),
        "position": obs.position_SP[j].tolist(),
        "neighbours": ob.nearest(r.dirs[n], latent, NEIGHBOURS),
        "others": {o: ob.closest(r.dirs[n], r.dirs[o], latent, r.latents[o]["alive"]) for o in r.names if o != n},
        "logits": ob.logit_effects(r.saes[n].decoder_directions()[latent].detach().cpu(), W_U.cpu(), 10, tokenizer)
        if W_U is not None and W_U.shape[0] == r.dirs[n].shape[1] and tokenizer is not None else None,
        "truth": truth_info,
    }


def _blind(f: dict[str, Any]) -> dict[str, Any]:
    """What the rating page shows of a feature: contexts only (no SAE, latent or statistic)."""
    samples = [c for q in f["quantiles"][:-1] for c in q["contexts"][:1]]  # one from each bin below the top one
    return {"top": f["top"][:5], "samples": samples}


def _index_rows(r: _Run, n: str, obs: ob.Observed) -> list[dict[str, Any]]:
    lat = r.latents[n]
    alive = np.flatnonzero(lat["alive"].numpy())
    return [{"latent": int(i), "cluster": int(r.clusters[n][i]) if r.clusters[n][i] >= 0 else None,
             "frequency": _finite(obs.index["frequency"][i]), "lag1": _finite(obs.index["lag1"][i]),
             "lag1_control": _finite(obs.index["lag1_control"][i]), "run_ratio": _finite(obs.index["run_ratio"][i]),
             "position_dependence": _finite(lat["position_dependence"][i]),
             "position_dependence_control": _finite(lat["position_dependence_control"][i]),
             "redundancy": _finite(lat["redundancy"][i]), "max_decoder_cos": _finite(lat["max_decoder_cos"][i])} for i in alive]


def _metrics(r: _Run, n: str) -> dict[str, Any]:
    e = r.evals[n]
    return {"ev": value(e, "explained_variance"), "l0": value(e, "l0_sparse"), "healthy": bool((e.get("health") or {}).get("healthy"))}


def _overview(r: _Run, n: str, obs: ob.Observed) -> dict[str, Any]:
    """The run index's row: the eval's own numbers (the whole eval split, as in the figures)."""
    e = r.evals[n]
    return {"name": n, **_metrics(r, n), "alive": int(r.latents[n]["alive"].sum()), "pages": len(obs.pages),
            "lag1": value(e, "autocorr_lag1"), "lag1_control": value(e, "autocorr_lag1_doc_shuffled")}


def _summary(r: _Run, n: str) -> str:
    m, alive = _metrics(r, n), int(r.latents[n]["alive"].sum())
    F = r.saes[n].cfg.d_sae
    return (f"{alive} of {F} latents alive on the eval split (dead ones are not listed); explained variance "
            f"{pg.fmt(m['ev'])}, L0 {pg.fmt(m['l0'], 1)}; {'healthy' if m['healthy'] else 'UNHEALTHY'}. Firing rate, lag-1 "
            f"and run length below are measured on the first {r.cfg.dashboard.max_sequences} eval sequences "
            f"(dashboard.max_sequences); position η² and redundancy come from the evaluation.")


def _source(cfg: Any) -> str:
    kind = cfg.source.kind
    what = {"synthetic": "synthetic sequences with known true features", "tinylm": "the tiny byte-level model"}.get(kind, kind)
    return f"Source: {what}, hook {cfg.source.hook_name}; eval split, at most {cfg.dashboard.max_sequences} sequences."
