# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
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
# summaries in `runs/<run>/analysis/<variant>_latents.safetensors`.
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
from tsae_core.evaluate import evaluate_variant, summary_table
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
table = pd.DataFrame(summary_table(results)).set_index("variant")  # mean (± std over seeds) per variant
with pd.option_context("display.width", 250, "display.max_columns", None):
    print(table.T.to_string())

# %%
unhealthy = {name: r["health"]["problems"] for name, r in results.items() if not r["health"]["healthy"]}
print("all SAEs healthy" if not unhealthy else f"UNHEALTHY SAEs: {unhealthy}")
