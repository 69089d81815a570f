"""Architecture name -> SAE class. Adding a variant: one file in this package and one line in
`REGISTRY` (docs/extending.md); code outside the package registers its class with `register_variant`."""

from __future__ import annotations

import dataclasses
from typing import Any

from tsae_core.sae import PENALISED, SAE, SAEConfig, paper_bandwidth
from tsae_core.variant_config import VariantConfig
from tsae_core.variants.consistency import ConsistencySAE
from tsae_core.variants.contrastive import ContrastiveSAE
from tsae_core.variants.conv import ConvSAE
from tsae_core.variants.crosscoder import CrosscoderSAE
from tsae_core.variants.matryoshka import MatryoshkaSAE
from tsae_core.variants.orthogonal import OrthogonalSAE
from tsae_core.variants.pooled import PooledSAE
from tsae_core.variants.predictive import PredictiveSAE
from tsae_core.variants.relational import RelationalSAE

REGISTRY: dict[str, type[SAE]] = {
    "standard": SAE,
    "consistency": ConsistencySAE,
    "contrastive": ContrastiveSAE,
    "conv": ConvSAE,
    "crosscoder": CrosscoderSAE,
    "matryoshka": MatryoshkaSAE,
    "orthogonal": OrthogonalSAE,
    "pooled": PooledSAE,
    "predictive": PredictiveSAE,
    "relational": RelationalSAE,
}


def register_variant(architecture: str, cls: type[SAE]) -> None:
    """Make `architecture: <name>` in a params file build `cls`, in this process (a notebook or script
    of your own; the runner's notebooks run in kernels of their own, which see only `REGISTRY`)."""
    if not (isinstance(cls, type) and issubclass(cls, SAE)):
        raise TypeError(f"a variant is a subclass of tsae_core.sae.SAE, got {cls!r}")
    if REGISTRY.get(architecture, cls) is not cls:
        raise ValueError(f"architecture {architecture!r} is already {REGISTRY[architecture].__name__}; choose another name")
    REGISTRY[architecture] = cls


def architectures() -> list[str]:
    return sorted(REGISTRY)


def variant_class(architecture: str) -> type[SAE]:
    if architecture not in REGISTRY:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[architecture]


def validate_variant(cfg: VariantConfig) -> None:
    """Raise ValueError if the architecture is unknown or its options are invalid."""
    variant_class(cfg.architecture).validate_options(cfg)


def resolved_options(v: VariantConfig) -> dict[str, Any]:
    """Every knob of the variant, defaults included, so cfg.json and the eval record all of them."""
    parsed = variant_class(v.architecture).parse_options(v.options)
    return {} if parsed is None else dataclasses.asdict(parsed)


def build_sae(cfg: SAEConfig) -> SAE:
    return variant_class(cfg.architecture)(cfg)


def sae_config(v: VariantConfig, d_in: int, scaling_factor: float, source: dict[str, Any]) -> SAEConfig:
    """The SAE a variant of the params describes, on activations of width `d_in` scaled by `scaling_factor`."""
    return SAEConfig(
        architecture=v.architecture,
        activation=v.activation,
        d_in=d_in,
        d_sae=v.d_sae,
        k=None if v.activation == "relu" else v.k,
        activation_scaling_factor=float(scaling_factor),
        # The L1 recipe weights the penalty by decoder norms instead of constraining them.
        unit_norm_decoder=v.activation != "relu",
        l1_coefficient=v.l1_coefficient if v.activation == "relu" else 0.0,
        l0_coefficient=v.l0_coefficient if v.activation == "jumprelu" else 0.0,
        target_l0=v.target_l0 if v.activation in PENALISED else 0.0,
        bandwidth=(v.bandwidth or paper_bandwidth(d_in)) if v.activation == "jumprelu" else 0.0,
        threshold_lr_multiplier=v.threshold_lr_multiplier,
        pre_act_coefficient=v.pre_act_coefficient if v.activation == "jumprelu" else 0.0,
        aux_k_coefficient=0.0 if v.activation == "relu" else v.aux_k_coefficient,
        aux_k=v.aux_k or d_in // 2,
        source=dict(source),
        options=resolved_options(v),
    )
