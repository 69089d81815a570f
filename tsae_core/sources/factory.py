"""`source.kind` -> the source harvest reads, the model behind it (for model-preservation metrics)
and its tokenizer (to show the text of contexts).

The only place where the kinds differ: the synthetic generator, the tiny model trained here, a
hub model on hub or local text, or a real model from a GGUF file shipped in registry packages.
Everything downstream (harvest, store, training, evaluation) is shared, so `tinylm`, `hf` and
`gguf` go through exactly the same code.
"""

from __future__ import annotations

from typing import Any

import torch

from tsae_core.config import ExperimentConfig
from tsae_core.device import resolve_device
from tsae_core.sources.lm import LANGUAGE_MODEL_KINDS  # noqa: F401 (importable from here)


def _model_dtype(cfg: ExperimentConfig, device: torch.device) -> torch.dtype:
    name = cfg.source.hf.model_dtype
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def make_source(cfg: ExperimentConfig, progress: bool = True) -> Any:
    """The configured source, ready for `harvest` (trains the tiny model once if it is not cached)."""
    kind, hc = cfg.source.kind, cfg.harvest
    if kind == "synthetic":
        from tsae_core.sources.synthetic import SyntheticSource

        return SyntheticSource(cfg.source.synthetic, hc.context_size, cfg.run.seed)
    device = resolve_device(cfg.run.device)
    max_contexts = {"train": hc.n_train_sequences, "eval": hc.n_eval_sequences}
    if kind == "tinylm":
        from tsae_core.sources.tinylm import TinyLMSpec, default_cache_dir, tinylm_source

        return tinylm_source(
            TinyLMSpec.of(cfg.source.tinylm), default_cache_dir(), cfg.source.hook_name, hc.context_size,
            max_contexts=max_contexts, batch_size=cfg.source.model_batch_size, device=device, progress=progress,
            random_init=cfg.source.random_init,
        )
    if kind == "hf":
        from tsae_core.sources.hf import hf_source

        h = cfg.source.hf
        return hf_source(
            h.model_name, cfg.source.hook_name, hc.context_size, dataset=None if h.text_files else h.dataset,
            text_files=h.text_files or None, text_column=h.text_column, split=h.dataset_split,
            max_documents=h.max_documents, seed=cfg.run.seed, max_contexts=max_contexts,
            batch_size=cfg.source.model_batch_size, device=device, dtype=_model_dtype(cfg, device),
            random_init=cfg.source.random_init,
        )
    if kind == "gguf":
        from tsae_core.sources.gguf_model import gguf_source

        return gguf_source(cfg.source.gguf, cfg.source.hook_name, hc.context_size, seed=cfg.run.seed,
                           max_contexts=max_contexts, batch_size=cfg.source.model_batch_size, device=device,
                           random_init=cfg.source.random_init)
    raise ValueError(f"unknown source.kind {kind!r}")


def load_model(cfg: ExperimentConfig) -> Any | None:
    """The language model whose activations were harvested (None for the synthetic source): with
    `source.random_init`, the same randomly initialised copy the harvest used."""
    kind = cfg.source.kind
    if kind not in LANGUAGE_MODEL_KINDS:
        return None
    device = resolve_device(cfg.run.device)
    random_init = cfg.source.random_init
    from tsae_core.sources.random_init import init_seed, reinitialised_hooked_transformer

    if kind == "tinylm":
        from tsae_core.sources.tinylm import TinyLMSpec, build_model, default_cache_dir, load_tiny_lm

        spec = TinyLMSpec.of(cfg.source.tinylm)
        model = build_model(spec) if random_init else load_tiny_lm(spec, default_cache_dir())[0]
        return model.to(device).eval()
    if kind == "gguf":
        from tsae_core.sources.gguf_model import load_gguf_model

        return load_gguf_model(cfg.source.gguf, device, random_init_seed=init_seed(cfg.run.seed) if random_init else None)
    from tsae_core.sources.hf import load_pretrained

    model = load_pretrained(cfg.source.hf.model_name, device, _model_dtype(cfg, device))
    return (reinitialised_hooked_transformer(model, init_seed(cfg.run.seed)) if random_init else model).eval()


def load_tokenizer(cfg: ExperimentConfig) -> Any | None:
    """The tokenizer of the harvested language model (None for the synthetic source); the tiny
    model's and a packaged model's come without loading any weights."""
    kind = cfg.source.kind
    if kind not in LANGUAGE_MODEL_KINDS:
        return None
    if kind == "tinylm":
        from tsae_core.sources.tinylm import ByteTokenizer

        return ByteTokenizer()
    if kind == "gguf":
        from tsae_core.sources.gguf_model import load_gguf_tokenizer

        return load_gguf_tokenizer(cfg.source.gguf)
    return load_model(cfg).tokenizer
