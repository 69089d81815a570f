"""Temporal contrastive SAE (Bhalla et al. 2025, "Temporal Sparse Autoencoders"; seed 002): a
Matryoshka SAE whose high-level prefix (the first `high_level_fraction` of latents) must give
nearby tokens of one document similar codes and other documents' tokens different ones.

For anchors t (sampled, at most `pairs_per_batch`) with a positive t + delta, delta ~ U{1..window},
in the same document (pairs never straddle a boundary or touch a special token), and h = f[..., :H]:

    L = L_matryoshka(prefixes [H, F]) + coefficient * d_in * InfoNCE(h_t, h_{t+delta}; negatives)

InfoNCE is symmetric, on cosines at `temperature`; the negatives are the other pairs' codes in the
batch and a FIFO queue of the last `queue_size` positive codes of earlier batches (detached), so rare
high-level features meet enough negatives. A negative from the anchor's own document is no negative:
documents run across contexts and batches, so "own document" is the store's per-token document id
(`LossContext.doc_id_BT`), compared in the batch and against the id each queued code keeps; those
partners are masked, and how many were masked per anchor is logged in the training curves
(`masked_in_batch`, `masked_in_queue`). The queue is training state: it is saved in checkpoints so
that a resumed run is exact. Only pairs where both codes have an active high-level latent take part
(a cosine needs a direction).

The InfoNCE term (in nats) is weighed by d_in = E||x_n||^2, the reconstruction's scale, like the
consistency and orthogonality terms, so that one coefficient trades the same share of explained
variance for the same InfoNCE on any model (unweighed, its weight relative to the reconstruction fell
5x from d_in 128 to 640). The published design uses dot products of codes without a queue; the cosine,
the temperature and the queue follow the seed's specification (MoCo-style, He et al. 2020).
`gradient: straight_through` computes the term on `losses.straight_through_codes` (its pull to raise a
latent at t + delta then reaches that latent's pre-activation); the default `codes` is the published
gradient, which reaches active latents only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tsae_core import losses
from tsae_core.sae import LossContext, SAEConfig, SAEOutput
from tsae_core.seeds import derive_seed
from tsae_core.typed import check
from tsae_core.variants.matryoshka import MatryoshkaSAE


@dataclass(frozen=True)
class ContrastiveOptions:
    window: int = 8
    """Positives are drawn at a lag delta in 1..window within the anchor's document."""
    temperature: float = 0.1
    """InfoNCE temperature on cosine similarities."""
    coefficient: float = 0.001
    """Weight of the contrastive term (nats) against the input's energy d_in; same meaning on any d_in."""
    queue_size: int = 16384
    """Past positive codes kept as extra negatives (FIFO); 0: in-batch negatives only."""
    high_level_fraction: float = 0.2
    """The prefix of the dictionary the contrastive term acts on (also a Matryoshka level)."""
    pairs_per_batch: int = 256
    """At most this many anchor/positive pairs per batch (bounds the P x (P + Q) similarity matrix)."""
    gradient: Literal["codes", "straight_through"] = "codes"
    """codes: the published gradient (active latents only); straight_through: it also reaches inactive ones."""

    def __post_init__(self) -> None:
        check(self.window >= 1, "options.window", "must be >= 1")
        check(self.temperature > 0, "options.temperature", "must be > 0")
        check(self.coefficient >= 0, "options.coefficient", "must be >= 0")
        check(self.queue_size >= 0, "options.queue_size", "must be >= 0")
        check(0 < self.high_level_fraction < 1, "options.high_level_fraction", "must be in (0, 1)")
        check(self.pairs_per_batch >= 2, "options.pairs_per_batch", "must be >= 2")


UNKNOWN_DOCUMENT = -2
"""The document id of a queued code whose batch carried no store ids: it never matches an anchor's."""


class ContrastiveSAE(MatryoshkaSAE):
    Options = ContrastiveOptions

    def __init__(self, cfg: SAEConfig):
        super().__init__(cfg)
        H, Q = self.n_high, self.options.queue_size
        self.register_buffer("queue_QH", torch.zeros(Q, H), persistent=False)
        self.register_buffer("queue_doc_Q", torch.full((Q,), UNKNOWN_DOCUMENT, dtype=torch.long), persistent=False)
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long), persistent=False)
        self.masked_negatives = torch.zeros(2)
        """Masked same-document negatives per anchor in the last step: (in the batch, in the queue)."""

    @classmethod
    def validate_options(cls, v) -> None:
        o = cls.parse_options(v.options)
        check(1 <= round(o.high_level_fraction * v.d_sae) < v.d_sae, "options.high_level_fraction",
              f"gives no latent or every latent at d_sae {v.d_sae}")

    @property
    def n_high(self) -> int:
        return round(self.options.high_level_fraction * self.cfg.d_sae)

    @property
    def sizes(self) -> list[int]:
        return [self.n_high, self.cfg.d_sae]

    @property
    def level_weights(self) -> list[float]:
        return [0.5, 0.5]

    @property
    def uses_codes_in_loss(self) -> bool:
        return self.options.gradient == "straight_through" and self.options.coefficient > 0

    # -- pairs ---------------------------------------------------------------------------------
    def pairs(self, high_BTH: torch.Tensor, ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(anchors (P, H), positives (P, H), the pairs' document ids (P,)), drawn reproducibly from (seed, step)."""
        B, T, _ = high_BTH.shape
        gen = torch.Generator().manual_seed(derive_seed(ctx.seed, "contrastive", ctx.step))
        delta_BT = torch.randint(1, self.options.window + 1, (B, T), generator=gen).to(high_BTH.device)
        t_BT = torch.arange(T, device=high_BTH.device).expand(B, T)
        target_BT = (t_BT + delta_BT).clamp_max(T - 1)
        same_doc_BT = ctx.doc_start_BT.long().cumsum(1)  # within a row: no document start in (t, t + delta]
        active_BT = (high_BTH > 0).any(-1) & ctx.mask_BT
        valid_BT = (
            (t_BT + delta_BT < T)
            & active_BT
            & active_BT.gather(1, target_BT)
            & (same_doc_BT.gather(1, target_BT) == same_doc_BT)
        )
        b_P, t_P = valid_BT.nonzero(as_tuple=True)
        if len(b_P) > self.options.pairs_per_batch:
            keep = torch.randperm(len(b_P), generator=gen)[: self.options.pairs_per_batch].to(b_P.device)
            b_P, t_P = b_P[keep], t_P[keep]
        doc_P = ctx.document_ids[b_P, t_P]
        return high_BTH[b_P, t_P], high_BTH[b_P, target_BT[b_P, t_P]], doc_P

    def queue(self) -> torch.Tensor:
        return self.queue_QH[: int(self.queue_count)]

    def queue_documents(self) -> torch.Tensor:
        return self.queue_doc_Q[: int(self.queue_count)]

    # -- training ------------------------------------------------------------------------------
    def loss_terms(self, out: SAEOutput, ctx: LossContext) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(out, ctx)
        o = self.options
        high = out.features[..., : self.n_high]
        if o.gradient == "straight_through":
            high = losses.straight_through_codes(high, out.pre_acts[..., : self.n_high])
        anchor_PH, positive_PH, doc_P = self.pairs(high, ctx)
        if len(anchor_PH) < 2:
            terms["contrastive"] = out.features.new_zeros(())
            self.masked_negatives = torch.zeros(2)
            return terms
        same_doc_PP = doc_P[:, None] == doc_P[None, :]
        queue_doc_Q = self.queue_documents()
        own_PQ = doc_P[:, None] == queue_doc_Q[None, :]
        nce = losses.info_nce(anchor_PH, positive_PH, self.queue(), same_doc_PP, o.temperature, own_PQ)
        terms["contrastive"] = o.coefficient * self.cfg.d_in * nce
        P = len(doc_P)
        self.masked_negatives = torch.stack([(same_doc_PP.sum() - P) / P, own_PQ.sum() / P]).detach()
        return terms

    def curve_values(self) -> dict[str, float]:
        in_batch, in_queue = self.masked_negatives.tolist()
        return {"masked_in_batch": in_batch, "masked_in_queue": in_queue}

    @torch.no_grad()
    def after_step(self, out: SAEOutput, ctx: LossContext) -> None:
        """Push this step's positive codes (normalised, detached) and their documents into the FIFO queue."""
        Q = self.options.queue_size
        if Q == 0:
            return
        _, positive_PH, doc_P = self.pairs(out.features[..., : self.n_high].detach(), ctx)
        new = losses.nn_normalize(positive_PH.float())[-Q:]
        docs = (doc_P if ctx.doc_id_BT is not None else torch.full_like(doc_P, UNKNOWN_DOCUMENT))[-Q:]
        idx = (int(self.queue_next) + torch.arange(len(new), device=new.device)) % Q
        self.queue_QH[idx] = new
        self.queue_doc_Q[idx] = docs.to(self.queue_doc_Q.device)
        self.queue_next.fill_((int(self.queue_next) + len(new)) % Q)
        self.queue_count.fill_(min(Q, int(self.queue_count) + len(new)))

    def training_state(self) -> dict[str, torch.Tensor]:
        return {"queue_QH": self.queue_QH, "queue_doc_Q": self.queue_doc_Q, "queue_count": self.queue_count,
                "queue_next": self.queue_next}

    def load_training_state(self, state: dict[str, torch.Tensor]) -> None:
        for name, t in state.items():
            getattr(self, name).copy_(t)
