"""Real pretrained models from packaged GGUF files, as transformer-lens models on offline text.

    packages --(gguf_file)--> verified .gguf --(transformers + gguf)--> HF model, float32
             --(transformer-lens)--> HookedTransformer (official name) or TransformerBridge (any HF model)

`transformers` reads the GGUF file (`from_pretrained(dir, gguf_file=name)`, which needs the `gguf`
package) and dequantizes every tensor to float32, so the activations are those of the quantized
weights, computed in float32. The model it returns still carries the GGUF `quantization_config`
and quantizer flags although its weights are plain tensors; transformer-lens refuses such a model,
so `strip_quantization` drops them.

Wrapping: an architecture transformer-lens knows by name (e.g. `google/gemma-3-270m`) becomes a
`HookedTransformer` with raw weights (`from_pretrained_no_processing(name, hf_model=...)`, the call
the hub path makes, so activations are what the model computes); any other architecture goes
through `TransformerBridge.boot_transformers(name, hf_model=...)`, the current transformer-lens API,
which serves the same hook names (`blocks.N.hook_resid_post`) and `stop_at_layer`. From the model
object on, harvest and evaluation are the code the `hf` and `tinylm` sources use.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from tsae_core.source_config import GGUFConfig
from tsae_core.sources.corpus import python_docs_corpus, python_source_corpus, split_documents
from tsae_core.sources.gguf_file import packaged_model_file
from tsae_core.sources.hf import load_texts
from tsae_core.sources.lm import LanguageModelSource, pack_contexts
from tsae_core.sources.text_contexts import bos_id, special_ids, tokenize_documents

GGUF_HELP = "reading GGUF files needs the `gguf` package: python -m pip install gguf"


def load_hf_from_gguf(path: str | Path) -> tuple[Any, Any]:
    """(causal LM in float32, tokenizer) read by `transformers` from a local GGUF file, offline."""
    try:
        import gguf  # noqa: F401  (transformers needs it; fail with a message naming it)
    except ImportError as err:
        raise ImportError(GGUF_HELP) from err
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    kwargs = {"gguf_file": path.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), dtype=torch.float32, **kwargs)
    return strip_quantization(model).eval(), tokenizer


def load_gguf_tokenizer(cfg: GGUFConfig, cache_dir: str | Path | None = None) -> Any:
    """The configured packaged model's tokenizer alone, read from its GGUF file (no weights loaded)."""
    try:
        import gguf  # noqa: F401  (transformers needs it; fail with a message naming it)
    except ImportError as err:
        raise ImportError(GGUF_HELP) from err
    from transformers import AutoTokenizer

    path = packaged_model_file(cfg.packages, cfg.file, cfg.sha256, cache_dir)
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)


def strip_quantization(hf_model: Any) -> Any:
    """Drop the GGUF quantization marks of a model whose weights are already dequantized tensors."""
    if hasattr(hf_model.config, "quantization_config"):
        del hf_model.config.quantization_config
    for attr, value in (("is_quantized", False), ("hf_quantizer", None), ("quantization_method", None)):
        if hasattr(hf_model, attr):
            setattr(hf_model, attr, value)
    return hf_model


def wrap_transformer_lens(hf_model: Any, tokenizer: Any, transformer_lens_name: str = "", bridge_name: str = "gguf-model",
                          device: str | torch.device = "cpu") -> Any:
    """The HF model as a transformer-lens model, weights unprocessed (see the module docstring).

    `transformer_lens_name` set: a HookedTransformer of that official architecture (the HF model's
    weights are copied in, so it is released). Empty: a TransformerBridge around the HF model,
    named `bridge_name`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.x deprecates HookedTransformer; SAELens uses it
        if transformer_lens_name:
            from transformer_lens import HookedTransformer

            model = HookedTransformer.from_pretrained_no_processing(
                transformer_lens_name, hf_model=hf_model, tokenizer=tokenizer, device=str(device), dtype=torch.float32
            )
        else:
            from transformer_lens.model_bridge import TransformerBridge

            model = TransformerBridge.boot_transformers(
                bridge_name, hf_model=hf_model.to(device), tokenizer=tokenizer, device=str(device), dtype=torch.float32
            )
    return model.eval()


def load_gguf_model(cfg: GGUFConfig, device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
                    random_init_seed: int | None = None) -> Any:
    """The configured packaged model as a transformer-lens model (its tokenizer as `.tokenizer`).

    `random_init_seed` set: a randomly initialised copy of the architecture instead (`source.random_init`):
    re-initialised by transformer-lens for a HookedTransformer, by `transformers` from the config for a
    TransformerBridge (`tsae_core.sources.random_init`), the tokenizer unchanged."""
    path = packaged_model_file(cfg.packages, cfg.file, cfg.sha256, cache_dir)
    hf_model, tokenizer = load_hf_from_gguf(path)
    if random_init_seed is not None and not cfg.transformer_lens_name:
        from tsae_core.sources.random_init import reinitialised_hf_model

        hf_model = reinitialised_hf_model(hf_model, random_init_seed)
    model = wrap_transformer_lens(hf_model, tokenizer, cfg.transformer_lens_name, Path(cfg.file).stem, device)
    if random_init_seed is not None and cfg.transformer_lens_name:
        from tsae_core.sources.random_init import reinitialised_hooked_transformer

        model = reinitialised_hooked_transformer(model, random_init_seed)
    return model


def context_start_id(tokenizer: Any, bos_token: str = "") -> int:
    """The id every context starts with: `bos_token` if given (must be in the vocabulary), else `bos_id`."""
    if not bos_token:
        return bos_id(tokenizer)
    token_id = tokenizer.convert_tokens_to_ids(bos_token)
    if token_id is None or token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"source.gguf.bos_token {bos_token!r} is not a token of the model's vocabulary")
    return int(token_id)


def documents(cfg: GGUFConfig) -> list[str]:
    """The texts to harvest: local files if configured, else one of the offline corpora (`cfg.corpus`)."""
    if cfg.text_files:
        limit = cfg.max_documents if cfg.max_documents is not None else sys.maxsize
        return load_texts(text_files=cfg.text_files, text_column=cfg.text_column, max_documents=limit)
    if cfg.corpus == "python_source":
        return python_source_corpus(cfg.max_documents)
    return python_docs_corpus(cfg.max_documents)


def model_source(
    model: Any,
    texts: list[str],
    hook_name: str,
    context_size: int,
    describe: dict[str, Any],
    bos_token: str = "",
    eval_fraction: float = 0.1,
    seed: int = 0,
    max_contexts: dict[str, int | None] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> LanguageModelSource:
    """A transformer-lens model (with `.tokenizer`) on texts, split by document and packed into BOS-first contexts."""
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("the model came without a tokenizer; cannot tokenise text for it")
    train_texts, eval_texts = split_documents(texts, eval_fraction, seed)
    start, specials = context_start_id(tokenizer, bos_token), special_ids(tokenizer)
    max_contexts = max_contexts or {}
    contexts = {
        split: pack_contexts(tokenize_documents(tokenizer, docs), context_size, start, max_contexts.get(split), specials)
        for split, docs in (("train", train_texts), ("eval", eval_texts))
    }
    describe = {**describe, "bos_token": tokenizer.convert_ids_to_tokens(start),
                "n_documents": {"train": len(train_texts), "eval": len(eval_texts)}}
    return LanguageModelSource(model, hook_name, contexts, batch_size, device, describe)


def gguf_source(
    cfg: GGUFConfig,
    hook_name: str,
    context_size: int,
    seed: int = 0,
    max_contexts: dict[str, int | None] | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
    random_init: bool = False,
) -> LanguageModelSource:
    """The packaged GGUF model on its configured text, as a harvestable source; with `random_init`, a
    randomly initialised copy of it seeded from `seed` (see `load_gguf_model`)."""
    from tsae_core.sources.random_init import init_seed

    model = load_gguf_model(cfg, device, cache_dir, init_seed(seed) if random_init else None)
    describe = {
        "kind": "gguf",
        "model": cfg.transformer_lens_name or Path(cfg.file).stem,
        "file": cfg.file,
        "sha256": cfg.sha256,
        "packages": list(cfg.packages),
        "wrapper": type(model).__name__,
        "weights": "GGUF quantized weights dequantized to float32",
        "text": cfg.text_files or f"{cfg.corpus.replace('_', '-')} corpus",
        "random_init": random_init,
    }
    return model_source(model, documents(cfg), hook_name, context_size, describe, cfg.bos_token, cfg.eval_fraction, seed,
                        max_contexts, batch_size, device)
