# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Figures
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
    if path.stem != "comparison":  # shown below, beside its table
        print(path)
        display(Image(filename=str(path)))

# %% [markdown]
# ## Each variant against its baseline
#
# Every variant is compared with the token-wise SAE of the same run that shares its activation
# function (architecture `standard`; among several, the one with the same dictionary size, then the
# one named after the activation). Token-wise SAEs serve as baselines and are not compared
# themselves; sweep points appear only in the ablation figures. For each metric we report the
# difference of means over seeds (variant − baseline) with its 95% Welch t interval, and call a
# variant better or worse only when that interval excludes zero; higher is better for explained
# variance, the CE loss and KL divergence scores, ground-truth recovery and lag-1 autocorrelation
# (the claim of the temporal prior), lower for the dead fraction, redundancy and the maximum decoder
# cosine, while the shuffled-position controls and position dependence carry no direction. With a
# single seed we report the difference alone. Comparisons hold only at matched sparsity: an L0 more
# than 10% from the baseline's is flagged as not matched. An SAE judged unhealthy, or a comparison
# whose baseline is, supports no claim and is marked as excluded.

# %%
import pandas as pd

from tsae_core.comparison import compare_variants, find_baselines

without = [v for v, b in find_baselines(evals).items() if b is None]
if without:
    print("No token-wise baseline with the same activation in this run, so not compared:", ", ".join(without))
comparison = pd.DataFrame(compare_variants(evals))
if len(comparison):
    display(comparison[["variant", "baseline", "metric", "baseline_value", "variant_value", "difference", "interval",
                        "verdict"]])
    display(Image(filename=str(cfg.figures_dir / "comparison.png")))
