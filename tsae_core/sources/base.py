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
    """

    acts_BTD: torch.Tensor
    doc_start_BT: torch.Tensor
    position_BT: torch.Tensor
    special_BT: torch.Tensor
    tokens_BT: torch.Tensor | None = None
    true_codes_BTG: torch.Tensor | None = None

    @property
    def mask_BT(self) -> torch.Tensor:
        """True at the tokens that count (not special)."""
        return ~self.special_BT

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


def _apply(t: torch.Tensor | None, fn) -> torch.Tensor | None:
    return None if t is None else fn(t)
