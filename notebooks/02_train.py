# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Train the SAEs
#
# **In:** the harvested activations; the `variants` and `train` sections of the params file.
# **Out:** `runs/<run>/saes/<variant>/` (`cfg.json` + `sae.safetensors`, SAELens tensor names)
# and training curves in `runs/<run>/train/<variant>.jsonl`.
#
# Every variant is trained with the same recipe on the same data: Adam with warmup and a final
# linear decay, gradient clipping at 1.0, unit-norm decoder rows (TopK family) or a
# decoder-norm-weighted L1 penalty with a warmed-up coefficient (ReLU), AuxK on dead latents.
# Training stops loudly on a non-finite loss and resumes exactly from its last checkpoint.

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))
force = False  # retrain every SAE, even those already trained with these parameters (`tsae run --force`)

# %%
from tsae_core import ActivationStore, load_config
from tsae_core.train import train_variant

cfg = load_config(params, overrides)
store = ActivationStore.open(cfg.run_dir / "activations")
summaries = [train_variant(cfg, inst.name, store, cfg.run_dir, force=force) for inst in cfg.instances()]

# %% [markdown]
# ## Final training state
# FVU is the fraction of variance unexplained on the last training batch; L0 the mean number of
# active latents per token; dead fraction the latents silent for `train.dead_after_tokens` tokens.
# A training that ended with every latent silent is listed as FAILED, with its reason; an SAE
# brought in with `load_from` is listed as imported, with where it came from.

# %%
import pandas as pd


def state(s):
    if s.get("failed"):
        return f"FAILED: {s['failed']}"
    if s.get("imported_from"):
        return f"imported, not trained: {s['imported_from']}"
    return "skipped (already trained)" if s["skipped"] else f"{s['steps']} steps"


rows = []
for s in summaries:
    final = s.get("final") or {}  # a failed or imported SAE has no final training state
    rows.append({"variant": s["variant"], "state": state(s), "loss": final.get("loss"), "FVU": final.get("fvu"),
                 "L0": final.get("l0"), "dead fraction": final.get("dead_fraction")})
pd.DataFrame(rows).set_index("variant").round(4)
