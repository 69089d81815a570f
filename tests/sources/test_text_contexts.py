"""One context per labelled text: BOS first, the text cut or padded, padding special."""

from __future__ import annotations

import pytest
import torch

from tsae_core.sources.text_contexts import encode_texts, one_context_per_text, text_contexts
from tsae_core.sources.tinylm import BOS_ID, EOS_ID, ByteTokenizer


def test_one_context_per_text_cuts_and_pads():
    packed = one_context_per_text([[5, 6, 7, 8, 9, 10], [3, 99]], context_size=5, bos=1, specials=[99])
    assert packed["tokens_NT"].tolist() == [[1, 5, 6, 7, 8], [1, 3, 99, 1, 1]]
    assert packed["special_NT"].tolist() == [[True, False, False, False, False], [True, False, True, True, True]]
    assert packed["position_NT"].tolist() == [[0, 0, 1, 2, 3], [0, 0, 1, 0, 0]]
    assert packed["doc_start_NT"][:, 1].all() and packed["doc_start_NT"].sum() == 2


def test_byte_texts_and_empty_text_refused():
    tok = ByteTokenizer()
    packed = text_contexts(tok, ["ab", "xyz"], context_size=4)
    assert packed["tokens_NT"].tolist() == [[BOS_ID, 97, 98, BOS_ID], [BOS_ID, 120, 121, 122]]
    assert encode_texts(tok, ["a"]) == [[97]]
    assert EOS_ID in tok.all_special_ids
    with pytest.raises(ValueError, match="no tokens"):
        text_contexts(tok, [""], context_size=4)
    assert torch.equal(packed["special_NT"][:, 0], torch.ones(2, dtype=torch.bool))
