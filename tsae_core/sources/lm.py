"""Language-model activations: packing documents into contexts and running a model up to its hook.

The same code serves the repo's tiny byte-level model and hub models; only how the model and the
token ids are obtained differs (`tinylm.py`, `hf.py`).

Packing (docs/design.md, "Packing"): documents are concatenated into one stream, each preceded by BOS,

    stream = BOS d1_0 d1_1 ... BOS d2_0 d2_1 ... BOS d3_0 ...

the stream is cut into chunks of T − 1 tokens and BOS is prepended to every chunk, so every
context starts with BOS (a model attends to it as a resting position) and a document that does not
fit continues in the next context. A chunk that begins at a document's own BOS gives a context
that starts BOS BOS; both are special.

Per token, for a context of T tokens:
    tokens     int64 ids
    doc_start  True at the first real token of a document
    position   tokens since the start of its document (continuing across contexts); 0 at specials
    special    True at BOS and at any id in `special_ids` (EOS, pad) and at padding
    doc_index  the document's index in the packed list (its own BOS included; -1 at a context's
               leading BOS and at padding), from which the store's document ids are made
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from tsae_core.sources.base import SequenceBatch, split_document_ids

PACKED_KEYS = ("tokens_NT", "doc_start_NT", "position_NT", "special_NT", "doc_index_NT")
"""The tensors of a packed set of N contexts of T tokens."""
LANGUAGE_MODEL_KINDS = ("tinylm", "hf", "gguf")
"""Source kinds backed by a language model (tokens recorded, model-preservation metrics possible)."""
_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def pack_contexts(
    docs_tokens: Sequence[Sequence[int] | torch.Tensor],
    context_size: int,
    bos_id: int,
    max_contexts: int | None = None,
    special_ids: Iterable[int] = (),
    pad_id: int | None = None,
) -> dict[str, torch.Tensor]:
    """Pack tokenised documents into N contexts of `context_size` tokens (see the module docstring).

    Empty documents are skipped. The last, incomplete chunk is dropped, or padded with `pad_id`
    (marked special) when one is given. Packing stops after `max_contexts` contexts, so only the
    documents needed are converted. Returns int64 tokens_NT and position_NT, bool doc_start_NT and
    special_NT.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2 (BOS + one token), got {context_size}")
    chunk = context_size - 1
    limit = None if max_contexts is None else max_contexts * chunk  # stream tokens needed at most
    pieces, indices = _nonempty_documents(docs_tokens, limit)
    if not pieces:
        return _empty(context_size)
    stream = _document_stream(pieces, indices, bos_id, special_ids)
    n_stream = stream["tokens_S"].numel()
    n_full = n_stream // chunk
    n = n_full if pad_id is None or n_stream % chunk == 0 else n_full + 1
    if max_contexts is not None:
        n = min(n, max_contexts)
    if n == 0:
        return _empty(context_size)
    pad = n * chunk - n_stream
    if pad > 0:
        stream = _pad_stream(stream, pad, pad_id)
    return {
        "tokens_NT": _cut(stream["tokens_S"], n, chunk, bos_id),
        "doc_start_NT": _cut(stream["doc_start_S"], n, chunk, False),
        "position_NT": _cut(stream["position_S"], n, chunk, 0),
        "special_NT": _cut(stream["special_S"], n, chunk, True),
        "doc_index_NT": _cut(stream["doc_index_S"], n, chunk, -1),
    }


def _nonempty_documents(
    docs_tokens: Iterable[Sequence[int] | torch.Tensor], limit: int | None
) -> tuple[list[torch.Tensor], list[int]]:
    """The non-empty documents as flat int64 tensors and their indices in `docs_tokens`, converted
    until their stream (a BOS each) holds `limit` tokens (None: all of them)."""
    pieces, indices, total = [], [], 0
    for index, doc in enumerate(docs_tokens):
        doc_L = torch.as_tensor(doc, dtype=torch.int64).reshape(-1)
        if doc_L.numel() == 0:
            continue
        pieces.append(doc_L)
        indices.append(index)
        total += doc_L.numel() + 1
        if limit is not None and total >= limit:
            break
    return pieces, indices


def _document_stream(
    pieces: list[torch.Tensor], indices: list[int], bos_id: int, special_ids: Iterable[int]
) -> dict[str, torch.Tensor]:
    """The stream of S tokens, BOS then the document for every document, and its per-token fields
    (tokens_S, doc_start_S, position_S, special_S, doc_index_S)."""
    seg_len_M = torch.tensor([piece.numel() for piece in pieces]) + 1
    seg_start_M = torch.cumsum(seg_len_M, 0) - seg_len_M  # index of each document's BOS
    bos_S = torch.full((1,), bos_id, dtype=torch.int64)
    tokens_S = torch.cat([t for piece in pieces for t in (bos_S, piece)])
    offset_S = torch.arange(tokens_S.numel()) - torch.repeat_interleave(seg_start_M, seg_len_M)
    is_bos_S = offset_S == 0  # by layout, not by id: a document may contain the BOS id itself
    return {
        "tokens_S": tokens_S,
        "doc_start_S": offset_S == 1,
        "position_S": (offset_S - 1).clamp(min=0),
        "special_S": is_bos_S | _isin(tokens_S, special_ids),
        "doc_index_S": torch.repeat_interleave(torch.tensor(indices, dtype=torch.int64), seg_len_M),
    }


def _pad_stream(stream: dict[str, torch.Tensor], pad: int, pad_id: int | None) -> dict[str, torch.Tensor]:
    """The stream with `pad` padding tokens appended: special, position 0, in no document."""
    return {
        "tokens_S": torch.cat([stream["tokens_S"], torch.full((pad,), pad_id, dtype=torch.int64)]),
        "doc_start_S": torch.cat([stream["doc_start_S"], torch.zeros(pad, dtype=torch.bool)]),
        "position_S": torch.cat([stream["position_S"], torch.zeros(pad, dtype=torch.int64)]),
        "special_S": torch.cat([stream["special_S"], torch.ones(pad, dtype=torch.bool)]),
        "doc_index_S": torch.cat([stream["doc_index_S"], torch.full((pad,), -1, dtype=torch.int64)]),
    }


def _cut(stream_S: torch.Tensor, n: int, chunk: int, first: int | bool) -> torch.Tensor:
    """The first n chunks of the stream as rows, each behind a leading `first` (BOS's value)."""
    body_NC = stream_S[: n * chunk].reshape(n, chunk)
    return torch.cat([torch.full((n, 1), first, dtype=stream_S.dtype), body_NC], dim=1)


def _isin(tokens_S: torch.Tensor, ids: Iterable[int]) -> torch.Tensor:
    ids = sorted({int(i) for i in ids if i is not None})
    if not ids:
        return torch.zeros_like(tokens_S, dtype=torch.bool)
    return torch.isin(tokens_S, torch.tensor(ids, dtype=torch.int64))


def _empty(context_size: int) -> dict[str, torch.Tensor]:
    return {
        "tokens_NT": torch.zeros(0, context_size, dtype=torch.int64),
        "doc_start_NT": torch.zeros(0, context_size, dtype=torch.bool),
        "position_NT": torch.zeros(0, context_size, dtype=torch.int64),
        "special_NT": torch.zeros(0, context_size, dtype=torch.bool),
        "doc_index_NT": torch.zeros(0, context_size, dtype=torch.int64),
    }


def hook_layer(hook_name: str) -> int:
    """The block index of a transformer-lens hook name, e.g. 3 for `blocks.3.hook_resid_post`."""
    match = _LAYER_RE.match(hook_name)
    if match is None:
        raise ValueError(
            f"cannot tell the layer of hook {hook_name!r}: expected a block hook such as "
            "'blocks.3.hook_resid_post' or 'blocks.0.attn.hook_z'"
        )
    return int(match.group(1))


class LanguageModelSource:
    """Activations of a transformer-lens model at one hook, over fixed packed contexts per split.

    `contexts[split]` is a `pack_contexts` result; `sequences(split, start, stop)` runs the model on
    contexts start..stop-1 (in batches of `batch_size`, only up to the hooked block) and returns a
    SequenceBatch with float32 CPU activations acts_BTD. `describe` must hold `kind` (one of
    LANGUAGE_MODEL_KINDS); it is recorded in the store's manifest together with the hook and context counts.
    """

    ground_truth = None

    def __init__(
        self,
        model: Any,
        hook_name: str,
        contexts: Mapping[str, Mapping[str, torch.Tensor]],
        batch_size: int,
        device: str | torch.device,
        describe: Mapping[str, Any],
    ) -> None:
        self.kind = str(describe.get("kind", ""))
        if self.kind not in LANGUAGE_MODEL_KINDS:
            raise ValueError(f"describe['kind'] must be one of {LANGUAGE_MODEL_KINDS}, got {self.kind!r}")
        if hook_name not in model.hook_dict:
            raise ValueError(f"the model has no hook {hook_name!r} (e.g. 'blocks.0.hook_resid_post')")
        self.layer = hook_layer(hook_name)
        if self.layer >= model.cfg.n_layers:
            raise ValueError(f"hook {hook_name!r} is past the model's last block ({model.cfg.n_layers} layers)")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        for split, packed in contexts.items():
            missing = set(PACKED_KEYS) - set(packed)
            if missing:
                raise ValueError(f"contexts[{split!r}] lacks {sorted(missing)}; build it with pack_contexts")
        self.model = model.eval()
        self.hook_name = hook_name
        self.contexts = {split: dict(packed) for split, packed in contexts.items()}
        self.batch_size = batch_size
        self.device = torch.device(device)
        self._describe = dict(describe)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)

    def n_sequences(self, split: str) -> int:
        """Contexts available in a split."""
        return int(self._split(split)["tokens_NT"].shape[0])

    def describe(self) -> dict[str, Any]:
        """What the manifest records about this source."""
        return {
            **self._describe,
            "hook_name": self.hook_name,
            "d_model": self.d_model,
            "context_size": int(next(iter(self.contexts.values()))["tokens_NT"].shape[1]) if self.contexts else None,
            "n_contexts": {split: self.n_sequences(split) for split in self.contexts},
        }

    def sequences(self, split: str, start: int, stop: int, with_true_codes: bool = True) -> SequenceBatch:
        """Contexts [start, stop) of `split` with their activations at the hook (no ground truth)."""
        packed = self._split(split)
        n = packed["tokens_NT"].shape[0]
        if not 0 <= start <= stop <= n:
            raise ValueError(
                f"sequences [{start}, {stop}) of split {split!r} requested, but it has {n} contexts; "
                "ask for fewer sequences or give the source more text"
            )
        tokens_BT = packed["tokens_NT"][start:stop]
        acts = [self.activations(tokens_BT[lo : lo + self.batch_size]) for lo in range(0, stop - start, self.batch_size)]
        T = tokens_BT.shape[1]
        acts_BTD = torch.cat(acts) if acts else torch.zeros(0, T, self.d_model)
        return SequenceBatch(
            acts_BTD=acts_BTD,
            doc_start_BT=packed["doc_start_NT"][start:stop].clone(),
            position_BT=packed["position_NT"][start:stop].clone(),
            special_BT=packed["special_NT"][start:stop].clone(),
            tokens_BT=tokens_BT.clone(),
            doc_id_BT=split_document_ids(split, packed["doc_index_NT"][start:stop]),
        )

    def activations(self, tokens_BT: torch.Tensor) -> torch.Tensor:
        """float32 CPU activations (B, T, D) at the hook; blocks after the hooked one never run."""
        from tsae_core.sources.text_contexts import hook_activations

        return hook_activations(self.model, self.hook_name, tokens_BT, stop_at_layer=self.layer + 1)

    def _split(self, split: str) -> dict[str, torch.Tensor]:
        if split not in self.contexts:
            raise KeyError(f"no split {split!r}; this source has {sorted(self.contexts)}")
        return self.contexts[split]
