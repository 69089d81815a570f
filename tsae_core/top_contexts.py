"""Top-activating contexts of latents on language-model sources, collected in one streaming pass.

For every latent, `TopContexts` keeps the n evaluated tokens where it is largest, at most one per
sequence (the sequence's maximum, so a latent that stays on for a run of tokens is not shown n
times with the same text), together with the window of tokens around each — `before` tokens before
and `after` after, cut at the edges of the token's document (a document's own BOS counts as its
first token) — and the latent's activation on every token of that window.
"""

from __future__ import annotations

from typing import Any

import torch

NO_TOKEN = -1
"""Token id of window slots outside the context's document (dropped from saved contexts)."""


class TopContexts:
    """Streaming top-n contexts per latent: values (n, F), their sequence and position, and windows."""

    def __init__(self, n_latents: int, n_top: int, before: int, after: int) -> None:
        self.n_top, self.before, self.after = n_top, before, after
        width = before + after + 1
        self.value_NF = torch.full((n_top, n_latents), -torch.inf)
        self.sequence_NF = torch.full((n_top, n_latents), -1, dtype=torch.long)
        self.position_NF = torch.full((n_top, n_latents), -1, dtype=torch.long)
        self.tokens_NFW = torch.full((n_top, n_latents, width), NO_TOKEN, dtype=torch.long)
        self.acts_NFW = torch.zeros(n_top, n_latents, width)
        self.n_sequences = 0

    @torch.no_grad()
    def update(self, features_BTF: torch.Tensor, tokens_BT: torch.Tensor, doc_start_BT: torch.Tensor,
               mask_BT: torch.Tensor | None = None) -> None:
        """Add a batch of consecutive sequences (numbered on from the sequences seen so far)."""
        f_BTF = features_BTF.float().cpu()
        special_BT = None if mask_BT is None else ~mask_BT.bool().cpu()
        centre_BTF = f_BTF if special_BT is None else f_BTF.masked_fill(special_BT[..., None], -torch.inf)  # never a special token
        best_BF, pos_BF = centre_BTF.max(1)
        value_nF, seq_nF = best_BF.topk(min(self.n_top, len(best_BF)), dim=0)
        pos_nF = pos_BF.gather(0, seq_nF)
        doc_BT = document_ids(doc_start_BT.cpu(), special_BT)
        tokens_nFW, acts_nFW = self._windows(f_BTF, tokens_BT.cpu(), doc_BT, seq_nF, pos_nF)
        self._merge(value_nF, seq_nF + self.n_sequences, pos_nF, tokens_nFW, acts_nFW)
        self.n_sequences += len(best_BF)

    def _windows(self, f_BTF: torch.Tensor, tokens_BT: torch.Tensor, doc_BT: torch.Tensor,
                 seq_nF: torch.Tensor, pos_nF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and activations of each latent on the window around (sequence, position), (n, F, W)."""
        T, F = f_BTF.shape[1:]
        t_nFW = pos_nF[..., None] + torch.arange(-self.before, self.after + 1)
        inside = (t_nFW >= 0) & (t_nFW < T)
        t_nFW = t_nFW.clamp(0, T - 1)
        b_nFW = seq_nF[..., None].expand_as(t_nFW)
        inside &= doc_BT[b_nFW, t_nFW] == doc_BT[seq_nF, pos_nF][..., None]  # the centre's document only
        latent_nFW = torch.arange(F)[None, :, None].expand_as(t_nFW)
        tokens_nFW = torch.where(inside, tokens_BT[b_nFW, t_nFW], NO_TOKEN)
        acts_nFW = torch.where(inside, f_BTF[b_nFW, t_nFW, latent_nFW], 0.0)
        return tokens_nFW, acts_nFW

    def _merge(self, value_nF, seq_nF, pos_nF, tokens_nFW, acts_nFW) -> None:
        value = torch.cat([self.value_NF, value_nF])
        keep_NF = value.topk(self.n_top, dim=0).indices
        self.value_NF = value.gather(0, keep_NF)
        self.sequence_NF = torch.cat([self.sequence_NF, seq_nF]).gather(0, keep_NF)
        self.position_NF = torch.cat([self.position_NF, pos_nF]).gather(0, keep_NF)
        W = tokens_nFW.shape[-1]
        keep_NFW = keep_NF[..., None].expand(-1, -1, W)
        self.tokens_NFW = torch.cat([self.tokens_NFW, tokens_nFW]).gather(0, keep_NFW)
        self.acts_NFW = torch.cat([self.acts_NFW, acts_nFW]).gather(0, keep_NFW)

    def contexts(self, latent: int, tokenizer: Any = None) -> list[dict[str, Any]]:
        """The latent's top contexts, strongest first (only those where it fired): sequence, position
        and activation of the centre token; `token_ids`, `tokens` (display strings, with `tokenizer`)
        and `activations` along the window; `marked`, the centre's index in the window."""
        out = []
        for i in range(self.n_top):
            value = float(self.value_NF[i, latent])
            if not value > 0:
                continue
            ids, acts = self.tokens_NFW[i, latent], self.acts_NFW[i, latent]
            keep = ids != NO_TOKEN
            token_ids = ids[keep].tolist()
            out.append({
                "sequence": int(self.sequence_NF[i, latent]),
                "position": int(self.position_NF[i, latent]),
                "activation": value,
                "marked": int(keep[: self.before].sum()),
                "token_ids": token_ids,
                "tokens": token_strings(tokenizer, token_ids) if tokenizer is not None else [str(t) for t in token_ids],
                "activations": [round(a, 4) for a in acts[keep].tolist()],
            })
        return out


def document_ids(doc_start_BT: torch.Tensor, special_BT: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) number of the document each token belongs to, counted along the sequence. A special
    token right before a document's first token (its BOS) opens that document."""
    start_BT = doc_start_BT.bool().clone()
    if special_BT is not None:
        own_bos_BT = torch.zeros_like(start_BT)
        own_bos_BT[:, :-1] = special_BT[:, :-1].bool() & start_BT[:, 1:]
        start_BT[:, 1:] &= ~own_bos_BT[:, :-1]
        start_BT |= own_bos_BT
    return start_BT.long().cumsum(1)


_VISIBLE = str.maketrans({"\n": "↵", "\t": "⇥", "\r": ""})


def token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    """How each token reads on its own: decoded alone, special tokens by name (`<bos>`), line breaks
    and tabs as ↵ and ⇥ so a context stays on one line, and a token that is only part of a character
    (one byte of a multi-byte UTF-8 character) by its bytes, `<0xE2>`, rather than as �."""
    names = {getattr(tokenizer, f"{n}_token_id", None): f"<{n}>" for n in ("bos", "eos", "pad")}
    return [names.get(i) or _readable(tokenizer, i) for i in ids]


def _readable(tokenizer: Any, token_id: int) -> str:
    text = tokenizer.decode([token_id])
    if "\ufffd" not in text:
        return text.translate(_VISIBLE)
    to_token = getattr(tokenizer, "convert_ids_to_tokens", None)  # a byte-fallback token's own name
    return to_token(token_id) if to_token is not None else f"<0x{token_id:02X}>"
