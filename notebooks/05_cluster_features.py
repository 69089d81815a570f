# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Kinds of features: clusters of latents by how they fire
#
# **In:** the trained SAEs and the evaluation split.
# **Out:** `runs/<run>/analysis/clusters_<variant>.json` (labels, scores, cluster profiles, example
# contexts) and `runs/<run>/analysis/feature_clusters.png`.
#
# ## Method
#
# Each SAE encodes the held-out sequences (at most `cluster.max_sequences`), and every alive latent
# is described by how it fires there:
#
# 1. **firing rate**: log10 of the share of tokens it is active on;
# 2. **autocorrelation signature**: the Pearson autocorrelation of its activation at lags
#    1..`cluster.max_lag` within documents, and the log of its mean run length of consecutive firing
#    over the i.i.d. expectation 1/(1 − p);
# 3. **positional profile**: its mean activation in each of 8 bins of position within the document,
#    divided by the tokens in the bin and normalised to sum to 1;
# 4. **co-activation**: in the token × latent firing matrix (1 where a latent is active), each
#    latent's column is standardised, so that the inner product of two columns is the correlation of
#    their firing (the phi coefficient); the leading `cluster.coactivation_dims` components of a
#    truncated SVD of this matrix place latents that fire on the same tokens close together. The SVD
#    works on the sparse matrix and never forms the F × F co-firing matrix.
#
# The columns of blocks 1–3 are standardised and each block (firing rate, autocorrelation lags,
# run length, positional profile) is divided by the square root of its width, so that every block
# carries total variance 1. The co-activation block keeps its own scale: a latent's squared
# coordinates sum to the share of its firing variance that the shared components explain, at most 1,
# so co-activation weighs at most as much as another block, and only as much as latents really fire
# together. The rows are clustered with `cluster.method` (k-means, Ward agglomerative or a diagonal
# Gaussian mixture); where `cluster.n_clusters` lists several counts, the one with the highest mean
# silhouette coefficient is kept. Clusters are numbered by size, largest first.

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))

# %%
import matplotlib
import pandas as pd
from IPython.display import Image, Markdown, display

from tsae_core import ActivationStore, load_config
from tsae_core.evals.cluster.report import (
    collapsed,
    descriptor_summary,
    examples_text,
    profile_table,
    selection_table,
    truth_summary,
    truth_table,
    variant_summary,
)
from tsae_core.evals.cluster.run import cluster_run_variant
from tsae_core.plots import plot_feature_clusters
from tsae_core.sources.factory import load_tokenizer
from tsae_core.train import trained_instances

pd.set_option("display.width", 160)  # tables on one line in plain-text views too
cfg = load_config(params, overrides)
store = ActivationStore.open(cfg.run_dir / "activations")
tokenizer = load_tokenizer(cfg)
clusters = {inst.variant: cluster_run_variant(cfg, inst.name, store, cfg.run_dir, tokenizer)
            for inst in trained_instances(cfg, cfg.run_dir, cfg.compared_instances())}

# %%
print(descriptor_summary(next(iter(clusters.values()))) if clusters else "No trained SAE to describe.")
for name, c in clusters.items():
    print(f"{name}: {variant_summary(c)}")

# %% [markdown]
# ## Number of clusters
#
# Mean silhouette coefficient of each candidate clustering (higher: latents closer to their own
# cluster than to the next one; computed on at most 4000 latents); ◀ marks the count kept. The
# silhouette rewards the most separated split, so a count at the low end of the list says that one
# group stands apart from the rest (the profiles below say which), not that there is no finer
# structure: the scores of the larger counts show how much of it there is.

# %%
display(selection_table(clusters))

# %% [markdown]
# ## What the clusters are
#
# Per cluster: its latents, their mean firing rate, mean lag-1 autocorrelation and mean run length
# relative to an i.i.d. latent of the same rate (1: no persistence), and the mean positional profile:
# one block per bin of position in the document, from its start (the last bin is open-ended, as
# documents continue across contexts); ▄ is the flat share, █ twice it or more. Beside it, the peak
# bin and how far it rises over a flat profile.

# %%
for name, c in clusters.items():
    print(f"{name}: {c['n_clusters']} clusters of {c['n_alive']} alive latents")
    display(profile_table(c))

# %% [markdown]
# Each latent in the plane of the first two principal components of its descriptors, coloured by
# cluster (marker: the kind of the true feature it matches, on a synthetic source); beside it, the
# clusters against the true kinds, or the cluster profiles where there are none.

# %%
with matplotlib.rc_context({"savefig.dpi": cfg.plot.dpi}):
    figure = plot_feature_clusters(clusters, cfg.run_dir / "analysis")
if figure is not None:
    display(Image(filename=str(figure)))

# %%
examples = {name: examples_text(c) for name, c in clusters.items() if c.get("examples")}
if examples:
    display(Markdown(
        "## Example contexts\n\n"
        f"For the {cfg.cluster.example_latents} latents nearest each cluster's centre in descriptor space, "
        f"the {cfg.cluster.example_contexts} evaluated tokens where each is largest (at most one per sequence), "
        f"with up to {cfg.cluster.context_before} tokens before and {cfg.cluster.context_after} after "
        "within the document. The number is the activation on the marked token ⟦ ⟧; the bars under the "
        "text are the latent's activation on each token relative to it. `<bos>` opens every context, "
        "also where a document continues from the previous one; ↵ is a line break."))
    first, *rest = examples
    print(f"{first}\n{examples[first]}")
    for name in rest:
        display(collapsed(name, examples[name]), raw=True)
else:
    print("No example contexts: this source has no tokens (synthetic data).")

# %%
truth = {name: c for name, c in clusters.items() if c["has_ground_truth"]}
if truth:
    display(Markdown(
        "## Clusters against the true feature kinds\n\n"
        "Each latent whose decoder row has cosine ≥ `eval.recovery_threshold` with a true feature carries "
        "that feature's kind; the clusters of these latents are compared with their kinds by the adjusted "
        "Rand index and normalised mutual information (1: the same partition, 0: chance), and each "
        "cluster's purity (share of its matched latents in its commonest kind)."))
    for name, c in truth.items():
        print(f"{name}: {truth_summary(c)}")
        if c["n_matched"] >= 2:
            display(truth_table(c))
else:
    print("No ground truth on this source: the clusters are described above, not scored.")
