"""Sparse codes and the sparse training path of the TopK family.

A TopK or BatchTopK SAE keeps k of F codes per token, yet the dense step multiplies every code: the
decoder, its two gradients and the encoder's two gradients each cost 2 N d F FLOPs. Only the encoder's
forward product has to be dense (every pre-activation competes for the top k). The sparse path:

    pre     = (x_n - b_dec) W_enc + b_enc            dense, without autograd (2 N d F)
    kept    = the activation's selection              (row pointers, column indices), no gradient
    values  = pre[kept], differentiable               `linear_picks`: the backward touches only the
                                                      kept columns of W_enc (a sparse product for the
                                                      codes, a dense one over AuxK's dead latents) and b_enc
    x_n^    = sum_e values_e W_dec[col_e] + b_dec     `decode`: an embedding bag; its backward
                                                      writes only the kept rows of W_dec

Codes are kept as compressed rows: `offsets` (N + 1) row pointers into `cols` and `values` (E), the
layout of a CSR matrix and of `embedding_bag`'s bags. Both paths compute the same function and
gradients (tests/test_sparse_codes.py); which one runs is `train.sparse_codes`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F_nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

Pick = Callable[..., torch.Tensor]
"""(cols, offsets, within=None) -> the differentiable pre-activations at those entries (`linear_picks`)."""

MIN_SPARSE_LATENTS = 1024
"""`auto` takes the sparse path from this many latents on, on CPU. Measured (benchmarks/train_step.py
--both-paths, 2 cores, k 32, 1024 tokens, tokens/s sparse / dense): TopK 0.96 at 128 x 512, 1.30 at
128 x 1024, 1.92 at 128 x 2048, 3.3 at 768 x 16384; BatchTopK 0.90, 1.25, 1.65, 3.1."""


@dataclass
class SparseCodes:
    """The kept codes of N rows over F latents in compressed-row form (row r: entries offsets[r]:offsets[r+1])."""

    values: torch.Tensor  # (E,) differentiable
    cols: torch.Tensor  # (E,) long
    offsets: torch.Tensor  # (N + 1,) long
    n_latents: int

    @property
    def n_rows(self) -> int:
        return self.offsets.numel() - 1

    def rows(self) -> torch.Tensor:
        """(E,) the row of every entry."""
        return rows_of(self.offsets)

    def dense(self) -> torch.Tensor:
        """(N, F) with the values in place and zeros elsewhere; differentiable in `values`."""
        out = self.values.new_zeros(self.n_rows, self.n_latents)
        return out.index_put_((self.rows(), self.cols), self.values)


def rows_of(offsets: torch.Tensor) -> torch.Tensor:
    """(E,) the row of every entry of compressed rows with these row pointers."""
    return torch.repeat_interleave(torch.arange(offsets.numel() - 1, device=offsets.device), offsets.diff())


def regular_offsets(n_rows: int, per_row: int, device: torch.device) -> torch.Tensor:
    """Row pointers of rows that each hold `per_row` entries (TopK's k, AuxK's k_aux)."""
    return torch.arange(0, n_rows * per_row + 1, per_row, device=device)


def offsets_from_rows(sorted_rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Row pointers of entries sorted by row."""
    counts = torch.bincount(sorted_rows, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _Part(NamedTuple):
    """One pick's entries and their gradient, left for `_EncoderGradient` by `_Pick.backward`."""

    cols: torch.Tensor  # (E,)
    offsets: torch.Tensor  # (N + 1,)
    g: torch.Tensor  # (E,)
    within: torch.Tensor | None  # (C,) the columns every entry lies in, for a dense product over them; or None


class _EncoderGradient(torch.autograd.Function):
    """The linear encoder's gradient from every entry picked from its pre-activations.

    Its output is a token (a zero scalar) that every `_Pick` takes as input, so autograd runs this
    backward after all of theirs; each pick leaves a `_Part` in `parts`. With G the (N, F) matrix of
    all the picked gradients (entries picked twice add up): dW_enc = (x_n - b_dec)^T G,
    db_enc = column sums of G, db_dec = -W_enc db_enc, since every row's input is shifted by -b_dec.
    The product is one dense-times-sparse product over the picks' compressed rows, plus, for a pick
    confined to a few columns (`within`: AuxK's dead latents, of which k_aux fill a good share), a
    dense product over just those columns: at AuxK's density the dense block is several times faster."""

    @staticmethod
    def forward(ctx, parts, x_n_ND, W_enc_DF, b_enc_F, b_dec_D):
        ctx.parts = parts
        ctx.save_for_backward(x_n_ND, W_enc_DF, b_dec_D)
        return W_enc_DF.new_zeros(())

    @staticmethod
    def backward(ctx, _token_grad):
        x_n_ND, W_enc_DF, b_dec_D = ctx.saved_tensors
        parts, ctx.parts[:] = list(ctx.parts), []
        if not parts:
            return None, None, None, None, None
        grad_W = grad_b_enc = grad_b_dec = None
        if ctx.needs_input_grad[2]:
            x_DN = (x_n_ND.to(W_enc_DF.dtype) - b_dec_D).t()
            grad_W = _compressed_product(x_DN, [p for p in parts if p.within is None], W_enc_DF.shape[1])
            for p in parts:
                if p.within is not None:
                    grad_W.index_add_(1, p.within, x_DN @ _dense_block(p, x_DN.shape[1], W_enc_DF.shape[1]).to(x_DN.dtype))
        if ctx.needs_input_grad[3] or ctx.needs_input_grad[4]:
            cols_E, g_E = torch.cat([p.cols for p in parts]), torch.cat([p.g for p in parts]).to(W_enc_DF.dtype)
            grad_b_enc = torch.zeros(W_enc_DF.shape[1], dtype=g_E.dtype, device=g_E.device).index_add_(0, cols_E, g_E)
            if ctx.needs_input_grad[4]:
                grad_b_dec = -(W_enc_DF @ grad_b_enc)
        return None, None, grad_W, grad_b_enc, grad_b_dec


def _compressed_product(x_DN: torch.Tensor, parts: list[_Part], F: int) -> torch.Tensor:
    """(D, F) x_DN @ G, G the sparse (N, F) matrix of these parts' entries (zeros without any)."""
    D, N = x_DN.shape
    if not parts:
        return x_DN.new_zeros(D, F)
    if len(parts) == 1:  # already compressed rows
        offsets, cols_E, g_E = parts[0].offsets, parts[0].cols, parts[0].g
    else:  # one set of compressed rows from all the parts
        rows = torch.cat([rows_of(p.offsets) for p in parts])
        order = torch.argsort(rows, stable=True)
        offsets = offsets_from_rows(rows[order], N)
        cols_E, g_E = torch.cat([p.cols for p in parts])[order], torch.cat([p.g for p in parts])[order]
    G = torch.sparse_csr_tensor(offsets, cols_E, g_E.to(x_DN.dtype), (N, F), check_invariants=False)
    return x_DN @ G


def _dense_block(part: _Part, N: int, F: int) -> torch.Tensor:
    """(N, C) the part's gradients placed at their rows and their columns' positions in `within`."""
    position_F = torch.full((F,), -1, dtype=torch.long, device=part.cols.device)
    position_F[part.within] = torch.arange(part.within.numel(), device=part.cols.device)
    block = part.g.new_zeros(N, part.within.numel())
    return block.index_put_((rows_of(part.offsets), position_F[part.cols]), part.g, accumulate=True)


class _Pick(torch.autograd.Function):
    """values_e = pre[row_e, col_e], given pre (no graph); the gradient goes to `_EncoderGradient`."""

    @staticmethod
    def forward(ctx, token, parts, pre_NF, cols_E, offsets, within):
        ctx.parts, ctx.within = parts, within
        ctx.save_for_backward(cols_E, offsets)
        return pre_NF[rows_of(offsets), cols_E]

    @staticmethod
    def backward(ctx, g_E):
        cols_E, offsets = ctx.saved_tensors
        ctx.parts.append(_Part(cols_E, offsets, g_E, ctx.within))
        return g_E.new_zeros(()), None, None, None, None, None


def linear_picks(pre_NF: torch.Tensor, x_n_ND: torch.Tensor, W_enc_DF: torch.Tensor, b_enc_F: torch.Tensor,
                 b_dec_D: torch.Tensor) -> Pick:
    """pick(cols, offsets, within=None) -> (E,) the pre-activations pre = (x_n - b_dec) W_enc + b_enc
    at those entries, differentiable; the encoder's gradient from all picks of one batch is computed
    once (`_EncoderGradient`). `within`, the few columns (C,) every entry lies in, makes that pick's
    share of it a dense product over them."""
    parts: list = []
    token = _EncoderGradient.apply(parts, x_n_ND.detach(), W_enc_DF, b_enc_F, b_dec_D)
    pre_NF = pre_NF.detach()

    def pick(cols_E: torch.Tensor, offsets: torch.Tensor, within: torch.Tensor | None = None) -> torch.Tensor:
        return _Pick.apply(token, parts, pre_NF, cols_E, offsets, within)

    return pick


def decode(codes: SparseCodes, W_dec_FD: torch.Tensor) -> torch.Tensor:
    """(N, D) sum over each row's entries of value x decoder row (no bias)."""
    return F_nn.embedding_bag(codes.cols, W_dec_FD, codes.offsets, mode="sum", include_last_offset=True,
                              per_sample_weights=codes.values.to(W_dec_FD.dtype))


def use_sparse_path(setting: str, activation: str, d_sae: int, device: torch.device) -> bool:
    """Whether a training step takes the sparse path: `train.sparse_codes` is always, never or auto
    (the TopK family on CPU from MIN_SPARSE_LATENTS latents on). On a GPU auto stays dense: there the
    sparse step was measured at 0.5-0.7x the dense one's tokens/s up to 768 x 16384 and 0.27x at
    2304 x 16384 (H200, bf16), where cuBLAS's dense products cost less than the gathers and scatters."""
    if activation not in ("topk", "batchtopk") or setting == "never":
        return False
    if setting == "always":
        return True
    return device.type == "cpu" and d_sae >= MIN_SPARSE_LATENTS
