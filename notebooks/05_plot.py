# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Figures
#
# **In:** `runs/<run>/eval/`, `runs/<run>/train/`, `runs/<run>/analysis/`.
# **Out:** `figures/<run>/*.png`, each with the numbers behind it in a JSON file beside it.
#
# With several seeds (`run.seeds`) each variant is one bar at the mean over seeds, with a ±1 standard
# deviation error bar. Sweep points (`sweep:`) appear only in `ablation_<variant>.png`: each headline
# metric against the swept knob, beside the variant as configured and the TopK baseline.

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))

# %%
from IPython.display import Image, display

from tsae_core import load_config
from tsae_core.plots import load_run_results, plot_all

cfg = load_config(params, overrides)
evals, curves, clusters = load_run_results(cfg)  # only the SAEs this config names
figures = plot_all(evals, curves, clusters, cfg.figures_dir, dpi=cfg.plot.dpi)

# %%
for path in figures:
    print(path)
    display(Image(filename=str(path)))
