"""Document structure helpers: causality and boundaries by construction."""

import torch

from tsae_core.sequence import (
    causal_window_mask,
    default_doc_start,
    document_ids,
    positions_in_document,
    shift_within_document,
)


def _starts(*rows: list[int], T: int = 8) -> torch.Tensor:
    d = torch.zeros(len(rows), T, dtype=torch.bool)
    for i, starts in enumerate(rows):
        d[i, starts] = True
    return d


def test_positions_and_ids_restart_at_each_document():
    d = _starts([0, 3], [5])
    assert positions_in_document(d).tolist() == [[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 0, 1, 2]]
    ids = document_ids(d)
    assert ids[0, 2] != ids[0, 3] and ids[1, 4] != ids[1, 5] and ids[1, 0] == ids[1, 4]
    assert default_doc_start(2, 4).sum().item() == 2


def test_causal_window_mask_reads_only_earlier_tokens_of_the_document():
    d = _starts([0, 4])
    m = causal_window_mask(d, window=2)[0]
    assert m[3].nonzero().flatten().tolist() == [1, 2]  # t - 2 .. t - 1
    assert m[4].nonzero().numel() == 0  # a document start reads nothing
    assert m[6].nonzero().flatten().tolist() == [4, 5]  # never position 3 (previous document)
    assert not bool(m.triu().any())  # nothing at or after t
    assert causal_window_mask(d, window=2, include_self=True)[0, 4].nonzero().flatten().tolist() == [4]


def test_shift_within_document_zeroes_what_crosses_a_boundary():
    d = _starts([0, 4])
    x = torch.arange(1.0, 9.0).view(1, 8, 1)
    assert shift_within_document(x, 1, d).flatten().tolist() == [0, 1, 2, 3, 0, 5, 6, 7]
    assert shift_within_document(x, 3, d).flatten().tolist() == [0, 0, 0, 1, 0, 0, 0, 5]
    assert shift_within_document(x, 9, d).abs().sum() == 0
