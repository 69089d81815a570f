"""The random-transformer control's model (`source.random_init`): a randomly initialised copy of a
language model, with the same architecture and tokenizer and no training.

A `HookedTransformer` is rebuilt from its own config (`HookedTransformer(cfg)` with `init_weights`:
transformer-lens's initialisation, Xavier-style weight matrices, zero biases, unit LayerNorm
scales) under `torch.manual_seed(seed)`; the global random state is left as it was. A Hugging Face
model (what a `TransformerBridge` wraps) is rebuilt from its config by `transformers`
(`AutoModelForCausalLM.from_config`, the library's own initialisation) under the same seed.

Heap et al. (2025, arXiv 2501.17727) found that SAEs trained on such a model get autointerp
scores close to those trained on the real one: the control says how much of a score is the model's.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch

from tsae_core.seeds import derive_seed


def init_seed(run_seed: int) -> int:
    """The seed a hub or packaged model is re-initialised with: derived from `run.seed`."""
    return derive_seed(run_seed, "source", "random_init")


def reinitialised_hooked_transformer(model: Any, seed: int) -> Any:
    """A new HookedTransformer with `model`'s config and tokenizer and freshly initialised weights
    (transformer-lens's `init_weights`, seeded by `seed`), on `model`'s device and dtype, in eval mode."""
    from transformer_lens import HookedTransformer

    cfg = copy.deepcopy(model.cfg)
    cfg.init_weights, cfg.seed = True, None  # seeded here, so that the global RNG is left untouched
    tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None  # else the constructor loads the tokenizer anew
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.x marks it deprecated; it is the API SAELens uses
        torch.manual_seed(seed)
        fresh = HookedTransformer(cfg)
    fresh.cfg.tokenizer_name, fresh.tokenizer = tokenizer_name, model.tokenizer  # the same tokenizer object, as set up
    return fresh.eval()


def reinitialised_hf_model(hf_model: Any, seed: int) -> Any:
    """A Hugging Face causal LM of `hf_model`'s config, initialised by `transformers` from `seed`, float32, eval mode."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fresh = AutoModelForCausalLM.from_config(hf_model.config, torch_dtype=torch.float32)
    return fresh.eval()
