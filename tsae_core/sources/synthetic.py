"""The synthetic temporal benchmark (docs/sae-family.md, "The synthetic benchmark"): known feature directions with known temporal statistics.

Generative model, for G = n_fast + n_slow + n_positional true features with unit directions d_g:

    x_t = sum_g c_{t,g} d_g + eps_t,      eps_t ~ N(0, noise_std^2 I_D)
    c_{t,g} = z_{t,g} m_{t,g},            z in {0, 1} (firing), m > 0 (log-normal magnitude)

Firing z_{t,g} by kind:
  fast        z ~ Bernoulli(r_g) i.i.d. per token, r_g geometric (Zipf-like) from fast_max_rate to
              fast_min_rate; with hierarchy, r_g * (1 + boost) while the slow parent is on.
  slow        a two-state Markov chain per document: P(on -> off) = b = 1/L_g (mean on-run L_g),
              P(off -> on) = a = p b / (1 - p) for stationary rate p = a / (a + b); every document
              starts the chain from its stationary distribution. The magnitude is drawn once per run.
  positional  z ~ Bernoulli(positional_rate) while the position s in the document lies in
              [start_g, start_g + positional_width).

Documents have lengths L = m + Geometric (mean mean_doc_length, minimum m = min(4, mean)) and are
packed back to back into streams of CONTEXTS_PER_STREAM contexts, cut into contexts of
context_size tokens (a document continues into the next context of its stream). Each stream begins
at an equilibrium point of the renewal process (inside a document, at a length-biased age), so every
token is a stationary draw and the theoretical rates in `GroundTruth.rates_G` hold at every position.

Every token records the id of its document (unique across the store: split, stream, ordinal in the
stream), so a document that runs across contexts keeps one id.

Determinism: sequences come in blocks of SEQUENCES_PER_BLOCK, each drawn from its own generator
seeded by (seed, split, block index). Any range of sequences is therefore reproducible on its own,
independently of batch or shard sizes — which is what makes a harvest resumable shard by shard.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from tsae_core.seeds import derive_seed
from tsae_core.source_config import SyntheticConfig
from tsae_core.sources.base import SequenceBatch, split_document_ids
from tsae_core.sources.ground_truth import GroundTruth

KINDS = ("fast", "slow", "positional")
SEQUENCES_PER_BLOCK = 64
"""Sequences drawn from one generator; a block holds SEQUENCES_PER_BLOCK / CONTEXTS_PER_STREAM streams."""
CONTEXTS_PER_STREAM = 4
"""Consecutive contexts cut from one stream of packed documents."""
_BLOCKS_PER_CHUNK = 8  # blocks rendered together: bounds memory, amortises the Markov time loop
_SLOW_JITTER = 0.1  # log-std of the per-token jitter on a slow feature's per-run magnitude
_DOC_BITS = 20  # a document id is (stream << _DOC_BITS) + its ordinal in the stream


@dataclass(frozen=True)
class _Dynamics:
    """Per-feature parameters of the generator (the parts of the ground truth it samples from)."""

    fast_lambda_max: torch.Tensor  # (n_fast,) Poisson intensity per token at the highest rate
    fast_accept: torch.Tensor  # (n_fast,) thinning probability where a hierarchical parent is off
    slow_rate: torch.Tensor  # (n_slow,) stationary rate p
    slow_on: torch.Tensor  # (n_slow,) a = P(off -> on)
    slow_off: torch.Tensor  # (n_slow,) b = P(on -> off) = 1 / mean run
    pos_start: torch.Tensor  # (n_positional,) window start
    child: torch.Tensor  # (n_children,) fast indices with a slow parent
    parent: torch.Tensor  # (n_children,) their parents, as slow indices


def _spread(hi: float, lo: float, n: int) -> torch.Tensor:
    """n values geometrically spaced from hi down to lo (Zipf-like when read as rates)."""
    if n <= 1:
        return torch.full((n,), hi, dtype=torch.float64)
    return hi * (lo / hi) ** torch.linspace(0.0, 1.0, n, dtype=torch.float64)


def doc_length_survival(cfg: SyntheticConfig, positions: torch.Tensor) -> torch.Tensor:
    """P(L > s) for document length L = m + Geometric(q), m = min(4, mean), q = 1/(1 + mean - m)."""
    m = min(4, cfg.mean_doc_length)
    q = 1.0 / (1.0 + cfg.mean_doc_length - m)
    tail = (1.0 - q) ** (positions - m + 1).clamp(min=0).double()
    return torch.where(positions < m, torch.ones_like(tail), tail)


def build_ground_truth(cfg: SyntheticConfig, seed: int) -> tuple[GroundTruth, _Dynamics]:
    """Draw directions and per-feature statistics; everything derives from (seed, 'ground_truth')."""
    g = torch.Generator().manual_seed(derive_seed(seed, "synthetic", "ground_truth"))
    n_f, n_s, n_p = cfg.n_fast, cfg.n_slow, cfg.n_positional
    directions_GD = torch.randn(cfg.n_features, cfg.d_model, generator=g, dtype=torch.float64)
    directions_GD = (directions_GD / directions_GD.norm(dim=1, keepdim=True)).float()

    fast_rate = _spread(cfg.fast_max_rate, cfg.fast_min_rate, n_f)
    # runs are permuted against rates so that rare-and-long, rare-and-short, ... slow features all exist
    slow_run = _spread(cfg.slow_min_run, cfg.slow_max_run, n_s)[torch.randperm(n_s, generator=g)]
    slow_off = 1.0 / slow_run
    p = _spread(cfg.slow_max_rate, cfg.slow_min_rate, n_s).clamp(max=1 - 1e-6)
    slow_on = (p * slow_off / (1 - p)).clamp(max=1.0)  # a <= 1 caps p at L/(L+1)
    slow_rate = slow_on / (slow_on + slow_off)
    pos_start = torch.div(torch.arange(n_p) * cfg.positional_max_position, max(n_p, 1), rounding_mode="floor")

    n_children = min(n_f, 2 * n_s) if cfg.hierarchy_boost > 0 else 0
    child = torch.randperm(n_f, generator=g)[:n_children].sort().values
    parent = torch.randperm(n_children, generator=g) // 2  # ~2 children per slow parent

    # stationary rates: a child fires at r (parent off) or min(1, r (1 + boost)) (parent on)
    fast_stat = fast_rate.clone()
    boosted = (fast_rate[child] * (1 + cfg.hierarchy_boost)).clamp(max=1.0)
    fast_stat[child] = fast_rate[child] * (1 - slow_rate[parent]) + boosted * slow_rate[parent]
    window_G = torch.arange(cfg.positional_width)[None, :] + pos_start[:, None]  # (n_p, width)
    pos_rate = cfg.positional_rate * doc_length_survival(cfg, window_G).sum(1) / cfg.mean_doc_length
    r = cfg.positional_rate
    pos_run = torch.full((n_p,), (1 - r**cfg.positional_width) / (1 - r) if r < 1 else float(cfg.positional_width))

    parent_G = torch.full((cfg.n_features,), -1, dtype=torch.int64)
    parent_G[child] = parent + n_f
    position_start_G = torch.full((cfg.n_features,), -1, dtype=torch.int64)
    position_start_G[n_f + n_s :] = pos_start
    truth = GroundTruth(
        directions_GD=directions_GD,
        kinds=["fast"] * n_f + ["slow"] * n_s + ["positional"] * n_p,
        rates_G=torch.cat([fast_stat, slow_rate, pos_rate]).float(),
        mean_run_G=torch.cat([1 / (1 - fast_stat.clamp(max=1 - 1e-6)), slow_run, pos_run.double()]).float(),
        parent_G=parent_G,
        position_start_G=position_start_G,
    )
    # Poisson intensities: P(>= 1 event per token) = 1 - exp(-lambda) = rate
    lam_base = -torch.log1p(-fast_rate.clamp(max=1 - 1e-6))
    lam_max = lam_base.clone()
    lam_max[child] = -torch.log1p(-boosted.clamp(max=1 - 1e-6))
    dyn = _Dynamics(
        lam_max.float(),
        (lam_base / lam_max).float(),
        slow_rate.float(),
        slow_on.float(),
        slow_off.float(),
        pos_start,
        child,
        parent,
    )
    return truth, dyn


def _geometric(u: torch.Tensor, q: float) -> torch.Tensor:
    """Geometric on {0, 1, ...} with success probability q, by inversion of uniforms u in [0, 1)."""
    if q >= 1.0:
        return torch.zeros_like(u, dtype=torch.int64)
    return torch.floor(torch.log1p(-u) / math.log1p(-q)).long()


def _lognormal(z: torch.Tensor, mean: float, sigma: float) -> torch.Tensor:
    """Log-normal with the given mean: mean * exp(sigma z - sigma^2 / 2)."""
    return mean * torch.exp(sigma * z - 0.5 * sigma**2)


class SyntheticSource:
    """Seeded generator of the synthetic benchmark; yields whole contexts as `SequenceBatch`es."""

    kind = "synthetic"

    def __init__(self, cfg: SyntheticConfig, context_size: int, seed: int) -> None:
        self.cfg = cfg
        self.context_size = context_size
        self.seed = seed
        self.ground_truth, self._dyn = build_ground_truth(cfg, seed)

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    def describe(self) -> dict[str, Any]:
        counts = {k: self.ground_truth.kinds.count(k) for k in KINDS}
        return {
            "kind": self.kind,
            "d_model": self.d_model,
            "n_features": counts,
            "true_l0": self.ground_truth.true_l0,
            "context_size": self.context_size,
            "seed": self.seed,
            "config": dataclasses.asdict(self.cfg),
        }

    def batches(self, n_sequences: int, batch_sequences: int, split: str) -> Iterator[SequenceBatch]:
        """The first `n_sequences` sequences of `split`, in order, `batch_sequences` at a time."""
        per_chunk = SEQUENCES_PER_BLOCK * _BLOCKS_PER_CHUNK
        step = batch_sequences * -(-per_chunk // batch_sequences)  # whole batches per rendered chunk
        for lo in range(0, n_sequences, step):
            chunk = self.sequences(split, lo, min(lo + step, n_sequences))
            for a in range(0, chunk.acts_BTD.shape[0], batch_sequences):
                yield chunk.slice(a, a + batch_sequences)

    def sequences(self, split: str, start: int, stop: int, with_true_codes: bool = True) -> SequenceBatch:
        """Sequences [start, stop) of `split`; the same numbers whatever range they are asked with."""
        if not 0 <= start < stop:
            raise ValueError(f"need 0 <= start < stop, got [{start}, {stop})")
        K = SEQUENCES_PER_BLOCK
        first, last = start // K, -(-stop // K)
        parts = []
        for b0 in range(first, last, _BLOCKS_PER_CHUNK):
            blocks = range(b0, min(b0 + _BLOCKS_PER_CHUNK, last))
            chunk = self._render(blocks, split, with_true_codes)
            lo, hi = max(start - b0 * K, 0), min(stop - b0 * K, len(blocks) * K)
            parts.append(chunk.slice(lo, hi))
        return SequenceBatch.concat(parts)

    # -- generation ---------------------------------------------------------------------------
    def _render(self, blocks: range, split: str, with_true_codes: bool) -> SequenceBatch:
        """Render consecutive blocks together: draws per block, the Markov time loop over them all.

        Each block's generator first draws its dense uniforms (documents, slow chains, positional
        firing), then — after the shared Markov loop — its sparse draws (fast events, magnitudes) and
        noise. A block's numbers depend on its own generator only.
        """
        cfg, nb = self.cfg, len(blocks)
        Sb, L = SEQUENCES_PER_BLOCK // CONTEXTS_PER_STREAM, CONTEXTS_PER_STREAM * self.context_size
        S, n_docs = nb * Sb, -(-L // min(4, cfg.mean_doc_length)) + 3
        gens = [torch.Generator().manual_seed(derive_seed(self.seed, "synthetic", split, b)) for b in blocks]
        u_age, u_len = torch.empty(S, 2), torch.empty(S, n_docs)
        u_slow, u_pos = torch.empty(S, L, cfg.n_slow), torch.empty(S, L, cfg.n_positional)
        for i, g in enumerate(gens):
            rows = slice(i * Sb, (i + 1) * Sb)
            for buf in (u_age, u_len, u_slow, u_pos):
                torch.rand(buf[rows].shape, generator=g, out=buf[rows])

        doc_start_SL, position_SL = self._documents(u_age, u_len, L)
        restart_SL = doc_start_SL.clone()
        restart_SL[:, 0] = True  # every stream starts its chains from the stationary distribution
        slow_SLG = self._markov(u_slow, restart_SL)
        offset_SLG = position_SL[..., None] - self._dyn.pos_start
        pos_SLG = (offset_SLG >= 0) & (offset_SLG < cfg.positional_width) & (u_pos < cfg.positional_rate)

        codes_SLG = torch.zeros(S, L, cfg.n_features)
        noise_SLD = torch.empty(S, L, cfg.d_model)
        self._fill_codes(codes_SLG, slow_SLG, restart_SL, pos_SLG, gens)
        for i, g in enumerate(gens):
            rows = slice(i * Sb, (i + 1) * Sb)
            torch.randn(noise_SLD[rows].shape, generator=g, out=noise_SLD[rows])
        acts_SLD = codes_SLG @ self.ground_truth.directions_GD + cfg.noise_std * noise_SLD

        B, T = S * CONTEXTS_PER_STREAM, self.context_size  # streams cut into consecutive contexts
        stream_S1 = torch.cat([b * Sb + torch.arange(Sb) for b in blocks])[:, None]
        doc_index_SL = (stream_S1 << _DOC_BITS) + doc_start_SL.long().cumsum(1)  # a document's ordinal in its stream
        return SequenceBatch(
            acts_BTD=acts_SLD.reshape(B, T, -1),
            doc_start_BT=doc_start_SL.reshape(B, T),
            position_BT=position_SL.reshape(B, T),
            special_BT=torch.zeros(B, T, dtype=torch.bool),
            tokens_BT=None,
            true_codes_BTG=codes_SLG.reshape(B, T, -1) if with_true_codes else None,
            doc_id_BT=split_document_ids(split, doc_index_SL.reshape(B, T)),
        )

    def _documents(self, u_age: torch.Tensor, u_len: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
        """doc_start_SL and position_SL for streams starting at an equilibrium age of the renewal process.

        The age A at t=0 has P(A = s) = P(L > s) / E[L]: uniform on [0, m) with probability m/mean,
        else m + Geometric(q); the rest of that document is m - A + Geometric (A < m) or 1 + Geometric
        (memorylessness), and whole documents follow.
        """
        mean = self.cfg.mean_doc_length
        m = min(4, mean)
        geo = _geometric(u_len, 1.0 / (1.0 + mean - m))  # (S, n_docs)
        short = u_age[:, 0] < m / mean
        age = torch.where(short, (u_age[:, 1] * m).long().clamp(max=m - 1), m + geo[:, 0])
        first = torch.where(age < m, m - age, torch.ones_like(age)) + geo[:, 1]
        lengths = torch.cat([first[:, None], m + geo[:, 2:]], dim=1)
        starts = lengths.cumsum(1) - lengths  # (S, n_docs), starts[:, 0] == 0
        boundary = torch.zeros(len(age), L + 1, dtype=torch.bool)
        boundary.scatter_(1, starts.clamp(max=L), True)
        boundary = boundary[:, :L]
        t = torch.arange(L)
        seg_start = torch.where(boundary, t, 0).cummax(dim=1).values
        position = t - seg_start + torch.where(t[None, :] < first[:, None], age[:, None], 0)
        doc_start = boundary.clone()
        doc_start[:, 0] = age == 0
        return doc_start, position

    def _markov(self, u_SLG: torch.Tensor, restart_SL: torch.Tensor) -> torch.Tensor:
        """Two-state chains: on_t = u_t < p at restarts, else u_t < (on_{t-1} ? 1 - b : a)."""
        d = self._dyn
        low, step = d.slow_on, (1 - d.slow_off) - d.slow_on  # threshold = a + on * (1 - b - a)
        fresh_SLG = u_SLG < d.slow_rate  # the outcome wherever the chain restarts
        on_SLG = torch.empty_like(fresh_SLG)
        on_SLG[:, 0] = fresh_SLG[:, 0]
        for t in range(1, u_SLG.shape[1]):  # a time loop, vectorised over streams and features
            cont = u_SLG[:, t] < low + on_SLG[:, t - 1] * step
            on_SLG[:, t] = torch.where(restart_SL[:, t, None], fresh_SLG[:, t], cont)
        return on_SLG

    def _fill_codes(
        self,
        codes_SLG: torch.Tensor,
        slow_SLG: torch.Tensor,
        restart_SL: torch.Tensor,
        pos_SLG: torch.Tensor,
        gens: list[torch.Generator],
    ) -> None:
        """Write the true codes of consecutive blocks (in place): fast events, slow and positional magnitudes.

        Fast firing is drawn sparsely as a Poisson process per feature: with intensity
        lambda = -log(1 - r) per token, P(at least one event) = r, i.i.d. per token — exact Bernoulli(r)
        at a cost proportional to the number of firings. Hierarchical children are drawn at their
        boosted intensity and thinned by lambda_base / lambda_boosted where the parent is off.
        Random numbers come from each block's generator, in the same order for every block; the
        bookkeeping runs on all blocks at once (few large tensor ops rather than many small ones).
        """
        cfg, d = self.cfg, self._dyn
        S, L, G = codes_SLG.shape
        n_f, n_s, Sb = cfg.n_fast, cfg.n_slow, S // len(gens)
        Nb = Sb * L  # tokens per block

        tok, feat, u = [], [], []
        for i, g in enumerate(gens):
            counts = torch.poisson(Nb * d.fast_lambda_max, generator=g).long()
            tok.append(i * Nb + torch.randint(Nb, (int(counts.sum()),), generator=g))
            feat.append(torch.repeat_interleave(torch.arange(n_f), counts))
            u.append(torch.rand(len(tok[-1]), generator=g) if len(d.child) else torch.empty(0))
        tok, feat, u = torch.cat(tok), torch.cat(feat), torch.cat(u)
        if len(d.child):
            parent_of = torch.full((n_f,), -1, dtype=torch.long)
            parent_of[d.child] = d.parent
            p = parent_of[feat]
            parent_on = (p >= 0) & slow_SLG.reshape(S * L, n_s)[tok, p.clamp(min=0)]
            keep = parent_on | (u < d.fast_accept[feat])
            tok, feat = tok[keep], feat[keep]
        key = torch.unique(tok * n_f + feat)  # several events on one token are one firing
        tok = key // max(n_f, 1)
        codes_SLG.view(S * L, G)[tok, key - tok * n_f] = self._draws(gens, tok // Nb, self._magnitudes)

        # slow: one magnitude per run, read in (stream, feature, time) order so runs are contiguous
        prev_SLG = torch.cat([torch.zeros_like(slow_SLG[:, :1]), slow_SLG[:, :-1]], dim=1)
        run_start_SLG = slow_SLG & (restart_SL[..., None] | ~prev_SLG)
        s, gs, t = slow_SLG.permute(0, 2, 1).nonzero(as_tuple=True)
        is_start = run_start_SLG[s, t, gs]
        run_mag = self._draws(gens, s[is_start] // Sb, self._magnitudes)
        jitter = self._draws(gens, s // Sb, lambda n, g: _lognormal(torch.randn(n, generator=g), 1.0, _SLOW_JITTER))
        codes_SLG[s, t, n_f + gs] = run_mag[is_start.long().cumsum(0) - 1] * jitter

        s, t, gp = pos_SLG.nonzero(as_tuple=True)
        codes_SLG[s, t, n_f + n_s + gp] = self._draws(gens, s // Sb, self._magnitudes)

    def _magnitudes(self, n: int, g: torch.Generator) -> torch.Tensor:
        return _lognormal(torch.randn(n, generator=g), self.cfg.magnitude_mean, self.cfg.magnitude_spread)

    @staticmethod
    def _draws(gens: list[torch.Generator], block_E: torch.Tensor, draw) -> torch.Tensor:
        """One value per event, each drawn from its block's generator; events sorted by block."""
        counts = torch.bincount(block_E, minlength=len(gens)).tolist()
        return torch.cat([draw(n, g) for n, g in zip(counts, gens)])
