# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Evaluate
#
# **In:** the trained SAEs and the held-out evaluation split.
# **Out:** `runs/<run>/eval/<variant>.json`: SAEBench-core metrics (reconstruction quality,
# shrinkage, sparsity, token counts), temporal statistics with shuffled-position controls (within
# each sequence, and the stricter within each document), position dependence and reconstruction
# error by position, cross-position redundancy (latent i at t against latent j at t+δ), decoder
# geometry (max cosine per latent, group condition numbers), the ground-truth recovery by feature
# kind (synthetic source) and a health verdict; the per-latent numbers behind the feature-level
# summaries in `runs/<run>/analysis/<variant>_latents.safetensors`; sparse probing and the unlearning
# analogue in `runs/<run>/eval/sparse_probing/<variant>.json` and `runs/<run>/eval/unlearning/<variant>.json`
# (SAEBench's layouts and schemas).
#
# All metrics exclude special tokens and accumulate in float64. Explained variance is
# 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the mean over all evaluated tokens. With a language-model
# source the SAE is also spliced into the model at the hook (special positions keep x) and
# compared with the clean and the zero-ablated model: `ce_loss_score` = (CE_abl − CE_sae) /
# (CE_abl − CE_clean), `kl_div_score` = (KL_abl − KL_sae) / KL_abl.

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))
force = False  # re-evaluate every SAE, even those whose evaluation is up to date (`tsae run --force`)

# %%
import pandas as pd

from tsae_core import ActivationStore, load_config
from tsae_core.evals.core import evaluate_variant, summary_table
from tsae_core.sources.factory import load_model
from tsae_core.train import trained_instances

cfg = load_config(params, overrides)
store = ActivationStore.open(cfg.run_dir / "activations")
model = load_model(cfg)  # the language model behind the activations (None for synthetic data)
# an SAE whose weights, data, settings and code are those of its eval JSON keeps that evaluation
results = {inst.name: evaluate_variant(cfg, inst.name, store, cfg.run_dir, model=model, force=force)
           for inst in trained_instances(cfg, cfg.run_dir)}  # a failed training has no SAE to evaluate

# %% [markdown]
# ## Summary
# MMCS: mean over true features of the best cosine similarity with a decoder row; "recovered":
# the fraction of true features with a decoder row at cosine ≥ `eval.recovery_threshold`.

# %%
from IPython.display import display

# mean (± std over seeds) per variant, one column each; the metrics down the side
display(pd.DataFrame(summary_table(results)).set_index("variant").T)

# %%
unhealthy = {name: r["health"]["problems"] for name, r in results.items() if not r["health"]["healthy"]}
print("all SAEs healthy" if not unhealthy else f"UNHEALTHY SAEs: {unhealthy}")

# %% [markdown]
# ## Sparse probing
# SAEBench's protocol on labelled contexts the source can give offline: the tiny model's corpus
# (pydoc topic vs docstring, the stdlib package a docstring comes from, code vs prose) or, on the
# synthetic source, whether a slow true feature is on in a context (`probing.hub` adds hub datasets).
# Each class is a balanced one-vs-rest task; a context's code is mean-pooled over its non-special
# tokens; the k latents with the largest difference of class means on the probe-train contexts feed a
# logistic regression, scored on probe-test contexts whose documents it never saw. "llm" is the same
# probe on the raw activation's dimensions: the reference an SAE is read against.

# %%
from tsae_core.evals.probing.run import SparseProbingData, evaluate_sparse_probing
from tsae_core.evals.probing.run import summary_rows as probing_rows

probing_data = SparseProbingData(cfg, model=model)  # the labelled sets, built once and only if an SAE needs them
probing = {name: evaluate_sparse_probing(cfg, name, cfg.run_dir, probing_data, force=force) for name in results}
rows = probing_rows(probing)
if any(r["skipped"] is None for r in rows):  # test accuracy, averaged over sets and their classes
    display(pd.DataFrame([r for r in rows if r["skipped"] is None]).drop(columns="skipped").set_index("sae").round(3))
for r in rows:
    if r["skipped"]:
        print(f"{r['sae']}: not probed: {r['skipped']}")

# %% [markdown]
# ## Unlearning (offline analogue of SAEBench's)
# Forget set: the docstrings of the internet-handling stdlib packages; retain set: every other
# docstring (synthetic source: the tokens where a group of slow true features is on, against the rest).
# Latents are chosen on one half of each set by their forget/retain firing ratio among those firing on
# at most a threshold of retain tokens, and clamped to a negative multiple of their mean activation
# wherever they fire, the SAE's error term kept. The score is the largest rise of forget CE (nats) over
# the sweep of thresholds, latent counts and multipliers while retain CE rises at most 1%, measured on
# the other halves; the same sweep with random latents is the control. The crosscoder, whose code reads
# later tokens, is skipped.

# %%
from tsae_core.evals.unlearning.run import evaluate_unlearning_run
from tsae_core.evals.unlearning.run import summary_rows as unlearning_rows

unlearning = evaluate_unlearning_run(cfg, names=list(results), model=model, force=force)
rows = unlearning_rows(unlearning)
if any(r["skipped"] is None for r in rows):
    display(pd.DataFrame([r for r in rows if r["skipped"] is None]).drop(columns=["skipped", "variant"]).set_index("sae").round(4))
for r in rows:
    if r["skipped"]:
        print(f"{r['sae']}: skipped: {r['skipped']}")
