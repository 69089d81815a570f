"""Architecture name -> SAE class. Adding a variant: one file in this package and one line here."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tsae_core.config import VariantConfig
    from tsae_core.sae import SAE


def _registry() -> dict[str, type[SAE]]:
    from tsae_core.sae import SAE
    from tsae_core.variants.consistency import ConsistencySAE
    from tsae_core.variants.contrastive import ContrastiveSAE
    from tsae_core.variants.conv import ConvSAE
    from tsae_core.variants.crosscoder import CrosscoderSAE
    from tsae_core.variants.matryoshka import MatryoshkaSAE
    from tsae_core.variants.orthogonal import OrthogonalSAE
    from tsae_core.variants.pooled import PooledSAE
    from tsae_core.variants.predictive import PredictiveSAE
    from tsae_core.variants.relational import RelationalSAE

    return {
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


def architectures() -> list[str]:
    return sorted(_registry())


def variant_class(architecture: str) -> type[SAE]:
    reg = _registry()
    if architecture not in reg:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(reg))}")
    return reg[architecture]


def validate_variant(cfg: VariantConfig) -> None:
    """Raise ValueError if the architecture is unknown or its options are invalid."""
    variant_class(cfg.architecture).validate_options(cfg)
