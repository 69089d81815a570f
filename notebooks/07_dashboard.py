# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Feature dashboard and blind rating
#
# **In:** `runs/<run>/activations/` (the eval split), `runs/<run>/saes/`, `runs/<run>/eval/` and the
# per-latent arrays of `runs/<run>/analysis/`, the clusterings.
# **Out:** `runs/<run>/dashboard/` (static HTML: open `index.html` from disk in a browser, offline)
# and `runs/<run>/analysis/blind_rating_key.json` (which SAE is behind each side of the rating page).
#
# ## What a page shows
#
# Every alive latent of every compared SAE is listed in its SAE's index, sortable by firing rate,
# cluster, lag-1 autocorrelation (with the within-document shuffled control), run length relative to
# an i.i.d. latent of the same rate, position dependence η² (with its control), cross-position
# redundancy and maximum decoder cosine. A seeded random sample of `dashboard.n_features` alive
# latents per SAE gets a page: the activation histogram; the activation along its top contexts; the
# autocorrelation by lag beside the two shuffled controls; the run-length distribution beside the
# geometric law of an i.i.d. latent; the position profile; the top-activating contexts and samples
# from quantile bins of its activations, each token shaded by activation; nearest decoder
# neighbours in its own SAE and the closest feature of every other SAE; direct logit effects where
# there is a model; its cluster; and on synthetic data the true feature it matches. A random sample,
# not the strongest latents, so that the pages show what a variant's features are typically like.
#
# ## Blind rating
#
# `rate.html` shows pairs of features, one from a variant and one from the baseline, without names,
# in random order and on random sides; a researcher rates each feature from 1 (no pattern) to 5 (one
# clear concept), says which is clearer, and downloads the answers as JSON. `tsae ratings runs/<run>
# FILE...` unblinds them and reports each SAE's mean rating with a bootstrap interval and each
# variant's paired difference to the baseline.

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))

# %%
from IPython.display import FileLink, display

from tsae_core import load_config
from tsae_core.dashboard import build_dashboard, dashboard_dir

cfg = load_config(params, overrides)
if not cfg.dashboard.enabled:
    print("The dashboard is off (dashboard.enabled: false); set it to true to write runs/<run>/dashboard/.")
else:
    manifest = build_dashboard(cfg)
    index = dashboard_dir(cfg.run_dir) / "index.html"
    pages = sum(len(s["pages"]) for s in manifest["saes"].values())
    print(f"{pages} feature pages for {len(manifest['saes'])} SAEs; baseline of the concept page and the rating: "
          f"{manifest['baseline']}")
    print(f"open from disk in a browser: {index.resolve()}")
    # a page served by JupyterLab may not open file:// links (and the lab would link a printed one): this link goes
    # through the lab's own file URL, to a tab of the lab or, with a middle click, a browser tab of its own
    display(FileLink(os.path.relpath(index), result_html_prefix="in JupyterLab (press Trust HTML there for sortable tables): "))
