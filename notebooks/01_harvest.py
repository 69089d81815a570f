# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Harvest activations
#
# **In:** a params file (`source`, `harvest` sections).
# **Out:** `runs/<run>/activations/`: `manifest.json` (shapes, dtype, counts, checksums, the
# dataset scaling factor) and safetensors shards of whole sequences, split by sequence into a
# training and a held-out evaluation set; `ground_truth.safetensors` for the synthetic source.
#
# Sequences are kept intact because temporal priors need adjacent positions; document
# boundaries and special tokens are recorded so losses and metrics can respect them.

# %% tags=["parameters"]
import json
import os

# papermill's `-p params ...` replaces these; nbmake (no parameters) reads TSAE_PARAMS / TSAE_OVERRIDES (JSON)
params = os.environ.get("TSAE_PARAMS", "params/default.yaml")
overrides = json.loads(os.environ.get("TSAE_OVERRIDES", "{}"))
force = False  # regenerate every shard, even intact ones (`tsae run --force`)

# %%
from tsae_core import ActivationStore, load_config
from tsae_core.harvest import harvest

cfg = load_config(params, overrides)
activations_dir = cfg.run_dir / "activations"
manifest = harvest(cfg, activations_dir, force=force)

# %% [markdown]
# ## What was harvested

# %%
import pandas as pd
from IPython.display import display

store = ActivationStore.open(activations_dir)
print(f"d_in {store.d_in}, context {store.context_size} tokens, dtype {manifest['dtype']}, "
      f"scaling factor {store.scaling_factor:.4f} (E||s*x|| = sqrt(d_in))")
rows = []
for split in ("train", "eval"):
    s = store.split(split)
    rows.append({"split": split, "sequences": s.n_sequences, "tokens": s.n_tokens, "shards": len(manifest["splits"][split]["shards"])})
display(pd.DataFrame(rows).set_index("split"))
# the source in brief: a nested settings dictionary (a whole source config) is summarised, manifest.json has it in full
display(pd.Series({key: f"{len(value)} settings (manifest.json)" if isinstance(value, dict) and len(value) > 4 else value
                   for key, value in manifest["source"].items()}, name="source", dtype=object).to_frame())

# %% [markdown]
# ## The language model (tinylm, hf and gguf sources)
# For the tiny model trained here: its held-out loss against the unigram baseline (nats per byte),
# the evidence that it is a real language model whose activations are worth decomposing.

# %%
source = manifest["source"]
if source.get("kind") == "tinylm":
    print(f"tiny model held-out loss: {source['heldout_loss']:.3f} nats/byte "
          f"(unigram baseline {source['unigram_loss']:.3f}); hook {source['hook_name']}")
elif source.get("kind") == "hf":
    print(f"model {source.get('model')} at {source['hook_name']}")
elif source.get("kind") == "gguf":
    print(f"model {source['model']} ({source['weights']}, through {source['wrapper']}) at {source['hook_name']}; "
          f"every context starts with {source['bos_token']}")

# %% [markdown]
# ## The ground truth (synthetic source)
# True features by kind, their firing rates and the expected number active per token.

# %%
truth = store.ground_truth()
if truth is not None:
    from collections import Counter

    print("true features by kind:", dict(Counter(truth.kinds)))
    print(f"true L0 (expected active features per token): {truth.true_l0:.2f}")
