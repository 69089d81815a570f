"""Sparse probing of an SAE's latents (SAEBench's protocol, its `sparse_probing` JSON layout).

For each labelled set (`tsae_core.evals.probing.data`: contexts and binary one-vs-rest tasks) and each task:

  1. pool    z_c = (1/|M_c|) sum_{t in M_c} f_t, over the context's tokens that count (M_c: not BOS,
             not padding), f_t the SAE's code at t (encoded with the context's mask, document starts
             and positions, so temporal encoders read what they read in training);
  2. select  the k latents with the largest |mean(z | positive) - mean(z | negative)| on the task's
             probe-train contexts (ties by index);
  3. probe   scikit-learn's LogisticRegression (L2, C = 1, lbfgs, `probing.max_iter` iterations) on
             those k pooled latents of the probe-train contexts; its accuracy on the probe-test contexts.

`sae_top_{k}_test_accuracy` is that accuracy, `sae_test_accuracy` the same probe on every latent;
`llm_*` are the same probes on the raw activations' dimensions (pooled the same way), computed once
per set, not per SAE. A k larger than the width probed is left out (None). Numbers are averaged
over a set's tasks (`eval_result_details`), then over sets (`eval_result_metrics`); the per-class
numbers and the chosen latents are in `eval_result_unstructured`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsae_core.config import ExperimentConfig
from tsae_core.evals.files import eval_key, kept_evaluation, saebench_identity
from tsae_core.evals.probing.data import BinaryTask, ProbeSet
from tsae_core.io import provenance, write_json

EVAL_TYPE_ID = "sparse_probing"


# ------------------------------------------------------------------------------------------------
# The probe
# ------------------------------------------------------------------------------------------------


def mean_pool(x_NTF: torch.Tensor, mask_NT: torch.Tensor) -> torch.Tensor:
    """(N, F) float32 mean of x over the tokens where mask is True (a context with none gives 0)."""
    m = mask_NT.to(x_NTF.dtype)[..., None]
    return ((x_NTF * m).sum(1) / m.sum(1).clamp(min=1)).float()


def top_k_by_mean_difference(x_NF: torch.Tensor, y_N: torch.Tensor, k: int) -> torch.Tensor:
    """The k columns with the largest |mean over y = 1 - mean over y = 0|, largest first (ties: lower index)."""
    diff_F = (x_NF[y_N == 1].double().mean(0) - x_NF[y_N == 0].double().mean(0)).abs()
    return torch.sort(diff_F, descending=True, stable=True).indices[:k]


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                   max_iter: int) -> tuple[float, bool]:
    """(test accuracy of a logistic regression fitted on the train set, whether its solver converged)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        probe = LogisticRegression(C=1.0, max_iter=max_iter).fit(train_x.numpy(), train_y.numpy())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float((probe.predict(test_x.numpy()) == test_y.numpy()).mean()), converged


def probe_task(pooled_NF: torch.Tensor, task: BinaryTask, k_values: list[int], max_iter: int) -> dict[str, Any]:
    """A task's probes on pooled codes: {"all": acc, k: acc or None (k > width), "top": chosen columns, "unconverged": n}."""
    tr_x, te_x = pooled_NF[task.train_idx], pooled_NF[task.test_idx]
    out: dict[Any, Any] = {}
    out["all"], ok = probe_accuracy(tr_x, task.train_y, te_x, task.test_y, max_iter)
    unconverged = int(not ok)
    width = pooled_NF.shape[1]
    top = top_k_by_mean_difference(tr_x, task.train_y, min(max(k_values), width))
    for k in k_values:
        if k > width:
            out[k] = None
            continue
        out[k], ok = probe_accuracy(tr_x[:, top[:k]], task.train_y, te_x[:, top[:k]], task.test_y, max_iter)
        unconverged += int(not ok)
    out["top"], out["unconverged"] = top.tolist(), unconverged
    return out


def probe_set(pooled_NF: torch.Tensor, probe_set_: ProbeSet, k_values: list[int], max_iter: int,
              prefix: str) -> dict[str, Any]:
    """Every task of a set: {"<prefix>_test_accuracy": {class: acc}, "<prefix>_top_{k}_test_accuracy":
    {class: acc}, "<prefix>_top_latents": {class: columns, best first}, "<prefix>_unconverged_probes": n}."""
    per: dict[str, Any] = {f"{prefix}_test_accuracy": {}, **{f"{prefix}_top_{k}_test_accuracy": {} for k in k_values},
                           f"{prefix}_top_latents": {}, f"{prefix}_unconverged_probes": 0}
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    for task in probe_set_.tasks:
        with threadpool_limits(limits=1):  # problems this small only lose time to BLAS threads
            r = probe_task(pooled_NF, task, k_values, max_iter)
        per[f"{prefix}_test_accuracy"][task.class_name] = r["all"]
        for k in k_values:
            per[f"{prefix}_top_{k}_test_accuracy"][task.class_name] = r[k]
        per[f"{prefix}_top_latents"][task.class_name] = r["top"]
        per[f"{prefix}_unconverged_probes"] += r["unconverged"]
    return per


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals and len(vals) == len(values) else None


def metric_keys(prefix: str, k_values: list[int]) -> list[str]:
    return [f"{prefix}_test_accuracy"] + [f"{prefix}_top_{k}_test_accuracy" for k in k_values]


# ------------------------------------------------------------------------------------------------
# SAE codes
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def sae_pooled(sae: Any, ps: ProbeSet, batch_sequences: int) -> torch.Tensor:
    """(N, F) mean-pooled SAE codes of a set's contexts (module doc, step 1)."""
    device = next(sae.parameters()).device
    pooled = []
    for lo in range(0, ps.n_contexts, batch_sequences):
        sl = slice(lo, lo + batch_sequences)
        mask = ps.mask_NT[sl].to(device)
        out = sae(ps.acts_NTD[sl].to(device), mask, ps.doc_start_NT[sl].to(device), ps.position_NT[sl].to(device))
        pooled.append(mean_pool(out.features.float(), mask).cpu())
    return torch.cat(pooled)


class SparseProbingData:
    """The run's labelled sets as model activations, built on first use (never, when every SAE's
    file is kept), and the raw-activation probes of each set, fitted once and shared by every SAE.

    `sets` maps a set name to its `ProbeSet`; `skipped` a set the source cannot give to the reason."""

    def __init__(self, cfg: ExperimentConfig, model: Any = None, progress: bool = True) -> None:
        self.cfg, self.model, self.progress = cfg, model, progress
        self._sets: dict[str, ProbeSet] | None = None
        self.skipped: dict[str, str] = {}
        self._llm: dict[str, dict[str, Any]] = {}

    @property
    def context_length(self) -> int:
        return self.cfg.probing.context_length or self.cfg.harvest.context_size

    def dataset_names(self) -> list[str]:
        """The sets asked for: `probing.datasets`, or the source's offline sets."""
        from tsae_core.evals.probing.labelled_sets import PYTHON_DOCS_SETS, SYNTHETIC_SETS

        p = self.cfg.probing
        return list(p.datasets) or list(SYNTHETIC_SETS if self.cfg.source.kind == "synthetic" else PYTHON_DOCS_SETS)

    @property
    def sets(self) -> dict[str, ProbeSet]:
        if self._sets is None:
            self._sets = self._build()
        return self._sets

    def _build(self) -> dict[str, ProbeSet]:
        from tsae_core.evals.probing.data import synthetic_probe_set, text_probe_set
        from tsae_core.evals.probing.labelled_sets import PYTHON_DOCS_SETS, SYNTHETIC_SETS, hub_labelled_texts, python_docs_set

        cfg, p, T = self.cfg, self.cfg.probing, self.context_length
        synthetic = cfg.source.kind == "synthetic"
        sets: dict[str, ProbeSet] = {}
        for name in self.dataset_names():
            if synthetic != (name in SYNTHETIC_SETS):
                self.skipped[name] = (f"a {'synthetic set' if name in SYNTHETIC_SETS else 'text set'} cannot be probed on the "
                                      f"{cfg.source.kind} source; list the source's own sets in probing.datasets")
                continue
            try:
                if synthetic:
                    sets[name] = synthetic_probe_set(cfg.source.synthetic, T, cfg.run.seed, p)
                else:
                    texts = (python_docs_set(name, p.chunk_chars or T - 1, p.max_contexts_per_document, p.max_documents)
                             if name in PYTHON_DOCS_SETS else hub_labelled_texts(name, p.hub[name]))
                    model, tokenizer = self._model_and_tokenizer()
                    sets[name] = text_probe_set(texts, model, tokenizer, cfg.source.hook_name, T, p, p.batch_sequences)
            except ValueError as e:
                self.skipped[name] = str(e)
            if self.progress:
                print(f"[tsae] sparse probing: {name}: " + (f"{sets[name].n_contexts} contexts, {len(sets[name].tasks)} tasks"
                                                            if name in sets else f"skipped ({self.skipped[name]})"), flush=True)
        return sets

    def _model_and_tokenizer(self) -> tuple[Any, Any]:
        from tsae_core.sources.factory import load_model, load_tokenizer

        if self.model is None:
            self.model = load_model(self.cfg)
        kind = self.cfg.source.kind
        return self.model, (load_tokenizer(self.cfg) if kind in ("tinylm", "gguf") else self.model.tokenizer)

    def llm_results(self, name: str) -> dict[str, Any]:
        """The raw-activation probes of set `name` (per-class, `probe_set`'s layout with prefix llm)."""
        if name not in self._llm:
            ps, p = self.sets[name], self.cfg.probing
            self._llm[name] = probe_set(mean_pool(ps.acts_NTD, ps.mask_NT), ps, p.k_values, p.max_iter, "llm")
        return self._llm[name]


# ------------------------------------------------------------------------------------------------
# The JSON of one SAE
# ------------------------------------------------------------------------------------------------


def eval_config(cfg: ExperimentConfig, data: SparseProbingData) -> dict[str, Any]:
    """SAEBench's eval_config keys, plus what tsae's offline sets and probes depend on."""
    p = cfg.probing
    return {
        "random_seed": p.seed,
        "dataset_names": list(data.sets),
        "probe_train_set_size": p.train_size,
        "probe_test_set_size": p.test_size,
        "context_length": data.context_length,
        "sae_batch_size": p.batch_sequences,
        "llm_batch_size": p.batch_sequences,
        "model_name": cfg.source.kind if cfg.source.kind == "synthetic" else
        {"tinylm": "tinylm", "hf": cfg.source.hf.model_name, "gguf": cfg.source.gguf.file}[cfg.source.kind],
        "hook_name": None if cfg.source.kind == "synthetic" else cfg.source.hook_name,
        "k_values": list(p.k_values),
        "max_classes": p.max_classes,
        "test_fraction": p.test_fraction,
        "chunk_chars": p.chunk_chars or data.context_length - 1,
        "max_contexts_per_document": p.max_contexts_per_document,
        "probe": f"sklearn LogisticRegression(penalty=l2, C=1, solver=lbfgs, max_iter={p.max_iter}); "
                 "top-k by |mean_pos - mean_neg| on probe-train; mean over non-special tokens",
        "skipped_datasets": dict(data.skipped),
        "datasets": {name: ps.info for name, ps in data.sets.items()},
    }


def sparse_probing_result(sae: Any, data: SparseProbingData, cfg: ExperimentConfig) -> dict[str, Any]:
    """The sparse_probing JSON dict of one SAE (without tsae's instance fields and provenance)."""
    p = cfg.probing
    llm_keys, sae_keys = metric_keys("llm", p.k_values), metric_keys("sae", p.k_values)
    details, unstructured, config = [], {}, eval_config(cfg, data)
    for name, ps in data.sets.items():
        try:
            pooled = sae_pooled(sae, ps, p.batch_sequences)
        except (RuntimeError, ValueError, NotImplementedError) as e:  # a variant that cannot encode these contexts
            config["skipped_datasets"][name] = f"this SAE cannot encode its contexts: {type(e).__name__}: {e}"
            config["dataset_names"].remove(name)
            continue
        per = {**data.llm_results(name), **probe_set(pooled, ps, p.k_values, p.max_iter, "sae")}
        details.append({"dataset_name": f"{name}_results", **{k: _mean(list(per[k].values())) for k in llm_keys + sae_keys}})
        unstructured[f"{name}_results"] = per
    averaged = {k: _mean([d[k] for d in details]) for k in llm_keys + sae_keys}
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "eval_config": config,
        "eval_result_metrics": {"llm": {k: averaged[k] for k in llm_keys}, "sae": {k: averaged[k] for k in sae_keys}}
        if details else None,
        "eval_result_details": details,
        "eval_result_unstructured": unstructured,
        "skipped": None if details else "no labelled set could be probed: " + "; ".join(
            f"{n}: {r}" for n, r in config["skipped_datasets"].items()),
        "sae_cfg": dataclasses.asdict(sae.cfg),
    }


def sparse_probing_key(cfg: ExperimentConfig, name: str, run_dir: Path) -> str | None:
    """What an SAE's probing depends on: its weights, its variant, the source, the probing settings,
    the run's seed (the synthetic source's ground truth) and tsae's code (None without weights)."""
    return eval_key(cfg, name, run_dir, ("source", "harvest", "probing"), run_seed=cfg.run.seed)


def sparse_probing_path(run_dir: Path, name: str) -> Path:
    return run_dir / "eval" / EVAL_TYPE_ID / f"{name}.json"


def evaluate_sparse_probing(cfg: ExperimentConfig, name: str, run_dir: Path, data: SparseProbingData | None = None,
                            force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Probe the trained SAE `saes/<name>` and write `eval/sparse_probing/<name>.json`; returns the result.

    A file already on disk for the same weights, variant, source, probing settings and code is kept
    unless `force`. Pass one `SparseProbingData` for all SAEs of a run: the sets and their
    raw-activation probes are then built once. With `probing.enabled: false` nothing is written and
    the returned dict says why (`skipped`)."""
    from tsae_core.device import resolve_device
    from tsae_core.loading import load_sae
    from tsae_core.sae import recorded_weights_sha256

    inst = cfg.instance(name)
    ids = {"variant": inst.variant, "instance": inst.name, "seed": inst.seed}
    if not cfg.probing.enabled:
        return {"eval_type_id": EVAL_TYPE_ID, **ids, "skipped": "probing.enabled is false"}
    key, path = sparse_probing_key(cfg, name, run_dir), sparse_probing_path(run_dir, name)
    kept = None if force else kept_evaluation(path, key)
    if kept is not None:
        if progress:
            print(f"[tsae] {name}: sparse probing kept (same weights, settings and code): {path}", flush=True)
        return kept
    data = data or SparseProbingData(cfg, progress=progress)
    sae = load_sae(run_dir / "saes" / name, device=resolve_device(cfg.run.device)).eval()
    result = {**saebench_identity(sae, name, cfg.run.name), **sparse_probing_result(sae, data, cfg)}
    result.update({**ids, "sweep": cfg.sweep_points().get(inst.variant),
                   "sae_weights_sha256": recorded_weights_sha256(run_dir / "saes" / name), "eval_key": key})
    write_json(path, result, stamp=provenance(cfg.hash()))
    return result


def summary_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per SAE for notebook tables: accuracy with every latent and with the top 1, 2, 5 and
    20, beside the raw-activation probe with as many dimensions (averaged over sets)."""
    rows = []
    for name, r in results.items():
        m = r.get("eval_result_metrics") or {}
        sae, llm = m.get("sae") or {}, m.get("llm") or {}
        row: dict[str, Any] = {"sae": name, "skipped": r.get("skipped")}
        for k, label in (("", "all"), ("_top_1", "top_1"), ("_top_2", "top_2"), ("_top_5", "top_5"), ("_top_20", "top_20")):
            row[f"sae_{label}"], row[f"llm_{label}"] = sae.get(f"sae{k}_test_accuracy"), llm.get(f"llm{k}_test_accuracy")
        rows.append(row)
    return rows
