# %% [markdown]
# # 05 · Figures
#
# **In:** `runs/<run>/eval/`, `runs/<run>/train/`, `runs/<run>/analysis/`.
# **Out:** `figures/<run>/*.png`, each with the numbers behind it in a JSON file beside it.

# %% tags=["parameters"]
params = "params/default.yaml"
overrides = {}

# %%
from IPython.display import Image, display

from tsae_core import load_config
from tsae_core.plots import load_cluster_results, load_curves, load_evals, plot_all

cfg = load_config(params, overrides)
evals = load_evals(cfg.run_dir / "eval")
curves = load_curves(cfg.run_dir / "train")
clusters = load_cluster_results(cfg.run_dir / "analysis")
figures = plot_all(evals, curves, clusters, cfg.figures_dir, dpi=cfg.plot.dpi)

# %%
for path in figures:
    print(path)
    display(Image(filename=str(path)))
