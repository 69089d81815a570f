"""A small byte-level transformer-lens model that the repo trains itself on the offline Python corpus.

Tokens are UTF-8 bytes (ids 0..255) plus BOS = 256 and EOS = 257, so nothing is downloaded: the
text is `corpus.python_docs_corpus()` and the tokenizer is `ByteTokenizer`. The model is a
`HookedTransformer`, so harvesting its activations is the same code as for hub models.

Training (`train_tiny_lm`): contexts packed as in `lm.pack_contexts` (BOS-prefixed, n_ctx tokens),
AdamW with linear warmup then cosine decay to MIN_LR_FRACTION × lr, gradient clipping at 1.0,
batches drawn from a seeded permutation of the training contexts. Losses are mean next-token
cross-entropy in nats per byte over positions whose target is not BOS (predicting BOS is
predicting the packing, not the text). The unigram baseline is the cross-entropy on the same
held-out targets of the add-one-smoothed byte distribution of the training text:

    unigram_loss = − mean_t log p(x_t),   p(b) = (count_train(b) + 1) / (N_train + 256)

`source.random_init` uses the spec's initial weights untrained (`untrained_tiny_lm`), never cached.
The trained model is cached under `<cache_dir>/<spec.hash()>/` as model.safetensors, spec.json and
report.json (written in that order, atomically, so report.json marks a complete entry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tsae_core.io import provenance, read_json, save_tensors, write_json
from tsae_core.progress import tqdm
from tsae_core.seeds import derive_seed
from tsae_core.source_config import TinyLMConfig
from tsae_core.sources.corpus import corpus_fingerprint, python_docs_corpus, split_documents
from tsae_core.sources.lm import LanguageModelSource, pack_contexts

BOS_ID, EOS_ID, D_VOCAB = 256, 257, 258
TINYLM_VERSION = 1
"""Bump when training or the corpus changes for the same spec, so cached models are retrained."""
MIN_LR_FRACTION = 0.1
"""The cosine schedule decays the learning rate to this fraction of `lr`."""


class ByteTokenizer:
    """UTF-8 bytes as tokens: ids 0..255 are bytes, 256 is BOS, 257 is EOS (d_vocab 258)."""

    bos_token_id = BOS_ID
    eos_token_id = EOS_ID
    vocab_size = D_VOCAB
    all_special_ids = (BOS_ID, EOS_ID)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of the byte ids (special ids dropped; invalid UTF-8 replaced)."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def encode_tensor(self, text: str) -> torch.Tensor:
        """encode as an int64 tensor, without building a Python list (the fast path for packing)."""
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).to(torch.int64)


@dataclass(frozen=True)
class TinyLMSpec(TinyLMConfig):
    """The tiny model's configuration, with the hash that names its cache entry."""

    @classmethod
    def of(cls, config: TinyLMConfig) -> TinyLMSpec:
        return cls(**dataclasses.asdict(config))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """16 hex digits over the fields, TINYLM_VERSION and the Python minor version (its stdlib is the corpus)."""
        key = {"spec": self.to_dict(), "version": TINYLM_VERSION, "python": list(sys.version_info[:2])}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def model_config(spec: TinyLMSpec) -> Any:
    """The HookedTransformerConfig of the spec's architecture (LayerNorm, GELU, learned positions)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(
        n_layers=spec.n_layers,
        d_model=spec.d_model,
        n_heads=spec.n_heads,
        d_head=spec.d_model // spec.n_heads,
        d_mlp=spec.d_mlp,
        n_ctx=spec.n_ctx,
        d_vocab=D_VOCAB,
        act_fn="gelu",
        normalization_type="LN",
        default_prepend_bos=False,  # packing places BOS itself
        model_name="tsae-tinylm",
    )


def build_model(spec: TinyLMSpec) -> Any:
    """A HookedTransformer of the spec, initialised from the spec's seed (global RNG left untouched)."""
    from transformer_lens import HookedTransformer

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.x marks it deprecated; it is the API SAELens uses
        torch.manual_seed(derive_seed(spec.seed, "tinylm", "init"))
        model = HookedTransformer(model_config(spec))
    return model.eval()


def corpus_splits(spec: TinyLMSpec) -> tuple[list[str], list[str]]:
    """(train, heldout) documents of the spec's corpus."""
    return split_documents(python_docs_corpus(spec.max_documents), spec.heldout_fraction, spec.seed)


def pack_text(docs: list[str], context_size: int, max_contexts: int | None = None) -> dict[str, torch.Tensor]:
    """Byte-tokenised documents packed into BOS-prefixed contexts (see `lm.pack_contexts`)."""
    tok = ByteTokenizer()
    return pack_contexts([tok.encode_tensor(d) for d in docs], context_size, BOS_ID, max_contexts, special_ids=[EOS_ID])


def next_byte_loss(model: Any, tokens_BT: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy in nats, count) over next-token targets that are not BOS."""
    logits_BTV = model(tokens_BT)
    target_BT = tokens_BT[:, 1:]
    keep_BT = target_BT != BOS_ID
    ce_BT = torch.nn.functional.cross_entropy(logits_BTV[:, :-1].flatten(0, 1).float(), target_BT.flatten(), reduction="none")
    return (ce_BT.view_as(target_BT) * keep_BT).sum(), int(keep_BT.sum())


@torch.no_grad()
def heldout_loss(model: Any, tokens_NT: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-byte cross-entropy (nats/byte) over the contexts, BOS targets excluded."""
    total, count = 0.0, 0
    for lo in range(0, tokens_NT.shape[0], batch_size):
        s, c = next_byte_loss(model, tokens_NT[lo : lo + batch_size])
        total, count = total + float(s), count + c
    return total / max(count, 1)


def unigram_loss(train_tokens_NT: torch.Tensor, heldout_tokens_NT: torch.Tensor) -> float:
    """Cross-entropy (nats/byte) of the add-one-smoothed training byte distribution on held-out targets."""
    train_bytes = train_tokens_NT[train_tokens_NT < 256]
    counts_V = torch.bincount(train_bytes, minlength=256).double() + 1.0
    logp_V = (counts_V / counts_V.sum()).log()
    targets = heldout_tokens_NT[:, 1:]
    targets = targets[targets != BOS_ID]
    return float(-logp_V[targets.clamp(max=255)].mean())  # EOS never occurs in the corpus text


def _lr_lambda(spec: TinyLMSpec):
    def factor(step: int) -> float:
        if step < spec.warmup:
            return (step + 1) / spec.warmup
        progress = (step - spec.warmup) / max(spec.train_steps - spec.warmup, 1)
        return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _fit(spec: TinyLMSpec, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train a model of the spec from scratch; returns (model, report). No caching here."""
    t0 = time.perf_counter()
    train_docs, heldout_docs = corpus_splits(spec)
    train_NT = pack_text(train_docs, spec.n_ctx)["tokens_NT"]
    eval_NT = pack_text(heldout_docs, spec.n_ctx, spec.eval_contexts)["tokens_NT"]
    if train_NT.shape[0] == 0 or eval_NT.shape[0] == 0:
        raise ValueError(f"the corpus gives too few contexts ({train_NT.shape[0]} train, {eval_NT.shape[0]} held out)")

    model = build_model(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(spec))
    gen = torch.Generator().manual_seed(derive_seed(spec.seed, "tinylm", "batches"))
    order, cursor, recent = torch.randperm(train_NT.shape[0], generator=gen), 0, []
    bar = tqdm(range(spec.train_steps), desc="tiny LM", unit="step", disable=not progress)
    t_loop = time.perf_counter()
    for _ in bar:
        if cursor + spec.batch_size > order.numel():  # a new epoch: a fresh permutation
            order, cursor = torch.randperm(train_NT.shape[0], generator=gen), 0
        batch_BT = train_NT[order[cursor : cursor + spec.batch_size]]
        cursor += spec.batch_size
        loss_sum, count = next_byte_loss(model, batch_BT)
        loss = loss_sum / max(count, 1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-20:]
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
    model.eval()
    loop_seconds = time.perf_counter() - t_loop
    train_tokens = spec.train_steps * spec.batch_size * spec.n_ctx
    report = {
        "heldout_loss": heldout_loss(model, eval_NT),
        "unigram_loss": unigram_loss(train_NT, eval_NT),
        "train_loss": sum(recent) / len(recent),
        "n_train_docs": len(train_docs),
        "n_heldout_docs": len(heldout_docs),
        "train_tokens": train_tokens,
        "tokens_per_second": train_tokens / loop_seconds,
        "corpus_fingerprint": corpus_fingerprint(train_docs + heldout_docs),
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
        "spec": spec.to_dict(),
    }
    report["seconds"] = time.perf_counter() - t0  # everything: corpus, packing, training, evaluation
    return model, report


def _entry(spec: TinyLMSpec, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / spec.hash()


def _load_cached(spec: TinyLMSpec, cache_dir: str | Path) -> tuple[Any, dict[str, Any]] | None:
    """The cached (model, report) of the spec, or None when there is no complete, matching entry."""
    entry = _entry(spec, cache_dir)
    try:
        report = read_json(entry / "report.json")
        if report.get("spec") != spec.to_dict():
            return None
        state = load_file(str(entry / "model.safetensors"))
    except (OSError, ValueError):  # missing, half-written or corrupt: train again
        return None
    model = build_model(spec)
    model.load_state_dict(state, strict=True)
    return model.eval(), {k: v for k, v in report.items() if k != "tsae"}


def train_tiny_lm(
    spec: TinyLMSpec, cache_dir: str | Path, progress: bool = True, force: bool = False
) -> tuple[Any, dict[str, Any]]:
    """(model, report) of the spec: loaded from the cache, or trained (`force` always trains) and cached.

    report: heldout_loss, unigram_loss, train_loss (nats/byte; train_loss is the mean of the last
    20 steps), seconds (wall, all of it), n_train_docs, n_heldout_docs, train_tokens,
    tokens_per_second (training loop only), corpus_fingerprint, python, torch_threads, spec.
    """
    if not force and (cached := _load_cached(spec, cache_dir)) is not None:
        return cached
    model, report = _fit(spec, progress)
    entry = _entry(spec, cache_dir)
    # Weights first, report last: a report on disk means the whole entry was written.
    save_tensors(entry / "model.safetensors", model.state_dict(), metadata={"spec_hash": spec.hash()})
    write_json(entry / "spec.json", spec.to_dict(), stamp=provenance(spec.hash()))
    write_json(entry / "report.json", report, stamp=provenance(spec.hash()))
    return model, report


def load_tiny_lm(spec: TinyLMSpec, cache_dir: str | Path, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train-or-load: the cached model of the spec, training it (minutes, once) if there is none."""
    return train_tiny_lm(spec, cache_dir, progress=progress)


def untrained_tiny_lm(spec: TinyLMSpec) -> tuple[Any, dict[str, Any]]:
    """(model, report) of the spec's initial weights, untrained (`source.random_init`: the model
    `train_tiny_lm` starts from). Nothing is read from or written to the cache.

    report: heldout_loss and unigram_loss measured as for a trained model (an untrained one sits near
    ln 258 = 5.55 nats/byte), n_train_docs, n_heldout_docs, corpus_fingerprint, spec, random_init.
    """
    train_docs, heldout_docs = corpus_splits(spec)
    train_NT = pack_text(train_docs, spec.n_ctx)["tokens_NT"]
    eval_NT = pack_text(heldout_docs, spec.n_ctx, spec.eval_contexts)["tokens_NT"]
    if train_NT.shape[0] == 0 or eval_NT.shape[0] == 0:
        raise ValueError(f"the corpus gives too few contexts ({train_NT.shape[0]} train, {eval_NT.shape[0]} held out)")
    model = build_model(spec)
    report = {
        "heldout_loss": heldout_loss(model, eval_NT),
        "unigram_loss": unigram_loss(train_NT, eval_NT),
        "n_train_docs": len(train_docs),
        "n_heldout_docs": len(heldout_docs),
        "corpus_fingerprint": corpus_fingerprint(train_docs + heldout_docs),
        "spec": spec.to_dict(),
        "random_init": True,
    }
    return model, report


def default_cache_dir() -> Path:
    """Where tiny models are cached unless told otherwise: $TSAE_CACHE/tinylm, else ~/.cache/tsae/tinylm."""
    return Path(os.environ.get("TSAE_CACHE", Path.home() / ".cache" / "tsae")).expanduser() / "tinylm"


def tinylm_source(
    spec: TinyLMSpec,
    cache_dir: str | Path,
    hook_name: str,
    context_size: int,
    max_contexts: dict[str, int | None] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = True,
    random_init: bool = False,
) -> LanguageModelSource:
    """The tiny model (trained or loaded) as a harvestable source; with `random_init`, its untrained
    initial weights instead (`untrained_tiny_lm`, no cache involved).

    Splits: "train" packs the model's training documents, "eval" its held-out documents, so the
    SAE is evaluated on text neither it nor the model was trained on. `max_contexts[split]` caps a
    split (None: all the corpus gives; with CPython 3.11 about 12.3k train and 1.0k eval contexts of 128 bytes).
    """
    if context_size > spec.n_ctx:
        raise ValueError(f"context_size {context_size} exceeds the tiny model's n_ctx {spec.n_ctx}")
    model, report = untrained_tiny_lm(spec) if random_init else load_tiny_lm(spec, cache_dir, progress=progress)
    max_contexts = max_contexts or {}
    train_docs, heldout_docs = corpus_splits(spec)
    contexts = {
        "train": pack_text(train_docs, context_size, max_contexts.get("train")),
        "eval": pack_text(heldout_docs, context_size, max_contexts.get("eval")),
    }
    describe = {
        "kind": "tinylm",
        "model": "tsae-tinylm",
        "spec": spec.to_dict(),
        "spec_hash": spec.hash(),
        "heldout_loss": report["heldout_loss"],
        "unigram_loss": report["unigram_loss"],
        "corpus_fingerprint": report.get("corpus_fingerprint"),
        "random_init": random_init,
    }
    return LanguageModelSource(model.to(device), hook_name, contexts, batch_size, device, describe)
