# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Cluster features by their activation patterns
#
# **In:** the trained SAEs and the evaluation split.
# **Out:** `runs/<run>/analysis/clusters_<variant>.json`.
#
# Each alive latent is described by how it fires on held-out sequences: its log firing rate, its
# autocorrelation at lags 1..`cluster.max_lag` within documents, its run length relative to an
# i.i.d. feature of the same rate, and where in the document it fires. The descriptors are
# standardised and clustered with k-means. With a synthetic source, each latent is labelled with
# the kind of true feature its decoder row matches (cosine ≥ the recovery threshold), and the
# clusters are compared with those kinds (adjusted Rand index, normalised mutual information).

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))

# %%
from tsae_core import ActivationStore, load_config
from tsae_core.cluster import cluster_run_variant
from tsae_core.train import trained_instances

cfg = load_config(params, overrides)
store = ActivationStore.open(cfg.run_dir / "activations")
clusters = {inst.variant: cluster_run_variant(cfg, inst.name, store, cfg.run_dir)
            for inst in trained_instances(cfg, cfg.run_dir, cfg.compared_instances())}

# %% [markdown]
# ## Clusters against the true feature kinds

# %%
for name, c in clusters.items():
    print(f"{name}: {c['n_alive']} alive latents in {len(set(c['labels']))} clusters; "
          f"ARI {c['ari'] if c['ari'] is not None else float('nan'):.3f}, NMI {c['nmi'] if c['nmi'] is not None else float('nan'):.3f}")
    kinds = c["contingency"]["kinds"]
    print("   cluster  " + " ".join(f"{k:>11s}" for k in kinds))
    for cl, counts in zip(c["contingency"]["clusters"], c["contingency"]["counts"]):
        print(f"   {cl:7d}  " + " ".join(f"{n:11d}" for n in counts))
