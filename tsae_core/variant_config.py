"""One entry under `variants:` of a params file: an architecture with an activation function and
their options. A leaf module (the SAE and the variants read it; `tsae_core.config` builds it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tsae_core.typed import check as _check


@dataclass(frozen=True)
class VariantConfig:
    """One SAE to train: an architecture (the variant) with an activation function."""

    architecture: str = "standard"
    """Variant name in the registry (`standard` is the token-wise SAE)."""
    activation: Literal["relu", "topk", "batchtopk", "jumprelu"] = "topk"
    """Activation function: relu (L1 penalty), topk, batchtopk or jumprelu (learned thresholds, L0 penalty)."""
    d_sae: int = 512
    """Dictionary size (number of latents)."""
    k: int = 0
    """Active latents per token for topk / batchtopk (mean per token for batchtopk); 0: `target_l0`
    (the variant's, else `train.target_l0`), or 8 without one."""
    l1_coefficient: float = 1.0
    """L1 coefficient (relu only); the penalty is sum_i f_i * ||W_dec_i||. With `target_l0`, its start value."""
    l0_coefficient: float = 1.0
    """jumprelu only: weight of the L0 penalty; with `target_l0`, the start value of the weight of
    (L0 / target_l0 - 1)^2, which pulls L0 towards the target from both sides."""
    target_l0: float = 0.0
    """The L0 this SAE is trained to: relu / jumprelu adapt their penalty coefficient to it during
    training (`tsae_core.target_l0`); topk / batchtopk take it as k. 0: `train.target_l0`, and
    without that a fixed coefficient (or k)."""
    target_l0_rate: float = 0.0
    """Gain of the target-L0 controller (`tsae_core.target_l0`): its log penalty coefficient moves by
    up to this per step. 0: the activation's default, 0.01 for relu (whose L0 answers the penalty
    strongly and late) and 0.02 for jumprelu."""
    bandwidth: float = 0.0
    """jumprelu only: width of the straight-through estimator's window around each threshold, in tsae's
    normalised units (E||x|| = sqrt(d_in)). 0: the paper's 0.001 (Rajamanoharan et al. 2024, with
    inputs scaled to unit mean squared norm), i.e. 0.001 sqrt(d_in) here; earlier runs used 2.0."""
    threshold_lr_multiplier: float = 10.0
    """jumprelu only: the thresholds' learning rate as a multiple of the SAE's (they must move far in few steps)."""
    pre_act_coefficient: float = 1.0
    """jumprelu only: weight of the pre-activation loss mean max(0, theta - pre), which keeps latents from dying."""
    aux_k_coefficient: float = 1.0 / 32
    """Weight of the AuxK dead-latent loss (topk / batchtopk); 0 disables it."""
    aux_k: int = 0
    """Dead latents used by AuxK; 0 means d_in // 2."""
    lr: float = 0.0
    """Learning rate, taken as given; 0 means the recipe default (2e-4 topk/batchtopk, 5e-5 relu) times train.lr_scale."""
    options: dict[str, Any] = field(default_factory=dict)
    """Variant-specific knobs, validated by the variant itself."""
    controls: list[str] = field(default_factory=list)
    """This SAE is a control of the named variants (e.g. `pooled`, the smoothing control, of every temporal
    variant; OrtSAE's penalty of `orthogonal`): reports set it beside them, not among the priors."""
    load_from: str = ""
    """A SAELens 6 folder (cfg.json + sae_weights.safetensors) or a tsae SAE folder: this variant is that
    SAE, evaluated as it is and never trained (`tsae_core.imported`); its architecture, activation and
    sizes come from the folder. Relative paths are from the project root."""

    def __post_init__(self) -> None:
        _check(not self.load_from or (self.architecture == "standard" and not self.options), "load_from",
               "an imported SAE takes its architecture and options from its folder; leave architecture and options unset")
        _check(self.d_sae > 0, "d_sae", "must be > 0")
        _check(self.k >= 0, "k", f"must be in 1..d_sae ({self.d_sae}), or 0 to take it from target_l0, got {self.k}")
        if self.activation in ("topk", "batchtopk"):
            _check(self.k == 0 or self.target_l0 == 0 or self.k == round(self.target_l0), "target_l0",
                   f"sets k for {self.activation}; give k ({self.k}) or target_l0 ({self.target_l0:g}), not both")
        if self.k == 0:  # frozen dataclass: the resolved k is what is hashed, saved and trained
            object.__setattr__(self, "k", max(1, round(self.target_l0)) if self.target_l0 else 8)
        _check(0 < self.k <= self.d_sae, "k", f"must be in 1..d_sae ({self.d_sae}), got {self.k}")
        _check(self.l1_coefficient >= 0, "l1_coefficient", "must be >= 0")
        _check(self.aux_k_coefficient >= 0, "aux_k_coefficient", "must be >= 0")
        _check(self.l0_coefficient >= 0, "l0_coefficient", "must be >= 0")
        _check(0 <= self.target_l0 <= self.d_sae, "target_l0", f"must be in [0, d_sae ({self.d_sae})]")
        _check(self.target_l0_rate >= 0, "target_l0_rate", "must be >= 0 (0: the activation's default)")
        _check(self.bandwidth >= 0, "bandwidth", "must be >= 0 (0: the paper's 0.001 in unit-mean-square units)")
        _check(self.threshold_lr_multiplier > 0, "threshold_lr_multiplier", "must be > 0")
        _check(self.pre_act_coefficient >= 0, "pre_act_coefficient", "must be >= 0")
        _check(self.aux_k >= 0, "aux_k", "must be >= 0")
        _check(self.lr >= 0 and self.lr == self.lr, "lr", "must be >= 0 (0: recipe default)")
        _check(len(set(self.controls)) == len(self.controls), "controls", f"must not repeat a variant, got {self.controls}")

    @property
    def default_lr(self) -> float:
        return 5e-5 if self.activation == "relu" else 2e-4
