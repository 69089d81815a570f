"""Document structure of a batch of sequences, for variants whose code at t reads earlier tokens.

A batch holds B sequences of T tokens; a document begins where `doc_start_BT` is True. A token may
read earlier tokens of its own document only: never a later token (causality) and never a token
of an earlier document (a boundary). Every temporal encoder builds on these four functions so that
both rules hold by construction and are tested once.
"""

from __future__ import annotations

import torch


def default_doc_start(B: int, T: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, T) one document per sequence: used when a caller passes no document structure."""
    doc_start_BT = torch.zeros(B, T, dtype=torch.bool, device=device)
    doc_start_BT[:, 0] = True
    return doc_start_BT


def document_ids(doc_start_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) int64: tokens share an id iff they are in one document of one sequence."""
    return doc_start_BT.long().cumsum(dim=1)


def positions_in_document(doc_start_BT: torch.Tensor) -> torch.Tensor:
    """(B, T) int64 steps since the last document start (since the sequence start if none).

    Equals the stored `position_BT` except for a sequence that begins inside a document, whose
    first tokens count from the sequence start: callers that have `position_BT` should pass it."""
    B, T = doc_start_BT.shape
    t_BT = torch.arange(T, device=doc_start_BT.device).expand(B, T)
    last_start_BT = torch.where(doc_start_BT, t_BT, torch.zeros_like(t_BT)).cummax(dim=1).values
    return t_BT - last_start_BT


def causal_window_mask(doc_start_BT: torch.Tensor, window: int, include_self: bool = False) -> torch.Tensor:
    """(B, T, S=T) bool: True where token t may read token s, i.e. t - window <= s < t (s <= t with
    `include_self`) and s is in t's document."""
    B, T = doc_start_BT.shape
    t_T1 = torch.arange(T, device=doc_start_BT.device)[:, None]
    s_1S = torch.arange(T, device=doc_start_BT.device)[None, :]
    lag_TS = t_T1 - s_1S
    in_window_TS = (lag_TS >= (0 if include_self else 1)) & (lag_TS <= window)
    doc_BT = document_ids(doc_start_BT)
    same_doc_BTS = doc_BT[:, :, None] == doc_BT[:, None, :]
    return in_window_TS[None] & same_doc_BTS


def shift_within_document(x_BTF: torch.Tensor, lag: int, doc_start_BT: torch.Tensor) -> torch.Tensor:
    """y[:, t] = x[:, t - lag] where t - lag is in t's document, else 0 (lag >= 0)."""
    if lag == 0:
        return x_BTF
    B, T = doc_start_BT.shape
    if lag >= T:
        return torch.zeros_like(x_BTF)
    doc_BT = document_ids(doc_start_BT)
    same_BT = torch.zeros(B, T, dtype=torch.bool, device=x_BTF.device)
    same_BT[:, lag:] = doc_BT[:, lag:] == doc_BT[:, :-lag]
    shifted = torch.zeros_like(x_BTF)
    shifted[:, lag:] = x_BTF[:, :-lag]
    return shifted * same_BT.unsqueeze(-1).to(x_BTF.dtype)
