"""The records around an SAE: its config, its named forward output, what a loss reads beyond that
output, and the accumulator of variant-specific eval numbers. `tsae_core.sae` re-exports them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from tsae_core.sources.base import sequence_document_ids
from tsae_core.sparse_codes import Pick, SparseCodes


@dataclass
class SAEConfig:
    """Everything needed to rebuild an SAE for inference (written to cfg.json)."""

    architecture: str
    activation: str
    d_in: int
    d_sae: int
    k: int | None = None
    activation_scaling_factor: float = 1.0
    unit_norm_decoder: bool = True
    l1_coefficient: float = 0.0
    l0_coefficient: float = 0.0
    target_l0: float = 0.0
    bandwidth: float = 0.0
    threshold_lr_multiplier: float = 1.0
    pre_act_coefficient: float = 0.0
    aux_k_coefficient: float = 0.0
    aux_k: int = 0
    source: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SAEOutput:
    """Named forward output. Normalised-space tensors are what the losses use."""

    _features: torch.Tensor | None  # (B, T, F) sparse codes, read as `features`; None: made from `codes` when read
    recon: torch.Tensor  # (B, T, D) reconstruction in raw units
    pre_acts: torch.Tensor  # (B, T, F) pre-activations
    x_normalized: torch.Tensor  # (B, T, D) s * x
    recon_normalized: torch.Tensor  # (B, T, D) s * recon
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    codes: SparseCodes | None = None
    """The sparse path's kept codes in compressed rows (`features` holds them densely); None on the dense path."""
    pick: Pick | None = None
    """The sparse path's differentiable pre-activations at chosen entries (what AuxK reads); None on the dense path."""

    @property
    def features(self) -> torch.Tensor:
        """(B, T, F) the codes. The sparse path makes this dense tensor from `codes` only when it is
        read (a variant's loss on the codes): the base SAE's step never needs it, and its zeros alone
        cost ~40 ms a step at 4096 tokens x 16384 latents."""
        if self._features is None:
            self._features = self.codes.dense().view(*self.pre_acts.shape[:-1], self.codes.n_latents)
        return self._features


@dataclass
class LossContext:
    """What a loss needs beyond the forward output: the batch structure and training state."""

    mask_BT: torch.Tensor
    doc_start_BT: torch.Tensor
    sparsity_scale: float = 1.0
    dead_F: torch.Tensor | None = None
    step: int = 0
    """Optimizer step (0-based): variants derive per-step randomness from it, so resume is exact."""
    seed: int = 0
    """The SAE's training seed."""
    penalty_coefficient: float | None = None
    """The sparsity penalty's coefficient this step when a target-L0 controller sets it; None: the cfg's."""
    doc_id_BT: torch.Tensor | None = None
    """The store's per-token document ids (unique across the store); None: one id per document of each row."""

    @property
    def document_ids(self) -> torch.Tensor:
        """(B, T) int64: the id of each token's document (`doc_id_BT`, or the per-row fallback)."""
        return self.doc_id_BT if self.doc_id_BT is not None else sequence_document_ids(self.doc_start_BT)


class OutputStatistics:
    """Variant-specific numbers accumulated over evaluation batches (see `SAE.output_statistics`)."""

    def update(self, out: SAEOutput, mask_BT: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> dict[str, Any]:
        raise NotImplementedError
