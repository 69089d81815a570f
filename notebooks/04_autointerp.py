# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Automated interpretability
#
# **In:** `runs/<run>/activations/` (the eval split, its tokens) and `runs/<run>/saes/`.
# **Out:** `runs/<run>/eval/autointerp/<sae>.json` (SAEBench's autointerp layout); the plot stage
# draws `figures/<run>/autointerp.png` and adds the score, beside its controls, to the comparison.
#
# SAEBench's autointerp protocol: for up to `autointerp.n_latents` latents drawn among those alive,
# an explainer sees the top and importance-weighted examples with the active tokens marked
# `<<tok>>`, and a scorer sees the explanation and 14 shuffled sequences and names those where the
# latent fires; the score is the fraction classified correctly. Beside it: the chance level, each
# latent scored with another latent's explanation (shuffled-explanation control), and the same
# explanations scored with a wider window before each example (the temporal rescoring). Scores
# from different judge models are not comparable. With `autointerp.backend: none` (the default)
# nothing is called; `oracle` runs the synthetic source's truth as judge (no LLM).

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))
force = False

# %%
from tsae_core import load_config
from tsae_core.evals.autointerp.evaluation import autointerp_run

cfg = load_config(params, overrides)
if cfg.autointerp.backend == "none":
    print("autointerp is off (autointerp.backend: none). To turn it on, set autointerp.backend: openai with base_url, "
          "model and api_key_env (README, 'Automated interpretability'), e.g. "
          "--set autointerp.backend=openai --set autointerp.base_url=http://127.0.0.1:11434/v1 --set autointerp.model=llama3.1; "
          "or autointerp.backend: oracle on a synthetic source.")
results = autointerp_run(cfg, force=force)

# %%
import pandas as pd
from IPython.display import Image, display

from tsae_core.plots.autointerp import plot_autointerp

if results:
    table = pd.DataFrame([{
        "sae": name,
        "score": r["eval_result_metrics"]["autointerp"]["autointerp_score"],
        "std": r["eval_result_metrics"]["autointerp"]["autointerp_std_dev"],
        "shuffled explanation": r["eval_result_metrics"]["controls"].get("shuffled_explanation_score"),
        "chance": r["eval_result_metrics"]["controls"]["chance_random_guess"],
        f"{cfg.autointerp.temporal_window} tokens before": r["eval_result_metrics"].get("temporal_window", {}).get("autointerp_score"),
        "latents scored": r["counts"]["n_scored"],
        "skipped": r["counts"]["n_skipped"],
        "unparsed answers": sum(r["counts"]["unparsed"].values()),
    } for name, r in results.items()])
    display(table)
    figure = plot_autointerp(results, cfg.figures_dir)
    if figure is not None:
        display(Image(filename=str(figure)))

# %% [markdown]
# With the oracle (synthetic source), the scores by how well each latent matches a true feature:
# recovered latents should score near 1, latents matched to nothing near the chance level.

# %%
for name, r in results.items():
    groups = r["eval_result_metrics"].get("oracle")
    if groups:
        print(name)
        display(pd.DataFrame({g: v for g, v in groups.items() if isinstance(v, dict)}).T)
