"""Text as token ids for a model: each document's ids, the BOS and special ids every context uses, and
labelled text as model contexts (one context per text) with the model's activations at the hook.

Probing and unlearning ask about given texts (a docstring, a chunk of a topic), not about the packed
stream harvest reads, so each text gets a context of its own:

    BOS t_0 t_1 ... t_{L-1} [pad ...]        L = min(len(text tokens), T − 1)

with the same per-token tensors as `lm.pack_contexts` (tokens, doc_start, position, special): the
text's first token starts a document, BOS and padding are special (padding repeats the BOS id, so
no id outside the model's vocabulary is ever fed to it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch


def tokenize_documents(tokenizer: Any, texts: list[str], batch_size: int = 256) -> list[list[int]]:
    """Token ids of each text, without special tokens (pack_contexts adds BOS per document)."""
    ids: list[list[int]] = []
    for lo in range(0, len(texts), batch_size):
        # verbose=False: documents longer than the model's context are expected; packing cuts them.
        enc = tokenizer(texts[lo : lo + batch_size], add_special_tokens=False, verbose=False)
        ids.extend(list(map(int, seq)) for seq in enc["input_ids"])
    return ids


def bos_id(tokenizer: Any) -> int:
    """The id that starts every context: the tokenizer's BOS, else its EOS (GPT-2 style)."""
    for attr in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            return int(value)
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has neither a BOS nor an EOS token; cannot mark context starts")


def special_ids(tokenizer: Any) -> list[int]:
    """All special-token ids of the tokenizer (BOS, EOS, pad, ...), to mark as special when packing."""
    return sorted({int(i) for i in getattr(tokenizer, "all_special_ids", []) or []})


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text without special tokens: the tiny model's bytes, or a hub tokenizer's ids."""
    if hasattr(tokenizer, "encode_tensor"):  # the byte tokenizer
        return [tokenizer.encode(t) for t in texts]
    return tokenize_documents(tokenizer, list(texts))


def one_context_per_text(docs_tokens: Sequence[Sequence[int]], context_size: int, bos: int,
                         specials: Sequence[int] = ()) -> dict[str, torch.Tensor]:
    """N contexts of `context_size` tokens, text i in context i (cut after T − 1 tokens, padded)."""
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2 (BOS + one token), got {context_size}")
    N, T = len(docs_tokens), context_size
    tokens = torch.full((N, T), bos, dtype=torch.int64)
    special = torch.ones(N, T, dtype=torch.bool)
    position = torch.zeros(N, T, dtype=torch.int64)
    for i, ids in enumerate(docs_tokens):
        ids_L = torch.as_tensor(list(ids)[: T - 1], dtype=torch.int64)
        if ids_L.numel() == 0:
            raise ValueError(f"text {i} has no tokens; labelled sets must not hold empty texts")
        L = ids_L.numel()
        tokens[i, 1 : L + 1] = ids_L
        special[i, 1 : L + 1] = torch.isin(ids_L, torch.tensor(sorted(set(specials)) or [-1]))
        position[i, 1 : L + 1] = torch.arange(L)
    doc_start = torch.zeros(N, T, dtype=torch.bool)
    doc_start[:, 1] = True
    return {"tokens_NT": tokens, "doc_start_NT": doc_start, "position_NT": position, "special_NT": special}


def text_contexts(tokenizer: Any, texts: Sequence[str], context_size: int) -> dict[str, torch.Tensor]:
    """`one_context_per_text` of the tokenised texts, BOS and special ids taken from the tokenizer."""
    return one_context_per_text(encode_texts(tokenizer, texts), context_size, bos_id(tokenizer), special_ids(tokenizer))


@torch.no_grad()
def hook_activations(model: Any, hook_name: str, tokens_BT: torch.Tensor, stop_at_layer: int | None = None) -> torch.Tensor:
    """float32 CPU activations (B, T, ·) of a transformer-lens model at `hook_name` (bf16 autocast on
    CUDA); blocks from `stop_at_layer` on never run."""
    device = next(model.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with autocast:
        _, cache = model.run_with_cache(tokens_BT.to(device), names_filter=hook_name, stop_at_layer=stop_at_layer,
                                        return_cache_object=False)
    return cache[hook_name].float().cpu()
