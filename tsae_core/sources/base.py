"""The unit of data every source produces and every loader yields: whole sequences."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class SequenceBatch:
    """A batch of whole contexts, kept in order so temporal losses see adjacent positions.

    acts_BTD       activations (raw units, before the dataset scaling factor)
    doc_start_BT   True where a document begins (a boundary, like BOS)
    position_BT    position of each token within its document (0 at a document start)
    special_BT     True at special tokens (BOS/EOS/pad) that losses and metrics exclude
    tokens_BT      token ids, for language-model sources (None for synthetic data)
    true_codes_BTG ground-truth feature activations (synthetic eval split only, else None)
    doc_id_BT      int64 id of the document each token belongs to, unique across the whole store
                   (a document continues across contexts, shards and batches under one id; -1 at
                   tokens outside any document, e.g. a context's leading BOS). None for a batch made
                   by hand: `document_ids_BT` then falls back to one id per document of each sequence.
    """

    acts_BTD: torch.Tensor
    doc_start_BT: torch.Tensor
    position_BT: torch.Tensor
    special_BT: torch.Tensor
    tokens_BT: torch.Tensor | None = None
    true_codes_BTG: torch.Tensor | None = None
    doc_id_BT: torch.Tensor | None = None

    @property
    def mask_BT(self) -> torch.Tensor:
        """True at the tokens that count (not special)."""
        return ~self.special_BT

    @property
    def document_ids_BT(self) -> torch.Tensor:
        """(B, T) int64 document ids: `doc_id_BT`, or for a batch without them one id per document of
        each sequence (documents that run across sequences then get several ids)."""
        if self.doc_id_BT is not None:
            return self.doc_id_BT
        return sequence_document_ids(self.doc_start_BT)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> SequenceBatch:
        # to a GPU through pinned memory, asynchronously: the copy overlaps the work already queued
        pinned = torch.device(device).type == "cuda"

        def move(t: torch.Tensor | None, cast: bool = False) -> torch.Tensor | None:
            if t is None:
                return None
            if pinned and t.device.type == "cpu" and not t.is_pinned():
                t = t.pin_memory()
            return t.to(device=device, dtype=dtype if cast and dtype is not None else t.dtype, non_blocking=pinned)

        return replace(
            self,
            acts_BTD=move(self.acts_BTD, cast=True),
            doc_start_BT=move(self.doc_start_BT),
            position_BT=move(self.position_BT),
            special_BT=move(self.special_BT),
            tokens_BT=move(self.tokens_BT),
            true_codes_BTG=move(self.true_codes_BTG, cast=True),
            doc_id_BT=move(self.doc_id_BT),
        )

    def pinned(self) -> SequenceBatch:
        """The batch in page-locked host memory, ready for an asynchronous copy to a GPU."""
        return SequenceBatch(**{f.name: _apply(getattr(self, f.name), torch.Tensor.pin_memory) for f in fields(self)})

    def slice(self, lo: int, hi: int) -> SequenceBatch:
        """Sequences lo..hi-1 of the batch."""
        return SequenceBatch(**{f.name: _apply(getattr(self, f.name), lambda t: t[lo:hi]) for f in fields(self)})

    @staticmethod
    def concat(parts: list[SequenceBatch]) -> SequenceBatch:
        """Batches stacked along the sequence axis."""
        if len(parts) == 1:
            return parts[0]
        return SequenceBatch(**{
            f.name: None if getattr(parts[0], f.name) is None else torch.cat([getattr(p, f.name) for p in parts])
            for f in fields(parts[0])
        })

    @property
    def n_sequences(self) -> int:
        return self.acts_BTD.shape[0]


def sequence_document_ids(doc_start_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) int64: a distinct id per document of each sequence of the batch (rows never share one)."""
    B, T = doc_start_BT.shape
    row_B1 = torch.arange(B, device=doc_start_BT.device)[:, None] * (T + 1)
    return doc_start_BT.long().cumsum(1) + row_B1


SPLIT_CODES = {"train": 0, "eval": 1}
"""Document ids carry their split in their high bits (`split_document_ids`), so train and eval never share one."""
DOC_ID_SPLIT_SHIFT = 40


def split_document_ids(split: str, index: torch.Tensor) -> torch.Tensor:
    """Store-wide document ids from a source's per-split document index (-1 stays -1: outside any document)."""
    code = SPLIT_CODES.get(split, len(SPLIT_CODES))
    return torch.where(index >= 0, index + (code << DOC_ID_SPLIT_SHIFT), torch.full_like(index, -1))


def _apply(t: torch.Tensor | None, fn) -> torch.Tensor | None:
    return None if t is None else fn(t)
