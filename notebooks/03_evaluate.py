# %% [markdown]
# # 03 · Evaluate
#
# **In:** the trained SAEs and the held-out evaluation split.
# **Out:** `runs/<run>/eval/<variant>.json`: SAEBench-core metrics (reconstruction quality,
# shrinkage, sparsity, token counts), temporal statistics with shuffled-position controls, the
# ground-truth recovery by feature kind (synthetic source) and a health verdict.
#
# All metrics exclude special tokens and accumulate in float64. Explained variance is
# 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the mean over all evaluated tokens. With a language-model
# source the SAE is also spliced into the model at the hook (special positions keep x) and
# compared with the clean and the zero-ablated model: `ce_loss_score` = (CE_abl − CE_sae) /
# (CE_abl − CE_clean), `kl_div_score` = (KL_abl − KL_sae) / KL_abl.

# %% tags=["parameters"]
params = "params/default.yaml"
overrides = {}

# %%
from tsae_core import ActivationStore, load_config
from tsae_core.evaluate import evaluate_variant, summary_row
from tsae_core.sources.factory import load_model

cfg = load_config(params, overrides)
store = ActivationStore.open(cfg.run_dir / "activations")
model = load_model(cfg)  # the language model behind the activations (None for synthetic data)
results = {name: evaluate_variant(cfg, name, store, cfg.run_dir, model=model) for name in cfg.variants}

# %% [markdown]
# ## Summary
# MMCS: mean over true features of the best cosine similarity with a decoder row; "recovered":
# the fraction of true features with a decoder row at cosine ≥ `eval.recovery_threshold`.

# %%
rows = [summary_row(name, r) for name, r in results.items()]
columns = list(dict.fromkeys(k for row in rows for k in row))
print(" | ".join(f"{c:>14s}" for c in columns))
for row in rows:
    print(" | ".join(f"{row.get(c):>14.4f}" if isinstance(row.get(c), float) else f"{str(row.get(c)):>14s}" for c in columns))

# %%
unhealthy = {name: r["health"]["problems"] for name, r in results.items() if not r["health"]["healthy"]}
print("all SAEs healthy" if not unhealthy else f"UNHEALTHY SAEs: {unhealthy}")
