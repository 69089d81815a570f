"""The examples an explainer and a scorer see, drawn as SAEBench's autointerp draws them.

Scan. The SAE runs on whole sequences of the store's eval split (at most `max_tokens` tokens), so a
sequence-aware variant's code at a token is the one it has in its full context; activations at
special tokens (BOS, EOS, padding) are set to 0. A latent is *alive* when it fires (> 0) on more
than `dead_latent_threshold` scanned tokens; `n_latents` of the alive ones are drawn with Python's
`random.Random(seed).sample` (all of them when fewer are alive), as SAEBench draws them.

Per latent, with `b = buffer` (windows of 2b + 1 tokens around a chosen token, chosen tokens at
positions b .. T-b-1 of their sequence):
- top: the `n_top = n_top_ex_for_generation + n_top_ex_for_scoring` largest activations, greedily
  in decreasing order, skipping any token within b of one already chosen in the same sequence;
- threshold: `act_threshold_frac` x the largest activation in the top windows; a token is active
  above it; a sequence (window) is a positive when one of its tokens is active;
- importance-weighted (iw): `n_iw = n_iw_sampled_ex_for_generation + n_iw_sampled_ex_for_scoring`
  tokens drawn without replacement with probability proportional to the squared activation, among
  tokens below the smallest top-example activation (so disjoint from the top examples); a latent with
  nothing there, or fewer such tokens than n_iw, is skipped (SAEBench skips the first and crashes on
  the second);
- random: `n_random_ex_for_scoring` (sequence, token) pairs uniform over the scanned sequences and
  positions b .. T-b-1;
- a random permutation splits the top examples into generation and scoring ones, another the iw
  ones; the explainer's examples are sorted by their largest activation (decreasing), the scorer's
  are shuffled.

Random sequences are labelled by their activations (positive when the latent fires in them) with
`random_example_labels: activations`; SAEBench labels them all negative (`saebench`).

Deviations from SAEBench, none in the distribution of what is drawn: each latent has its own
generators (seeded from `seed` and the latent), so a latent's examples do not depend on which
others are drawn; ties among equal activations are broken by position; activations are kept in
bfloat16 as SAEBench keeps them.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from tsae_core.config import AutointerpConfig
from tsae_core.progress import tqdm
from tsae_core.seeds import derive_seed


@dataclass
class Example:
    """One sequence window shown to the explainer or the scorer."""

    kind: str
    """`top`, `iw` (importance-weighted) or `random`."""
    sequence: int
    """Row among the scanned eval sequences."""
    position: int
    """The chosen token (the centre of the default window)."""
    start: int
    stop: int
    """The window shown: tokens start .. stop-1 of the sequence."""
    acts: list[float]
    """The latent's activation on each token of the window."""
    threshold: float
    """Tokens above it are active (marked for the explainer)."""
    labelled_by_activation: bool = True
    """False for a random example under SAEBench's labels (never a positive)."""

    @property
    def active(self) -> list[bool]:
        return [a > self.threshold for a in self.acts]

    @property
    def is_positive(self) -> bool:
        """What the scorer should answer: does the latent fire in this window?"""
        return self.labelled_by_activation and any(self.active)

    @property
    def max_act(self) -> float:
        return max(self.acts) if self.acts else 0.0

    def widened(self, before: int, acts_T: torch.Tensor) -> Example:
        """The same example shown from `before` tokens before its chosen token (cut at the start of the
        sequence) to the end of its default window, with its activations there (`acts_T`, the latent
        on the whole sequence)."""
        start = max(0, self.position - before)
        acts = acts_T[start:self.stop].float().tolist()
        return Example(self.kind, self.sequence, self.position, start, self.stop, acts, self.threshold,
                       self.labelled_by_activation)


@dataclass
class LatentExamples:
    latent: int
    generation: list[Example]
    """Top then iw examples for the explainer, by decreasing largest activation."""
    scoring: list[Example]
    """Top, iw and random examples for the scorer, shuffled."""
    example_response: list[int]
    """The sorted random numbers the scorer's prompt shows as the form of an answer (SAEBench's)."""


@dataclass
class Scan:
    """What the scan of the eval split keeps: the sampled latents' activations and the tokens."""

    latents: list[int]
    """The sampled latents, in the order drawn."""
    acts_NTL: torch.Tensor
    """(N, T, L) bfloat16 activations of the sampled latents, 0 at special tokens."""
    special_NT: torch.Tensor
    tokens_NT: torch.Tensor | None
    """Token ids (None for the synthetic source)."""
    true_active_NTG: torch.Tensor | None
    """(N, T, G) bool, where the synthetic source's true features fire (None without a ground truth)."""
    fire_counts_F: torch.Tensor
    """Scanned non-special tokens on which each latent fires."""
    n_alive: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_sequences(self) -> int:
        return self.acts_NTL.shape[0]

    @property
    def n_tokens(self) -> int:
        return self.acts_NTL.shape[0] * self.acts_NTL.shape[1]


def _batches(store: Any, n_sequences: int, batch_sequences: int):
    seen = 0
    for batch in store.split("eval").batches(batch_sequences, shuffle=False):
        if seen >= n_sequences:
            return
        if seen + batch.n_sequences > n_sequences:
            batch = batch.slice(0, n_sequences - seen)
        seen += batch.n_sequences
        yield batch


@torch.no_grad()
def scan(sae: Any, store: Any, cfg: AutointerpConfig, batch_sequences: int = 64, progress: bool = True,
         with_truth: bool = False) -> Scan:
    """Run the SAE over the eval split (two passes: firing counts of every latent, then the
    activations of the sampled ones) and draw the latents (see the module docstring)."""
    device = next(sae.parameters()).device
    n = min(store.split("eval").n_sequences, max(1, cfg.max_tokens // store.context_size))
    F = sae.cfg.d_sae

    def features(batch):
        b = batch.to(device)
        f = sae(b.acts_BTD, b.mask_BT, b.doc_start_BT, b.position_BT).features.float()
        return f.masked_fill(~b.mask_BT[..., None], 0.0).cpu()

    counts = torch.zeros(F, dtype=torch.long)
    specials, tokens, truth = [], [], []
    for batch in tqdm(_batches(store, n, batch_sequences), desc="autointerp scan (counts)", disable=not progress,
                      total=math.ceil(n / batch_sequences)):
        counts += (features(batch) > 0).sum((0, 1))
        specials.append(batch.special_BT.bool())
        if batch.tokens_BT is not None:
            tokens.append(batch.tokens_BT.long())
        if with_truth and batch.true_codes_BTG is not None:
            truth.append(batch.true_codes_BTG > 0)
    alive = torch.nonzero(counts > cfg.dead_latent_threshold).squeeze(1).tolist()
    latents = alive if len(alive) <= cfg.n_latents else random.Random(cfg.seed).sample(alive, k=cfg.n_latents)
    index = torch.tensor(latents, dtype=torch.long)
    parts = [features(batch)[..., index].to(torch.bfloat16)
             for batch in tqdm(_batches(store, n, batch_sequences), desc="autointerp scan (latents)", disable=not progress,
                               total=math.ceil(n / batch_sequences))]
    T = store.context_size
    return Scan(
        latents=latents,
        acts_NTL=torch.cat(parts) if parts else torch.zeros(0, T, 0, dtype=torch.bfloat16),
        special_NT=torch.cat(specials),
        tokens_NT=torch.cat(tokens) if tokens else None,
        true_active_NTG=torch.cat(truth) if truth else None,
        fire_counts_F=counts,
        n_alive=len(alive),
    )


def top_indices(x_NT: torch.Tensor, k: int, buffer: int) -> list[tuple[int, int]]:
    """(sequence, position) of the k largest values at positions buffer .. T-buffer-1, no two
    within `buffer` of each other in one sequence; larger first, ties by position. Zero values come
    last, as in SAEBench (a latent with few firing sites gets silent windows among its top ones)."""
    N, T = x_NT.shape
    inner = x_NT[:, buffer:T - buffer].float()
    W = inner.shape[1]
    flat = inner.reshape(-1)
    positive = torch.nonzero(flat > 0).squeeze(1)
    order = positive[torch.sort(flat[positive], descending=True, stable=True).indices].tolist()
    chosen: list[tuple[int, int]] = []
    blocked: set[tuple[int, int]] = set()

    def take(candidates) -> None:
        for idx in candidates:
            if len(chosen) == k:
                return
            row, col = divmod(int(idx), W)
            col += buffer
            if (row, col) in blocked:
                continue
            chosen.append((row, col))
            blocked.update((row, col + d) for d in range(-buffer, buffer + 1))

    take(order)
    if len(chosen) < k:
        take(torch.nonzero(flat <= 0).squeeze(1).tolist())
    return chosen


def sample_latent(scan_: Scan, column: int, cfg: AutointerpConfig) -> LatentExamples | str:
    """The examples of the scan's `column`-th latent, or the reason it cannot be sampled."""
    latent = scan_.latents[column]
    x_NT = scan_.acts_NTL[..., column].float()
    N, T = x_NT.shape
    b = cfg.buffer
    if T - 2 * b < 1:
        return f"context of {T} tokens is too short for windows of buffer {b}"
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, "autointerp", latent))
    py = random.Random(derive_seed(cfg.seed, "autointerp-shuffle", latent))
    n_top = cfg.n_top_ex_for_generation + cfg.n_top_ex_for_scoring
    n_iw = cfg.n_iw_sampled_ex_for_generation + cfg.n_iw_sampled_ex_for_scoring

    rand_rows = torch.randint(0, N, (cfg.n_random_ex_for_scoring,), generator=gen).tolist()
    rand_cols = torch.randint(b, T - b, (cfg.n_random_ex_for_scoring,), generator=gen).tolist()
    top = top_indices(x_NT, n_top, b)
    if len(top) < n_top:
        return f"only {len(top)} non-overlapping windows for {n_top} top examples"
    top_windows = torch.stack([x_NT[r, c - b:c + b + 1] for r, c in top])
    act_threshold = cfg.act_threshold_frac * float(top_windows.max())

    floor = float(min(x_NT[r, c] for r, c in top))
    below = torch.where(x_NT >= floor, 0.0, x_NT)[:, b:T - b]
    if float(below.max()) < 1e-6:
        return "no activation below its top examples' to draw importance-weighted examples from"
    weights = below.reshape(-1).pow(2)
    if int((weights > 0).sum()) < n_iw:
        return f"fewer than {n_iw} activations below its top examples' for the importance-weighted examples"
    W = T - 2 * b
    iw = [divmod(int(i), W) for i in torch.multinomial(weights / weights.sum(), n_iw, replacement=False, generator=gen)]
    iw = [(r, c + b) for r, c in iw]

    top_perm = torch.randperm(n_top, generator=gen).tolist()
    iw_perm = torch.randperm(n_iw, generator=gen).tolist()

    def example(kind: str, r: int, c: int, by_activation: bool = True) -> Example:
        return Example(kind, r, c, c - b, c + b + 1, x_NT[r, c - b:c + b + 1].tolist(), act_threshold, by_activation)

    tops = [example("top", *top[i]) for i in top_perm]
    iws = [example("iw", *iw[i]) for i in iw_perm]
    randoms = [example("random", r, c, cfg.random_example_labels == "activations") for r, c in zip(rand_rows, rand_cols)]
    generation = sorted(tops[:cfg.n_top_ex_for_generation] + iws[:cfg.n_iw_sampled_ex_for_generation],
                        key=lambda e: e.max_act, reverse=True)
    scoring = tops[cfg.n_top_ex_for_generation:] + iws[cfg.n_iw_sampled_ex_for_generation:] + randoms
    py.shuffle(scoring)
    n_score = len(scoring)
    response = sorted(py.sample(range(1, n_score + 1), k=min(cfg.n_correct_for_scoring, n_score)))
    return LatentExamples(latent, generation, scoring, response)
